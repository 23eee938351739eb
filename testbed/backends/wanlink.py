"""A field <-> data-centre WAN link on this host: the field site in a network namespace of its own,
joined to this host's namespace through a link namespace that delays and shapes both directions.

::

    data centre (host namespace, dc_host) <-veth A-> [link: wandelay, HTB both ways] <-veth B-> field (field_host)

The data-centre side is this host's namespace (its brokers listen on ``dc_host``, veth A's host
end); the field side is the namespace :attr:`WanLink.field_ns` (brokers on ``field_host``), where
the field's processes run (``Processes.start(..., netns=link.field_ns)``). The two addresses share
a subnet; the link namespace has no address at all: :mod:`testbed.backends.wandelay` joins its
two ends at layer 2, holding each frame the delay, so every TCP connection across runs end to end
and sees the link's round trip. HTB shapes the egress of both link ends: ``dc->field`` on B,
``field->dc`` on A, each at the link rate with one FIFO of ``queue_packets``. With ``priority``
the control bridges' packets (TCP port match on the control brokers' ports) get a class of their
own at HTB priority 0 with a guaranteed share, the rest priority 1, both allowed the whole rate: a
DSCP class in a real router. Segmentation offload is off where frames enter the link
(``gso_max_segs 1``), so a queued packet is one MTU, as on a real link. :meth:`WanLink.remove`
takes everything away.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed.backends import processes
from testbed.backends.processes import ProcessRecord
from testbed.core.errors import TestbedError
from testbed.core.waiting import wait_until

__all__ = ["WAYS", "LinkShape", "WanLink", "check_host"]

WAYS = ("dc->field", "field->dc")


def check_host() -> None:
    """Refuse a host that cannot build the link, with what to fix."""
    if os.geteuid() != 0:
        raise TestbedError("the WAN link needs root (network namespaces, packet sockets and tc): run as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise TestbedError(f"the WAN link needs {tool}: install iproute2")


def _run(argv: list[str], check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {done.stderr.strip()} (the WAN link needs root, iproute2, "
                           "network namespaces, veth and htb)")
    return done.stdout


class LinkShape:
    """Rate, FIFO length and the control class's guaranteed share: checked when made."""

    def __init__(self, rate_bps: int, queue_packets: int = 100, control_share: float = 0.2) -> None:
        if rate_bps < 8000:
            raise TestbedError(f"link rate {rate_bps} bit/s is below 8 kbit/s")
        if queue_packets < 2:
            raise TestbedError(f"queue of {queue_packets} packets: give 2 or more")
        if not 0 < control_share < 1:
            raise TestbedError(f"control share {control_share}: give a fraction between 0 and 1")
        self.rate_bps, self.queue_packets, self.control_share = rate_bps, queue_packets, control_share

    @property
    def control_bps(self) -> int:
        return max(8000, int(self.rate_bps * self.control_share))


class WanLink:
    """The namespaces, veths and addresses (:meth:`create`), the shaping (:meth:`shape`) and the
    delaying forwarder (:meth:`start_delay`)."""

    def __init__(self, logs: Path) -> None:
        check_host()
        tag = f"{os.getpid() % 100000}"
        self.link_ns, self.field_ns = f"fmbwan-{tag}", f"fmbwan-{tag}-field"
        self.host_a, self.link_a, self.link_b, self.field_b = (f"fw{tag}{s}" for s in ("ha", "la", "lb", "fb"))
        self.logs = logs
        third = os.getpid() % 250
        used = _run(["ip", "-4", "-o", "addr", "show"])
        for second in range(200, 256):  # a /29 no interface of this host is in already
            net = f"10.{second}.{third}."
            if net not in used:
                break
        else:
            raise TestbedError(f"no free 10.x.{third}.0/29 for the WAN link")
        self.dc_host, self.field_host = net + "1", net + "2"
        self.forwarder: ProcessRecord | None = None
        self.namespaces: list[str] = []

    def _in(self, namespace: str, *argv: str, check: bool = True) -> str:
        return _run(["ip", "netns", "exec", namespace, *argv], check)

    def create(self) -> None:
        for namespace in (self.link_ns, self.field_ns):
            _run(["ip", "netns", "add", namespace])
            self.namespaces.append(namespace)
            self._in(namespace, "ip", "link", "set", "lo", "up")
        _run(["ip", "link", "add", self.host_a, "type", "veth", "peer", "name", self.link_a, "netns", self.link_ns])
        _run(["ip", "-n", self.link_ns, "link", "add", self.link_b, "type", "veth", "peer", "name", self.field_b,
              "netns", self.field_ns])
        # The link namespace is a wire: no addresses, no IPv6 chatter of its own.
        self._in(self.link_ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        self._in(self.link_ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        for end in (self.link_a, self.link_b):
            _run(["ip", "-n", self.link_ns, "link", "set", end, "promisc", "on", "up"])
        _run(["ip", "addr", "add", f"{self.dc_host}/29", "dev", self.host_a])
        _run(["ip", "link", "set", self.host_a, "gso_max_segs", "1", "up"])
        _run(["ip", "-n", self.field_ns, "addr", "add", f"{self.field_host}/29", "dev", self.field_b])
        _run(["ip", "-n", self.field_ns, "link", "set", self.field_b, "gso_max_segs", "1", "up"])

    def shape(self, shape: LinkShape, priority: bool, control_ports: list[int]) -> None:
        """(Re)install both directions' HTB trees; counters start from zero."""
        rate = f"{shape.rate_bps}bit"
        for dev in (self.link_a, self.link_b):
            self._in(self.link_ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            tc = ["tc", "qdisc", "add", "dev", dev]
            cls = ["tc", "class", "add", "dev", dev, "parent"]
            self._in(self.link_ns, *tc, "root", "handle", "1:", "htb", "default", "20")
            self._in(self.link_ns, *cls, "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate)
            if priority:
                rest = shape.rate_bps - shape.control_bps
                self._in(self.link_ns, *cls, "1:1", "classid", "1:10", "htb", "rate", f"{shape.control_bps}bit",
                         "ceil", rate, "prio", "0")
                self._in(self.link_ns, *cls, "1:1", "classid", "1:20", "htb", "rate", f"{rest}bit", "ceil", rate,
                         "prio", "1")
                self._in(self.link_ns, *tc, "parent", "1:10", "handle", "10:", "pfifo", "limit",
                         str(shape.queue_packets))
                for way, port in ((w, p) for w in ("sport", "dport") for p in control_ports):
                    self._in(self.link_ns, "tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                             "prio", "1", "u32", "match", "ip", way, str(port), "0xffff", "flowid", "1:10")
            else:
                self._in(self.link_ns, *cls, "1:1", "classid", "1:20", "htb", "rate", rate, "ceil", rate, "prio", "1")
            self._in(self.link_ns, *tc, "parent", "1:20", "handle", "20:", "pfifo", "limit", str(shape.queue_packets))

    def sent(self) -> dict[str, dict[str, int]]:
        """Bytes and drops per direction and leaf class so far: ``{"dc->field": {"control_bytes": n, ...}}``."""
        out: dict[str, dict[str, int]] = {}
        for way, dev in zip(WAYS, (self.link_b, self.link_a), strict=True):
            text = self._in(self.link_ns, "tc", "-s", "class", "show", "dev", dev, check=False)
            counts: dict[str, int] = {}
            for block in text.split("class htb ")[1:]:
                classid = block.split()[0]
                m = re.search(r"Sent (\d+) bytes \d+ pkt \(dropped (\d+)", block)
                if m and classid in ("1:10", "1:20"):
                    name = "control" if classid == "1:10" else "delivery"
                    counts[f"{name}_bytes"], counts[f"{name}_dropped"] = int(m.group(1)), int(m.group(2))
            out[way] = counts
        return out

    def start_delay(self, delay_ms: float) -> None:
        """The forwarder joining the link's ends, holding each frame ``delay_ms``."""
        self.stop_delay()
        stats = self.logs / "wandelay-stats.json"
        stats.unlink(missing_ok=True)
        log = self.logs / "wandelay.log"
        offset = log.stat().st_size if log.exists() else 0
        argv = ["ip", "netns", "exec", self.link_ns, sys.executable, "-m", "testbed.backends.wandelay",
                "--delay-ms", f"{delay_ms:g}", "--stats", str(stats), self.link_a, self.link_b]
        self.forwarder = record = processes.spawn("wandelay", "bench", argv, log)

        def forwarding() -> bool:
            if not processes.alive(record):
                raise TestbedError(f"the WAN link's forwarder did not start: see {log}")
            return log.exists() and "wandelay: forwarding" in log.read_text()[offset:]

        wait_until(forwarding, 15, interval_s=0.02, what=f"the WAN link's forwarder (see {log})")

    def round_trips_ms(self, count: int = 20, port: int = 9) -> list[float]:
        """Round trips across the link as it is now (no load): TCP connects from this namespace to
        a port nothing listens on in the field's, each refused by the field's kernel (SYN out, RST
        back), so no server is needed and no process on the far side adds its own time."""
        samples = []
        for _ in range(count):
            with socket.socket() as sock:
                sock.settimeout(5)
                t0 = time.perf_counter()
                try:
                    sock.connect((self.field_host, port))
                except ConnectionRefusedError:
                    samples.append((time.perf_counter() - t0) * 1000)
                except OSError as exc:
                    raise TestbedError(f"the WAN link does not carry a TCP handshake ({exc})") from None
                else:
                    raise TestbedError(f"something listens on {self.field_host}:{port} in the field namespace")
            time.sleep(0.01)
        return samples

    def stop_delay(self) -> dict[str, object]:
        """Stop the forwarder; what it measured (empty if it wrote nothing)."""
        if self.forwarder is None:
            return {}
        processes.stop([self.forwarder], 5)
        self.forwarder = None
        with contextlib.suppress(OSError, ValueError):
            loaded: dict[str, object] = json.loads((self.logs / "wandelay-stats.json").read_text())
            return loaded
        return {}

    def remove(self) -> None:
        self.stop_delay()
        for namespace in reversed(self.namespaces):
            _run(["ip", "netns", "del", namespace], check=False)
        self.namespaces = []
        _run(["ip", "link", "del", self.host_a], check=False)  # its peer went with the namespace

    def __enter__(self) -> WanLink:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
