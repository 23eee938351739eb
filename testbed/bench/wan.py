"""``fmb bench wan --backend docker``: control commands across a constrained field <-> data-centre
link, with and without network-level priority for the control-plane bridge. (The default
``fmb bench wan``, with the shared case, both directions shaped and a delay, is
:mod:`testbed.bench.wancurve`.)

The Compose bus (docker backend) with the data-centre -> field direction of the backhaul shaped
to ``--wan RATE``: the traffic the data-centre brokers send to *both* field brokers (the
delivery-plane and the control-plane bridges) is redirected, on the host side of the field
brokers' veths on the ``dc`` network, into one IFB device whose HTB tree is the shared WAN link.
Two configurations, same link, same run:

* ``no-priority``: one HTB class at RATE with a FIFO of ``queue_packets``: control shares
  the queue with the delivery plane, as on a plain WAN link;
* ``priority``: the control-plane bridge's packets (u32 match on the control brokers' TCP
  ports) get a class of their own at HTB priority 0 with a guaranteed share of RATE (ceil
  RATE), the delivery plane the rest at priority 1 (ceil RATE): a ``tc prio`` / DSCP class in
  a real router.

Per configuration: an idle step, then a step where a delivery-plane flood fills the link:
``SingleLineDiagramProfile`` messages published on ``dc-delivery`` with the DMS's identity
(the one delivery profile that crosses DC -> field, toward the tablet), offered above the
link's capacity by C ``mosquitto_pub`` processes. Control: signed ``SupplyControlProfile``
commands (setpoint 120 V, no change of state) from the harness's ``operator`` on ``dc-control``
at a steady rate; latency = publish on ``dc-control`` -> the ``recorder`` receives it on
``field-control`` (both on this host, same clock), i.e. one crossing of the control bridge.
Delivery throughput = messages a subscriber on ``field-delivery`` receives, and the bytes the
link's classes sent (``tc -s class``).

Facts of this kernel (checked): ``tbf`` and ``htb`` exist, ``netem`` / ``prio`` / ``fq_codel`` do
not, so delay cannot be emulated here; a delay is recorded as not available. Only the
DC -> field direction is shaped (the direction both the commands and the flood cross).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from testbed.backends.environment import environment
from testbed.backends.processes import ProcessRecord
from testbed.bench.common import Processes
from testbed.core.errors import TestbedError
from testbed.core.payloads import decode, encode, new_traceparent
from testbed.core.results import WanControl, WanHeadline, WanResult, WanRow
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.security.signing import CommandSigner, SigningKeys
from testbed.transport.mqtt import connect, publish_properties

if TYPE_CHECKING:
    from testbed.backends.compose import DockerBus

__all__ = ["CONFIGS", "RESULT_SCHEMA", "SharedLink", "check_wan", "parse_rate", "parse_wan", "run_wan", "summary"]

RESULT_SCHEMA: Final = "fmb.bench-wan/1"  # the shape: testbed.core.results.WanResult
CONFIGS = ("no-priority", "priority")
NO_NETEM = "not available: kernel has no netem"
# Bytes on the wire per flood message beyond its payload: MQTT fixed header + topic, TLS record,
# TCP/IP/Ethernet headers; a rough figure, used only to offer a flood above the link's capacity.
WIRE_OVERHEAD_BYTES = 120
UNIT = {"": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_rate(text: str) -> int:
    """``1mbit``, ``512kbit``, ``2000000`` -> bits per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNIT:
        raise TestbedError(f"rate {text!r}: give bits per second, e.g. 1mbit, 512kbit")
    bps = int(float(m.group(1)) * UNIT[m.group(2).lower()])
    if bps < 8000:
        raise TestbedError(f"rate {text!r} is below 8 kbit/s")
    return bps


def parse_wan(text: str) -> tuple[int, float]:
    """``RATE[,DELAY]`` (``1mbit,40ms``) -> (bits/s, delay ms). The Compose bench would need netem
    for a delay, which this kernel lacks (:func:`check_wan` refuses it); the link of
    ``testbed.bench.wancurve`` delays in user space."""
    rate, _, delay = text.partition(",")
    delay_ms = 0.0
    if delay.strip():
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms)?\s*", delay)
        if not m:
            raise TestbedError(f"--wan delay {delay!r}: give milliseconds, e.g. 40ms")
        delay_ms = float(m.group(1))
    return parse_rate(rate), delay_ms


def _run(argv: list[str], check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {done.stderr.strip()} (shaping the link needs root, "
                           "iproute2 and the ifb, htb and mirred modules)")
    return done.stdout


class SharedLink:
    """One shaped link for the traffic the ``dc`` network delivers to some containers.

    Egress of each container's host-side veth (traffic *to* the container) is redirected into
    one IFB device; the IFB's HTB tree is the link. Removed by :meth:`remove` (also on exit)."""

    def __init__(self, bus: DockerBus, containers: list[str], network: str, rate_bps: int,
                 control_ports: list[int], queue_packets: int = 100, control_share: float = 0.2) -> None:
        for tool in ("tc", "ip", "nsenter"):
            if shutil.which(tool) is None:
                raise TestbedError(f"the WAN benchmark needs {tool} on this host")
        self.bus, self.rate_bps, self.control_ports = bus, rate_bps, control_ports
        self.queue_packets, self.control_share = queue_packets, control_share
        self.ifb = f"fmbw{os.getpid() % 100000}"
        self.veths = [self._host_veth(name, network) for name in containers]
        self.installed = False

    def _host_veth(self, name: str, network: str) -> str:
        container = self.bus.project.container(name)
        pid = int(container.attrs["State"]["Pid"])
        net = self.bus.project.network(network).name
        mac = container.attrs["NetworkSettings"]["Networks"][net]["MacAddress"].lower()
        inside = _run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show"])
        peer = next((m.group(1) for line in inside.splitlines() if mac in line.lower()
                     for m in [re.search(r"@if(\d+):", line)] if m), None)
        if peer is None:
            raise TestbedError(f"cannot find {name}'s interface on network {network}")
        for line in _run(["ip", "-o", "link", "show"]).splitlines():
            index, ifname = line.split(":", 2)[:2]
            if index.strip() == peer:
                return ifname.strip().split("@")[0]
        raise TestbedError(f"cannot find the host side of {name}'s veth (ifindex {peer})")

    def install(self, priority: bool) -> None:
        self.remove()
        rate = f"{self.rate_bps}bit"
        _run(["ip", "link", "add", self.ifb, "type", "ifb"])
        self.installed = True
        _run(["ip", "link", "set", self.ifb, "up"])
        tc = ["tc", "qdisc", "add", "dev", self.ifb]
        _run([*tc, "root", "handle", "1:", "htb", "default", "20"])
        cls = ["tc", "class", "add", "dev", self.ifb, "parent"]
        _run([*cls, "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate])
        if priority:
            control = max(8000, int(self.rate_bps * self.control_share))
            _run([*cls, "1:1", "classid", "1:10", "htb", "rate", f"{control}bit", "ceil", rate, "prio", "0"])
            _run([*cls, "1:1", "classid", "1:20", "htb", "rate", f"{self.rate_bps - control}bit", "ceil", rate,
                  "prio", "1"])
            _run([*tc, "parent", "1:10", "handle", "10:", "pfifo", "limit", str(self.queue_packets)])
            for port in self.control_ports:
                for way in ("sport", "dport"):
                    _run(["tc", "filter", "add", "dev", self.ifb, "parent", "1:", "protocol", "ip", "prio", "1",
                          "u32", "match", "ip", way, str(port), "0xffff", "flowid", "1:10"])
        else:
            _run([*cls, "1:1", "classid", "1:20", "htb", "rate", rate, "ceil", rate, "prio", "1"])
        _run([*tc, "parent", "1:20", "handle", "20:", "pfifo", "limit", str(self.queue_packets)])
        for veth in self.veths:
            _run(["tc", "qdisc", "replace", "dev", veth, "root", "handle", "1:", "htb", "default", "1"])
            _run(["tc", "filter", "add", "dev", veth, "parent", "1:", "protocol", "all", "prio", "1", "u32",
                  "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", self.ifb])

    def sent_bytes(self) -> dict[str, int]:
        """Bytes each leaf class sent so far: ``{"control": n, "delivery": n}`` (control absent
        without priority, where every packet is in the one class)."""
        out = _run(["tc", "-s", "class", "show", "dev", self.ifb], check=False)
        sent: dict[str, int] = {}
        for block in out.split("class htb ")[1:]:
            classid = block.split()[0]
            m = re.search(r"Sent (\d+) bytes", block)
            if m and classid in ("1:10", "1:20"):
                sent["control" if classid == "1:10" else "delivery"] = int(m.group(1))
        return sent

    def remove(self) -> None:
        for veth in self.veths:
            _run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
        if self.installed:
            _run(["ip", "link", "del", self.ifb], check=False)
            self.installed = False

    def __enter__(self) -> SharedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _ControlProbe:
    """Signed commands from the operator on dc-control, timed until the recorder sees them on
    field-control (one crossing of the control-plane bridge)."""

    def __init__(self, bus: DockerBus, target: str) -> None:
        topology = bus.topology
        root = topology.root
        self.name = topic(root, "SupplyControlProfile", target)
        key = SigningKeys(bus.pki.directory).key_path("operator")
        if not key.exists():
            raise TestbedError("the harness volume holds no operator signing key")
        self.signer = CommandSigner("operator", key)
        self.lock = threading.Lock()
        self.sent: dict[int, int] = {}
        self.got: dict[int, float] = {}
        self.seq = int(time.time())  # distinct from the scenario runner's sequence numbers
        subscribed = threading.Event()
        dc, field = topology.broker_for("dc", "control"), topology.broker_for(target_site(bus, target), "control")

        def on_message(c: Any, u: Any, msg: Any) -> None:
            now = time.perf_counter_ns()
            try:
                seq = decode(msg.payload).seq
            except ValueError:
                return
            with self.lock:
                if seq in self.sent and seq not in self.got:
                    self.got[seq] = (now - self.sent[seq]) / 1e6

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(self.name, 1)

        tag = f"{os.getpid()}-{time.monotonic_ns() % 10**6}"
        self.watcher = connect(f"wan-recorder-{tag}", bus.identity("recorder"), bus.endpoint(field.name),
                               on_message=on_message, on_connect=on_connect)
        if not subscribed.wait(10):
            raise TestbedError("the WAN benchmark's recorder could not subscribe on the field control broker")
        self.operator = connect(f"wan-operator-{tag}", bus.identity("operator"), bus.endpoint(dc.name))

    def send(self) -> None:
        self.seq += 1
        payload = encode("SupplyControlProfile", "operator", self.seq, {"setpoint_v": 120.0})
        props = publish_properties(new_traceparent(), self.signer.properties(self.name, payload))
        with self.lock:
            self.sent[self.seq] = time.perf_counter_ns()
        self.operator.publish(self.name, payload, 1, properties=props)

    def window(self, rate: float, seconds: float, wait_s: float) -> WanControl:
        first = self.seq + 1
        period, start = 1.0 / rate, time.perf_counter()
        for i in range(max(1, int(rate * seconds))):
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send()
        last = self.seq

        def arrived() -> bool:
            with self.lock:
                return all(s in self.got for s in range(first, last + 1))

        with contextlib.suppress(WaitTimeout):  # those still missing are counted missing
            wait_until(arrived, wait_s, interval_s=0.01, what=f"control messages {first} to {last}")
        with self.lock:
            samples = [self.got[s] for s in range(first, last + 1) if s in self.got]
        counts: WanControl = {"sent": last - first + 1, "received": len(samples),
                              "missing": last - first + 1 - len(samples), "waited_s": wait_s}
        return {**counts, **rounded(percentiles(samples), 3)} if samples else counts

    def close(self) -> None:
        for c in (self.operator, self.watcher):
            c.disconnect()
            c.loop_stop()


def target_site(bus: DockerBus, device_id: str) -> str:
    return bus.topology.device(device_id).site


def _lines(path: Path) -> int:
    try:
        return path.stat().st_size // 2  # "x\n" a message
    except OSError:
        return 0


def check_wan(delay_ms: float) -> None:
    """Refuse what this host cannot run, before a bus is started for it."""
    if delay_ms:
        raise TestbedError(f"a WAN delay ({delay_ms:g} ms) needs the netem qdisc, which this kernel lacks: "
                           "give the rate alone (--wan 1mbit)")
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise TestbedError(f"{tool} is not installed: run `sudo apt-get install mosquitto-clients`")


def run_wan(bus: DockerBus, rate_bps: int, delay_ms: float, seconds: float, command_rate: float,
            payload_bytes: int, publishers: int, out: Path, configs: tuple[str, ...] = CONFIGS,
            queue_packets: int = 100, control_share: float = 0.2, flood_factor: float = 2.0,
            progress: Callable[[str], None] | None = None) -> WanResult:
    """The whole benchmark on a running Compose bus; writes ``out/bench-wan.json`` and returns it."""
    say = progress or (lambda line: None)
    check_wan(delay_ms)
    topology = bus.topology
    field_site = topology.first((s.name for s in topology.sites if s.bridge_to), "field site bridged to a data centre")
    dc_site = topology.site(field_site).bridge_to
    assert dc_site is not None
    dms = topology.first((d.id for d in topology.devices if d.role == "dms"), "DMS")
    supply = topology.first((d.id for d in topology.devices if d.role == "supply" and d.site == field_site),
                            f"power supply at {field_site}")
    flood_identity = bus.borrow_identity(dms)
    recorder = bus.identity("recorder")
    field_delivery = topology.broker_for(field_site, "delivery")
    field_control = topology.broker_for(field_site, "control")
    dc_delivery = topology.broker_for(dc_site, "delivery")
    dc_control = topology.broker_for(dc_site, "control")
    # A diagram of a feeder of the field site: the DMS may publish it, and the bridge carries it there.
    feeder = topology.first((f.id for f in topology.feeders if f.site == field_site), f"feeder at {field_site}")
    flood_topic = topic(topology.root, "SingleLineDiagramProfile", feeder)
    diagram = {"feeder": feeder, "version": 0, "range_a": "unknown", "meters": {}}
    bare = len(encode("SingleLineDiagramProfile", dms, 0, {**diagram, "bench_padding": ""}))
    body = {**diagram, "bench_padding": "x" * max(0, payload_bytes - bare)}
    flood_payload = encode("SingleLineDiagramProfile", dms, 0, body).decode()
    capacity = rate_bps / 8 / (len(flood_payload) + WIRE_OVERHEAD_BYTES)
    offered = round(capacity * flood_factor, 1)
    # The container ports of the control brokers (the bridge connects to the field broker's).
    ports = sorted({bus.container_topology.broker(b.name).port for b in (field_control, dc_control)})
    results: dict[str, list[WanRow]] = {}
    with tempfile.TemporaryDirectory(prefix="fmb-bench-wan-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        link = SharedLink(bus, [field_delivery.name, field_control.name], dc_site, rate_bps, ports,
                          queue_packets, control_share)
        probe = _ControlProbe(bus, supply)
        try:
            flood_log = work / "flood-sub.out"
            ep = bus.endpoint(field_delivery.name)
            procs.start("flood-sub", [
                "mosquitto_sub", "-V", "5", "-h", ep.host, "-p", str(ep.port), "--cafile", str(recorder.ca),
                "--cert", str(recorder.cert), "--key", str(recorder.key), "-q", "1", "-i",
                f"wan-flood-sub-{os.getpid()}", "-t", flood_topic, "-F", "x"], stdout=flood_log)
            probe.window(20, 0.5, 5)  # warm up both connections and the bridge
            for config in configs:
                link.install(priority=config == "priority")
                rows: list[WanRow] = []
                for step, rate in (("idle", 0.0), ("flood", offered)):
                    flood = [] if not rate else _flood(procs, flood_identity, bus.endpoint(dc_delivery.name),
                                                       flood_topic, flood_payload, rate, seconds + 3,
                                                       publishers, f"{config}")
                    time.sleep(2.0 if flood else 0.2)  # let the flood fill the link's queue
                    before, sent_before, t0 = _lines(flood_log), link.sent_bytes(), time.monotonic()
                    control = probe.window(command_rate, seconds, wait_s=max(5.0, seconds))
                    elapsed = time.monotonic() - t0
                    delivered = (_lines(flood_log) - before) / elapsed
                    sent_after = link.sent_bytes()
                    link_bps = {k: round((sent_after.get(k, 0) - sent_before.get(k, 0)) * 8 / elapsed)
                                for k in sent_after}
                    procs.stop(flood)
                    rows.append({"step": step, "offered_rate": rate, "delivered_rate": round(delivered, 1),
                                 "link_bits_per_s": link_bps, "control_ms": control})
                    say(f"  {config:12} {step:6} flood offered {rate:5.0f} msg/s, delivered {delivered:6.1f}; "
                        f"control p50 {control.get('p50', float('nan')):8.2f} p99 "
                        f"{control.get('p99', float('nan')):8.2f} ms, missing {control['missing']}")
                results[config] = rows
                link.remove()  # the delivery backlog drains at full speed before the next configuration
                _drain(flood_log)
        finally:
            probe.close()
            procs.stop()
            link.remove()
    headline: dict[str, WanHeadline]
    headline = {c: {"idle_p99_ms": rows[0]["control_ms"].get("p99"),
                    "flood_p50_ms": rows[1]["control_ms"].get("p50"),
                    "flood_p99_ms": rows[1]["control_ms"].get("p99"),
                    "flood_delivered_rate": rows[1]["delivered_rate"]} for c, rows in results.items()}
    nop, pri = (headline[c]["flood_p99_ms"] if c in headline else None for c in CONFIGS)
    result: WanResult = {
        "schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": {
            "backend": "docker", "link_rate_bits_per_s": rate_bps, "delay": NO_NETEM,
            "shaped_direction": f"{dc_site} -> {field_site} (both bridges), one HTB link on an IFB device fed by the "
                                f"host side of the {field_site} brokers' veths on the {dc_site} network",
            "unshaped": f"{field_site} -> {dc_site}, and the harness's own connections (published ports)",
            "queue_packets": queue_packets, "priority_class": {
                "match": f"u32 TCP sport/dport {ports}", "htb_prio": 0,
                "guaranteed_bits_per_s": max(8000, int(rate_bps * control_share)), "ceil": "link rate"},
            "seconds_per_step": seconds, "command_rate": command_rate,
            "command": f"signed SupplyControlProfile (120 V) from operator on {dc_control.name}, timed until the "
                       f"recorder receives it on {field_control.name}: one crossing of the control bridge, QoS 1",
            "flood": f"SingleLineDiagramProfile as {dms} on {dc_delivery.name} -> delivery bridge -> "
                     f"{field_delivery.name} (subscriber there counts), QoS 1, mosquitto_pub x {publishers}",
            "flood_payload_bytes": len(flood_payload), "flood_offered_rate": offered,
            "link_capacity_estimate_msgs_per_s": round(capacity, 1),
            "wire_overhead_estimate_bytes": WIRE_OVERHEAD_BYTES,
        },
        "results": results, "headline": headline,
        "no_priority_over_priority_p99": round(nop / pri, 2) if nop and pri else None,
        "environment": environment(topology, None, "docker"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-wan.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _drain(flood_log: Path, quiet_s: float = 1.0, timeout_s: float = 30) -> None:
    """Wait until the flood subscriber has had nothing for ``quiet_s`` (the backlog crossed)."""
    last, since = -1, time.monotonic()

    def quiet() -> bool:
        nonlocal last, since
        now = _lines(flood_log)
        if now != last:
            last, since = now, time.monotonic()
            return False
        return time.monotonic() - since >= quiet_s

    with contextlib.suppress(WaitTimeout):  # a flood still draining after timeout_s: go on regardless
        wait_until(quiet, timeout_s, interval_s=0.1, what=f"{quiet_s:g} s without a message in {flood_log}")


def _flood(procs: Processes, identity: Any, endpoint: Any, name: str, payload: str, rate: float, seconds: float,
           publishers: int, tag: str) -> list[ProcessRecord]:
    started = []
    for i in range(publishers):
        count, delay = int(rate * seconds / publishers) + 1, publishers / rate
        started.append(procs.start(f"wan-flood-{tag}-{i}", [
            "mosquitto_pub", "-V", "5", "-h", endpoint.host, "-p", str(endpoint.port), "--cafile", str(identity.ca),
            "--cert", str(identity.cert), "--key", str(identity.key), "-q", "1", "-i",
            f"wan-flood-{tag}-{i}-{os.getpid()}", "-t", name, "-m", payload, "--repeat", str(count),
            "--repeat-delay", f"{delay:.6f}"]))
    return started


def summary(result: WanResult) -> str:
    c = result["conditions"]
    lines = [f"WAN benchmark: {c['link_rate_bits_per_s'] / 1e6:g} Mbit/s {c['shaped_direction'].split(' (')[0]}, "
             f"delay {c['delay']}; control one-way latency (ms) across the control bridge",
             f"{'config':13}{'step':7}{'offered/s':>10}{'delivered/s':>12}{'link kbit/s':>12}{'ctl p50':>9}"
             f"{'ctl p99':>9}{'missing':>8}"]
    for config, rows in result["results"].items():
        for r in rows:
            k = r["control_ms"]
            link = sum(r["link_bits_per_s"].values()) / 1e3
            lines.append(f"{config:13}{r['step']:7}{r['offered_rate']:>10.0f}{r['delivered_rate']:>12.1f}"
                         f"{link:>12.0f}{k.get('p50', float('nan')):>9.2f}{k.get('p99', float('nan')):>9.2f}"
                         f"{k['missing']:>8}")
    lines.append(f"no-priority / priority control p99 under flood: {result['no_priority_over_priority_p99']}")
    return "\n".join(lines)
