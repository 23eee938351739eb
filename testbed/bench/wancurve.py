"""``fmb bench wan``: where a segregated control plane pays on a thin field <-> data-centre link.

A shaped WAN link between data-centre and field brokers (:mod:`testbed.backends.wanlink`: a
network namespace, HTB at the same rate in both directions, a user-space frame forwarder for the
propagation delay, since this kernel has no netem), and three configurations on it:

* ``shared``: one broker per site carries both planes, so one bridge connection per direction
  carries both: the control acknowledgements (field -> dc) wait in the same TCP stream, and the
  same broker queue, as the flood;
* ``segregated``: a control and a delivery broker per site, separate bridges, one FIFO on the link;
* ``segregated+priority``: the same, and the control bridges' packets get an HTB class of their
  own at priority 0 (:class:`~testbed.backends.wanlink.LinkShape`).

Bridges follow the project's rule (``brokers.mosquitto``): one connection per direction, opened
by the side that sends. Commands go dc -> field (a ``BenchCommandProfile`` from the commander
on the data-centre control broker to the responder on the field control broker,
``testbed.bench.echo``), acknowledgements back field -> dc; the round trip is timed on the
commander, one clock. The flood is telemetry, field -> dc: ``BenchFloodProfile`` messages by C
``mosquitto_pub`` processes on the field delivery broker, counted by a ``mosquitto_sub`` on the
data-centre delivery broker. Load axis: the flood's offered rate, as multiples of the link's
estimated capacity (``factors``), from 0 (the idle point) to past saturation. Everything is mutual
TLS with a PKI made for the run (the brokers' certificates name the link's addresses), QoS 1.

Writes the ``fmb.bench-bottleneck/1`` document as ``bench-wan-curve.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from brokers.mosquitto import BRIDGE_KEEPALIVE_S, BRIDGE_RESTART_S, render_acl
from testbed.backends.environment import environment
from testbed.backends.processes import ProcessRecord
from testbed.backends.wanlink import LinkShape, WanLink, check_host
from testbed.bench.bottleneck import RESULT_SCHEMA, check, targets
from testbed.bench.common import Placement, Processes, start_broker
from testbed.core.errors import TestbedError
from testbed.core.ports import free_port
from testbed.core.results import (
    BottleneckConfig,
    BottleneckCurve,
    BottleneckPoint,
    BottleneckResult,
    PrioritizationControl,
)
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.topology import BrokerSpec, SiteSpec, Topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = ["CONFIGS", "DEFAULT_FACTORS", "RESULT_FILE", "capacity_msgs", "parse_factors", "run_wan_curve", "summary"]

RESULT_FILE: Final = "bench-wan-curve.json"
CONFIGS: Final[tuple[BottleneckConfig, ...]] = ("shared", "segregated", "segregated+priority")
DEFAULT_FACTORS: Final = (0.0, 0.25, 0.5, 0.8, 1.5, 3.0)
# Bytes on the wire per flood message beyond its payload, measured: 1 Mbit/s carried about 370
# messages of 256 bytes a second (topic and MQTT header per message; TLS, TCP/IP and Ethernet
# headers shared by the several messages a bridge packs into a segment). Only places the load axis.
WIRE_OVERHEAD_BYTES = 80
SATURATED_LINK_SHARE = 0.9  # a step is saturated when the flood's direction ran at this share of the link rate
QOS = 1
ROOT = "fmb"


def parse_factors(text: str) -> tuple[float, ...]:
    """``0,0.5,1.5,3`` -> the load axis: multiples of the link's capacity, ascending from 0 (idle)."""
    try:
        factors = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        factors = ()
    if not factors or factors[0] != 0 or list(factors) != sorted(set(factors)):
        raise TestbedError(f"--load-factors {text!r}: give ascending multiples of the link's capacity from 0, "
                           "e.g. 0,0.5,0.8,1.5,3")
    return factors


def capacity_msgs(rate_bps: int, payload_bytes: int) -> float:
    """Flood messages per second the link carries, estimated from its rate."""
    return rate_bps / 8 / (payload_bytes + WIRE_OVERHEAD_BYTES)


def _topology(ports: list[int]) -> Topology:
    """Two sites of two brokers each, no devices; the bridges are the benchmark's own."""
    sites = (SiteSpec("dc", "edge", ports[0], ports[1]), SiteSpec("field", "edge", ports[2], ports[3]))
    return Topology(path="(benchmark)", name="bench-wan", root=ROOT, qos=QOS, message_size_limit=1 << 20,
                    max_queued_messages=100000, sites=sites, devices=(), feeders=())


def _bridge(name: str, address: str, port: int, topics: list[str], pki: PKI) -> str:
    """One outward bridge connection as identity ``bench`` (the Bench* profiles' rights), like the
    topology's bridges in ``brokers.mosquitto``: MQTT v5, mutual TLS, 1 s retry."""
    client = pki.client("bench")
    lines = ["", f"# {name}: the WAN benchmark's bridge, across the shaped link", f"connection {name}",
             f"address {address}:{port}", f"remote_clientid {name}", f"local_clientid {name}.local",
             "bridge_protocol_version mqttv50", "cleansession true", "try_private true", "notifications false",
             f"restart_timeout {BRIDGE_RESTART_S} {BRIDGE_RESTART_S}", f"keepalive_interval {BRIDGE_KEEPALIVE_S}",
             f"bridge_cafile {pki.ca_cert.resolve()}", f"bridge_certfile {client.cert.resolve()}",
             f"bridge_keyfile {client.key.resolve()}", "bridge_tls_version tlsv1.2",
             *(f"topic {t} out {QOS}" for t in topics)]
    return "\n".join(lines) + "\n"


class _Rig:
    """The brokers of one configuration, with their bridges dialling across the link: the data
    centre's in this namespace, the field's in the link's field namespace."""

    def __init__(self, config: BottleneckConfig, topology: Topology, pki: PKI, link: WanLink, work: Path,
                 procs: Processes) -> None:
        b = topology.broker
        self.topology, self.link, self.pki, self.work, self.procs = topology, link, pki, work, procs
        command, ack, flood = (topic(ROOT, p, "+") for p in ("BenchCommandProfile", "BenchAckProfile",
                                                               "BenchFloodProfile"))
        self.records: list[ProcessRecord] = []
        if config == "shared":
            dc, field = b("dc-delivery"), b("field-delivery")
            # One broker carries both planes: it gets both planes' rights.
            field_ep = self._start(field, _bridge("wan-field-to-dc", link.dc_host, dc.port, [ack, flood], pki),
                                   render_acl(topology, b("field-control")))
            dc_ep = self._start(dc, _bridge("wan-dc-to-field", link.field_host, field.port, [command], pki),
                                render_acl(topology, b("dc-control")))
            self.field_control = self.field_delivery = field_ep
            self.dc_control = self.dc_delivery = dc_ep
            self.control_ports: list[int] = []
            return
        fc, fd, dcc, dcd = b("field-control"), b("field-delivery"), b("dc-control"), b("dc-delivery")
        self.field_control = self._start(fc, _bridge("wan-field-to-dc-control", link.dc_host, dcc.port, [ack], pki))
        self.field_delivery = self._start(fd, _bridge("wan-field-to-dc-delivery", link.dc_host, dcd.port, [flood],
                                                      pki))
        self.dc_control = self._start(dcc, _bridge("wan-dc-to-field-control", link.field_host, fc.port, [command],
                                                   pki))
        self.dc_delivery = self._start(dcd, "")
        self.control_ports = [fc.port, dcc.port]

    def _start(self, broker: BrokerSpec, bridges: str, extra_acl: str = "") -> Endpoint:
        field = broker.site == "field"
        host = self.link.field_host if field else self.link.dc_host
        place: Placement = {"netns": self.link.field_ns} if field else {}
        record, _ = start_broker(self.procs, self.topology, broker, self.pki, self.work / broker.name, extra_acl,
                                 bind=host, extra_conf=bridges, **place)
        self.records.append(record)
        return Endpoint(host, broker.port)


class _Commander:
    """Commands at a steady rate, each timed until its acknowledgement arrives (as
    ``testbed.bench.prioritization``'s commander, but awaiting acknowledgements as long as a backlog
    on the link can hold them back, where that one gives up after 2 s)."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, target: str, client_id: str) -> None:
        self.sent: dict[int, int] = {}  # seq -> perf_counter_ns at publish
        self.rtts: dict[int, float] = {}  # seq -> round trip, ms
        self.lock = threading.Lock()
        self.command_topic = topic(ROOT, "BenchCommandProfile", target)
        self.seq = 0
        subscribed = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            now = time.perf_counter_ns()
            try:
                seq = int(msg.payload.split(b",", 1)[0])
            except ValueError:
                return  # not an acknowledgement of ours
            with self.lock:
                if seq in self.sent and seq not in self.rtts:
                    self.rtts[seq] = (now - self.sent[seq]) / 1e6

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(topic(ROOT, "BenchAckProfile", target), QOS)

        self.client = connect(client_id, identity, endpoint, on_message=on_message, on_connect=on_connect)
        if not subscribed.wait(10):
            raise TestbedError("the WAN benchmark's commander could not subscribe to acknowledgements")

    def window(self, rate: float, seconds: float, wait_s: float) -> PrioritizationControl:
        """Send at ``rate`` for ``seconds``; the round trips (ms) of those acknowledged within ``wait_s``
        of the last command (the others count as lost)."""
        first, period, start = self.seq + 1, 1.0 / rate, time.perf_counter()
        for i in range(max(1, int(rate * seconds))):
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.seq += 1
            with self.lock:
                self.sent[self.seq] = time.perf_counter_ns()
            self.client.publish(self.command_topic, f"{self.seq},{'c' * 64}".encode(), QOS)
        last = self.seq

        def acked() -> bool:
            with self.lock:
                return all(s in self.rtts for s in range(first, last + 1))

        with contextlib.suppress(WaitTimeout):  # those still unacknowledged are counted lost
            wait_until(acked, wait_s, interval_s=0.01, what=f"acknowledgements of commands {first} to {last}")
        with self.lock:
            samples = [self.rtts[s] for s in range(first, last + 1) if s in self.rtts]
        counts: PrioritizationControl = {"sent": last - first + 1, "acked": len(samples),
                                         "unacked_within_s": wait_s, "lost": last - first + 1 - len(samples)}
        return {**counts, **rounded(percentiles(samples), 3)} if samples else counts

    def wait_for_ack(self) -> None:
        """Until one command makes the round trip: the bridges are up both ways."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.window(20, 0.25, 2.0)["acked"]:
                return
        raise TestbedError("the WAN benchmark's responder never acknowledged a command across the link")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _flood(procs: Processes, pki: PKI, endpoint: Endpoint, rate: float, seconds: float, payload_bytes: int,
           publishers: int, tag: str, netns: str) -> list[ProcessRecord]:
    """``publishers`` mosquitto_pub processes offering ``rate`` msg/s in all for ``seconds``."""
    client = pki.client("bench")
    started = []
    for i in range(publishers):
        count, delay = int(rate * seconds / publishers) + 1, publishers / rate
        started.append(procs.start(f"wan-flood-{tag}-{i}", [
            "mosquitto_pub", "-V", "5", "-h", endpoint.host, "-p", str(endpoint.port), "--cafile", str(pki.ca_cert),
            "--cert", str(client.cert), "--key", str(client.key), "-q", str(QOS), "-i", f"wan-flood-{tag}-{i}",
            "-t", topic(ROOT, "BenchFloodProfile", f"flood-{i}"), "-m", "f" * payload_bytes,
            "--repeat", str(count), "--repeat-delay", f"{delay:.6f}"], netns=netns))
    return started


def _lines(path: Path) -> int:
    try:
        return path.stat().st_size // 2  # "x\n" a message
    except OSError:
        return 0


def _drain(log: Path, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Wait until the flood subscriber has had nothing for ``quiet_s`` (the link's backlog crossed)."""
    last, since = -1, time.monotonic()

    def quiet() -> bool:
        nonlocal last, since
        now = _lines(log)
        if now != last:
            last, since = now, time.monotonic()
            return False
        return time.monotonic() - since >= quiet_s

    with contextlib.suppress(WaitTimeout):  # still draining after timeout_s: the next step starts regardless
        wait_until(quiet, timeout_s, interval_s=0.1, what=f"{quiet_s:g} s without a message in {log}")


def run_wan_curve(rate_bps: int, delay_ms: float, out: Path, *, factors: tuple[float, ...] = DEFAULT_FACTORS,
                  seconds: float = 10.0, settle_s: float = 2.0, command_rate: float = 10.0, payload_bytes: int = 256,
                  publishers: int = 3, configs: tuple[BottleneckConfig, ...] = CONFIGS, queue_packets: int = 100,
                  control_share: float = 0.2, progress: Callable[[str], None] | None = None) -> BottleneckResult:
    """The whole benchmark; writes ``out/bench-wan-curve.json`` and returns it."""
    say = progress or (lambda line: None)
    check_host()
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise TestbedError(f"{tool} is not installed: run `sudo apt-get install mosquitto-clients`")
    if not factors or factors[0] != 0 or list(factors) != sorted(factors):
        raise TestbedError(f"load factors {factors}: give ascending multiples of the link's capacity, from 0 (idle)")
    if delay_ms < 0:
        raise TestbedError(f"link delay {delay_ms} ms: give 0 or more")
    shape = LinkShape(rate_bps, queue_packets, control_share)
    capacity = capacity_msgs(rate_bps, payload_bytes)
    offered = [round(f * capacity, 1) for f in factors]
    topology = _topology([free_port() for _ in range(4)])
    curves: list[BottleneckCurve] = []
    forwarder_stats: dict[str, object] = {}
    tls_version: str | None = None
    with tempfile.TemporaryDirectory(prefix="fmb-bench-wan-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        link = WanLink(work)
        try:
            link.create()
            pki = PKI(work / "pki")
            pki.init({b.name: [link.dc_host if b.site == "dc" else link.field_host] for b in topology.brokers},
                     ["bench"])
            bench = pki.client("bench")
            identity = TLSIdentity(pki.ca_cert, bench.cert, bench.key)
            link_rtt = _link_round_trips(link, shape, delay_ms)
            say(f"  link round trip without load (TCP SYN -> RST): {link_rtt}")
            for config in configs:
                points, holds, tls = _run_config(config, topology, pki, identity, link, shape, delay_ms, offered,
                                                 seconds, settle_s, command_rate, payload_bytes, publishers,
                                                 work / config, procs, say)
                tls_version = tls_version or tls
                forwarder_stats[config] = holds
                unsaturated = [p["delivery_rate"] for p in points if p["load"] > 0 and not p["saturated"]]
                curves.append({"config": config, "idle_p99_ms": points[0]["control_ms"].get("p99"),
                               "unsaturated_rate": max(unsaturated, default=0.0), "points": points})
        finally:
            procs.stop()
            link.remove()
    result: BottleneckResult = {
        "schema": RESULT_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bottleneck": "wan", "load_unit": "flood msg/s offered (field -> dc)", "load_axis": "rising",
        "conditions": {
            "link_rate_bits_per_s": rate_bps, "shaped": "both directions, HTB at the link rate on each",
            "delay_ms_each_way": delay_ms,
            "delay_method": "user-space layer-2 forwarder in the link namespace holding each frame "
                            "(testbed.backends.wandelay); the kernel has no netem (nor fq for BPF departure times)",
            "delay_forwarder": forwarder_stats, "link_round_trip_ms": link_rtt, "queue_packets": queue_packets,
            "priority_class": {"htb_prio": 0, "guaranteed_bits_per_s": shape.control_bps, "ceil": "link rate",
                               "match": "u32 TCP sport/dport of the control brokers"},
            "gso": "off on the shaped ends (gso_max_segs 1): one queued packet is one MTU",
            "load_factors": list(factors), "link_capacity_estimate_msgs_per_s": round(capacity, 1),
            "wire_overhead_estimate_bytes": WIRE_OVERHEAD_BYTES,
            "saturated_when_link_at": f"{SATURATED_LINK_SHARE:g} x the link rate, field -> dc",
            "seconds_per_step": seconds, "settle_s": settle_s, "command_rate": command_rate, "qos": QOS,
            "command": "BenchCommandProfile dc control broker -> bridge -> field control broker -> responder "
                       "(testbed.bench.echo) -> BenchAckProfile back; round trip on the commander (paho, TCP_NODELAY)",
            "flood": f"BenchFloodProfile, {payload_bytes} B payload, mosquitto_pub x {publishers} on the field "
                     "delivery broker -> bridge -> mosquitto_sub on the dc delivery broker",
            "flood_payload_bytes": payload_bytes, "flood_publishers": publishers,
            "bridges": "one connection per direction, opened by the sending side (brokers.mosquitto's rule); shared: "
                       "both planes' traffic in that connection; TLS 1.2 (bridge_tls_version), mutual, MQTT v5",
            "brokers": "Mosquitto processes on this host, no persistence (both sites 'edge'), "
                       "max_queued_messages 100000",
            "machine_load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "curves": curves, "targets": targets(curves), "environment": environment(topology, tls_version, "local"),
    }
    check(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _link_round_trips(link: WanLink, shape: LinkShape, delay_ms: float) -> dict[str, object]:
    """The emulated delay's accuracy: the link's round trip (TCP SYN -> RST, no load) with the
    forwarder holding nothing and holding ``delay_ms``; the difference should be 2 x ``delay_ms``."""
    link.shape(shape, priority=False, control_ports=[])
    out: dict[str, object] = {}
    for name, delay in (("delay_0", 0.0), (f"delay_{delay_ms:g}", delay_ms)):
        link.start_delay(delay)
        out[name] = rounded(percentiles(link.round_trips_ms(20)), 3)
        link.stop_delay()
    base, delayed = (out[k] for k in out)
    assert isinstance(base, dict) and isinstance(delayed, dict)
    out["added_p50"] = round(delayed["p50"] - base["p50"], 3)
    out["expected_added"] = 2 * delay_ms
    return out


class _Window:
    """What the flood did over one measuring window: counts and the link's counters read now and
    again ``seconds`` later (on a timer, while the commander sends), rates over the time between."""

    def __init__(self, link: WanLink, delivered_log: Path, published_log: Path, seconds: float) -> None:
        self.link, self.logs = link, (delivered_log, published_log)
        self.start = self._read()
        self.end: tuple[float, int, int, dict[str, dict[str, int]]] | None = None
        self.timer = threading.Timer(seconds, self._finish)
        self.timer.start()

    def _read(self) -> tuple[float, int, int, dict[str, dict[str, int]]]:
        sent = self.link.sent()
        return time.monotonic(), _lines(self.logs[0]), _lines(self.logs[1]), sent

    def _finish(self) -> None:
        self.end = self._read()

    def result(self) -> tuple[float, float, dict[str, int], dict[str, dict[str, int]]]:
        """(delivered msg/s, published msg/s, link bits/s per direction, link counters' increase)."""
        self.timer.join()
        assert self.end is not None
        (t0, d0, p0, l0), (t1, d1, p1, l1) = self.start, self.end
        elapsed = t1 - t0
        during = {way: {k: v - l0.get(way, {}).get(k, 0) for k, v in counts.items()} for way, counts in l1.items()}
        bps = {way: round(sum(v for k, v in counts.items() if k.endswith("_bytes")) * 8 / elapsed)
               for way, counts in during.items()}
        return (d1 - d0) / elapsed, (p1 - p0) / elapsed, bps, during


def _run_config(config: BottleneckConfig, topology: Topology, pki: PKI, identity: TLSIdentity, link: WanLink,
                shape: LinkShape, delay_ms: float, offered: list[float], seconds: float, settle_s: float,
                command_rate: float, payload_bytes: int, publishers: int, work: Path, procs: Processes,
                say: Callable[[str], None]) -> tuple[list[BottleneckPoint], dict[str, object], str | None]:
    """One configuration's curve: its brokers, link shaping, forwarder, responder, commander and flood steps."""
    link.start_delay(delay_ms)
    rig = _Rig(config, topology, pki, link, work, procs)
    link.shape(shape, priority=config == "segregated+priority", control_ports=rig.control_ports)
    started = list(rig.records)
    responder = procs.start(f"{config}-responder", [sys.executable, "-m", "testbed.bench.echo"], {
        "FMB_CONTROL": f"{rig.field_control.host}:{rig.field_control.port}", "FMB_CA": str(identity.ca),
        "FMB_CERT": str(identity.cert), "FMB_KEY": str(identity.key), "FMB_ROOT": ROOT, "FMB_QOS": str(QOS),
        "FMB_DEVICE_ID": "responder-1"}, netns=link.field_ns)
    started.append(responder)
    flood_log, published_log = work / "flood-sub.out", work / "flood-published.out"
    flood_topic = topic(ROOT, "BenchFloodProfile", "+")
    for name, endpoint, log, netns in (("flood-sub", rig.dc_delivery, flood_log, None),
                                       ("flood-published", rig.field_delivery, published_log, link.field_ns)):
        # What crossed (data centre) and what the publishers managed to offer (field): on a loaded
        # machine mosquitto_pub can fall short of the rate asked, and the point says so.
        started.append(procs.start(f"{config}-{name}", [
            "mosquitto_sub", "-V", "5", "-h", endpoint.host, "-p", str(endpoint.port), "--cafile", str(identity.ca),
            "--cert", str(identity.cert), "--key", str(identity.key), "-q", str(QOS), "-i", f"wan-{name}-{config}",
            "-t", flood_topic, "-F", "x"], stdout=log, netns=netns))
    commander = _Commander(identity, rig.dc_control, "responder-1", f"wan-commander-{config}")
    points: list[BottleneckPoint] = []
    tls_version = None
    try:
        commander.wait_for_ack()
        sock = commander.client.socket()
        tls_version = sock.version() if sock is not None and hasattr(sock, "version") else None
        for rate in offered:
            flood = [] if not rate else _flood(procs, pki, rig.field_delivery, rate, settle_s + seconds + 1,
                                               payload_bytes, publishers, f"{config}-{rate:g}", link.field_ns)
            time.sleep(settle_s if flood else 0.2)
            window = _Window(link, flood_log, published_log, seconds)
            # A command still unanswered this long after the last one counts as lost: long enough for
            # a backlog built over the step to cross the link.
            control = commander.window(command_rate, seconds, wait_s=max(10.0, 3 * (settle_s + seconds)))
            delivered, published, link_bps, during = window.result()
            procs.stop(flood)
            # Saturated: the link ran at its rate (field -> dc, the flood's way) during the step.
            saturated = bool(rate) and link_bps["field->dc"] >= SATURATED_LINK_SHARE * shape.rate_bps
            evidence: dict[str, float | None] = {"published_rate": round(published, 1),
                                                 "load_average_1m": round(os.getloadavg()[0], 2)}
            for way, counters in during.items():
                key = way.replace("->", "_to_")
                evidence[f"{key}_bits_per_s"] = link_bps[way]
                evidence.update({f"{key}_{name}": value for name, value in counters.items()})
            points.append({"load": rate, "control_ms": control, "delivery_rate": round(delivered, 1),
                           "saturated": saturated, "evidence": evidence})
            say(f"  {config:20} flood {rate:6.1f} msg/s asked, {published:6.1f} published, {delivered:6.1f} "
                f"delivered, link {link_bps['field->dc'] / 1e3:5.0f} kbit/s; control p50 "
                f"{control.get('p50', float('nan')):8.2f} p99 {control.get('p99', float('nan')):8.2f} ms, "
                f"lost {control['lost']}{' (saturated)' if saturated else ''}")
            if flood and rate != offered[-1]:  # the last step's backlog goes with the brokers
                _drain(flood_log)
    finally:
        commander.close()
        procs.stop(started)
        holds = link.stop_delay()
    return points, holds, tls_version


def summary(result: BottleneckResult) -> str:
    c = result["conditions"]
    lines = [f"WAN benchmark: {int(str(c['link_rate_bits_per_s'])) / 1e6:g} Mbit/s both ways, "
             f"delay {c['delay_ms_each_way']} ms each way; control round trip (ms) under a field -> dc flood",
             f"{'config':22}{'offered/s':>10}{'delivered/s':>12}{'ctl p50':>9}{'ctl p99':>10}{'lost':>6}  saturated"]
    for curve in result["curves"]:
        for p in curve["points"]:
            k = p["control_ms"]
            lines.append(f"{curve['config']:22}{p['load']:>10.1f}{p['delivery_rate']:>12.1f}"
                         f"{k.get('p50', float('nan')):>9.2f}{k.get('p99', float('nan')):>10.2f}{k['lost']:>6}"
                         f"  {'yes' if p['saturated'] else ''}")
    t = result["targets"]
    met = t["met"]
    lines.append(f"targets ({t['segregated_config']} at saturation): p99 / idle p99 "
                 f"{t['segregated_saturation_over_idle']} (<= 2: {met['segregated_saturation_over_idle']}); "
                 f"shared / segregated p99 {t['shared_over_segregated']} (>= 10: {met['shared_over_segregated']}); "
                 f"delivery kept {t['delivery_kept']} (>= 0.8: {met['delivery_kept']})")
    return "\n".join(lines)
