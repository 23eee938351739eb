"""``fmb model calibrate``: short measurements on real brokers that give the capacity model its service times.

Every figure is CPU time of the Mosquitto process (user + system, ``/proc/<pid>/stat``) divided by
what it handled: on two cores shared with other work, wall-clock throughput moves by tens of per cent
between runs while a broker's CPU per message does not (the crash benchmark measures the same way).

* per message, by QoS (0, 1, 2), payload and matching subscribers: one paho publisher (the ``bench``
  identity, mutual TLS) sends ``messages`` to a benchmark broker with 1 or 4 subscribers;
* a bridge: a meter's reading published on a substation's delivery broker, carried by the
  topology's own bridge (mutual TLS) to the data centre's delivery broker and one subscriber there
  (the recorder identity, as ``fmb bench scale`` reads): CPU of each broker per reading;
* a TLS handshake: ``handshakes`` connections opened and closed one after another;
* a command's round trip on the idle broker through the benchmarks' echo responder (its own process),
  which gives the responder's own processing time;
* the clients' CPU (for the model of one machine's shared cores): one substation's gmqtt fleet reading
  through its broker and the bridge to a paho subscriber at the data centre (``fmb bench scale``'s own
  steady state: fleet CPU per reading published, the subscriber's per reading received), and a
  ``mosquitto_pub`` flood at QoS 0 into a ``mosquitto_sub`` (as ``fmb bench prioritization`` floods);
* from a ``bench-latency/2`` or ``/3`` result (the committed fixture by default): the part of a one-hop
  latency not spent in the broker, its spread (the one-hop percentiles), and each device's own
  processing time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy

from testbed.backends.environment import environment
from testbed.bench.common import (
    Processes,
    bench_topology,
    file_size,
    sent_count,
    start_broker,
    start_flood,
    start_flood_subscriber,
)
from testbed.bench.scale import steady_point
from testbed.core.errors import TestbedError
from testbed.core.ports import free_port
from testbed.core.results import (
    Environment,
    LatencyResult,
    ModelBridgePoint,
    ModelBrokerFit,
    ModelBrokerPoint,
    ModelCalibration,
    ModelCalibrationConditions,
    ModelClientCosts,
    Percentiles,
)
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.topology import DEFAULT_TOPOLOGY, Topology, load_topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.model.calibration import CALIBRATION_SCHEMA, QOS_KEYS
from testbed.security.pki import PKI
from testbed.security.provision import ensure_pki
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = ["calibrate", "derive", "device_times"]

PAYLOADS: Final = (150, 4096)  # a meter's reading (~150 B, bench-scale.json) and a larger message
SUBSCRIBERS: Final = (1, 4)
BRIDGE_TOPOLOGY: Final = DEFAULT_TOPOLOGY.with_name("utility-small.toml")  # two bridged sites, real ACLs


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError) as e:
        raise TestbedError(f"cannot read the broker's CPU time (/proc/{pid}/stat: {e}); calibration needs Linux") \
            from None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Counter:
    """Subscribers that count what they receive on one topic."""

    def __init__(self, identity: TLSIdentity, endpoint: Endpoint, name: str, topic_filter: str, qos: int,
                 n: int) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.clients: list[Any] = []
        ready = threading.Semaphore(0)

        def on_message(c: Any, u: Any, msg: Any) -> None:
            with self.lock:
                self.count += 1

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: ready.release()
            c.subscribe(topic_filter, qos)

        for i in range(n):
            self.clients.append(connect(f"{name}-{i}-{time.monotonic_ns() % 10**9}", identity, endpoint,
                                        on_message=on_message, on_connect=on_connect))
        for _ in range(n):
            if not ready.acquire(timeout=10):
                self.close()
                raise TestbedError(f"calibration: a subscriber on {endpoint.host}:{endpoint.port} was not subscribed "
                                   "within 10 s")

    def wait(self, expected: int, timeout_s: float) -> int:
        def done() -> bool:
            with self.lock:
                return self.count >= expected
        with contextlib.suppress(WaitTimeout):  # what was lost is counted, not hidden: `delivered` says it
            wait_until(done, timeout_s, interval_s=0.01, what="the calibration's deliveries")
        with self.lock:
            return self.count

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def _publish(client: Any, topic_name: str, payload: bytes, qos: int, count: int) -> None:
    """Publish ``count`` messages, never more than paho's in-flight window unacknowledged."""
    for _ in range(count):
        while True:
            info = client.publish(topic_name, payload, qos)
            if info.rc == 0:
                break
            time.sleep(0.001)  # MQTT_ERR_QUEUE_SIZE: wait for acknowledgements
    deadline = time.monotonic() + 60
    while client.want_write() and time.monotonic() < deadline:
        time.sleep(0.005)


def _broker_point(pid: int, identity: TLSIdentity, endpoint: Endpoint, root: str, qos: int, payload_bytes: int,
                  subscribers: int, messages: int) -> ModelBrokerPoint:
    name = f"cal-{qos}-{payload_bytes}-{subscribers}"
    subject = topic(root, "BenchFloodProfile", name)
    counter = _Counter(identity, endpoint, f"{name}-sub", subject, qos, subscribers)
    publisher = connect(f"{name}-pub-{time.monotonic_ns() % 10**9}", identity, endpoint, exactly_once=qos == 2)
    try:
        body = b"c" * payload_bytes
        _publish(publisher, subject, body, qos, 50)  # warm-up: sessions and buffers allocated
        counter.wait(50 * subscribers, 10)
        with counter.lock:
            counter.count = 0
        before = _cpu_s(pid)
        _publish(publisher, subject, body, qos, messages)
        # Deliveries still on their way when the clock is read would be work the broker has yet to do:
        # wait for every one (on a loaded machine the subscribers' Python threads lag the C broker).
        delivered = counter.wait(messages * subscribers, max(60.0, messages * subscribers * 0.005))
        cpu = _cpu_s(pid) - before
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        counter.close()
    return ModelBrokerPoint(qos=qos, payload_bytes=payload_bytes, subscribers=subscribers, messages=messages,
                            delivered=delivered, cpu_us_per_message=round(cpu / messages * 1e6, 3))


def _flood_costs(procs: Processes, pki: PKI, identity: TLSIdentity, endpoint: Endpoint, root: str, work: Path,
                 rate: float = 3000.0, seconds: float = 5.0) -> tuple[float, float, float, float]:
    """A QoS 0, 256-byte ``mosquitto_pub`` flood of ``rate`` msg/s (two publishers, ``-d`` as the benchmarks
    count them) into a ``mosquitto_sub``: (publisher us per message sent, subscriber us per message
    received, sent/s, received/s)."""
    log = work / "flood-sub.out"
    subscriber = start_flood_subscriber(procs, "calibration-flood-sub", endpoint, identity, root, 0, log)
    flood = start_flood(procs, pki, endpoint, root, rate, seconds + 3, 256, 0, 2, {}, "calibration", count_sent=True)
    try:
        time.sleep(1.5)  # connected and running
        offsets: dict[int, tuple[int, int]] = {}
        sent0, got0 = sent_count(flood, offsets), file_size(log)
        pub0, sub0, t0 = sum(_cpu_s(r.pid) for r in flood), _cpu_s(subscriber.pid), time.monotonic()
        time.sleep(seconds)
        sent, got = sent_count(flood, offsets) - sent0, (file_size(log) - got0) // 2  # "x\n" a message
        elapsed = time.monotonic() - t0
        pub, sub = sum(_cpu_s(r.pid) for r in flood) - pub0, _cpu_s(subscriber.pid) - sub0
    finally:
        procs.stop([*flood, subscriber])
    if sent < 100 or got < 100:
        raise TestbedError(f"calibration: the flood sent {sent} and delivered {got} messages in {seconds:g} s; see the "
                           f"logs in {procs.logs}")
    return round(pub / sent * 1e6, 2), round(sub / got * 1e6, 2), round(sent / elapsed, 1), round(got / elapsed, 1)


FLEET_INTERVALS_S: Final = (0.5, 0.125)  # 400 meters: 800 and 3,200 readings/s, the two ends of the cost curve


def _client_costs(procs: Processes, pki: PKI, identity: TLSIdentity, endpoint: Endpoint, root: str, certs: Path,
                  work: Path, progress: Callable[[str], None], meters: int = 400,
                  seconds: float = 10.0) -> ModelClientCosts:
    publisher, subscriber, sent, got = _flood_costs(procs, pki, identity, endpoint, root, work)
    progress(f"  flood clients: mosquitto_pub {publisher} us per message sent ({sent:.0f}/s), mosquitto_sub "
             f"{subscriber} us per message received ({got:.0f}/s)")
    fleet_curve: list[list[float]] = []
    dms_curve: list[list[float]] = []
    for interval_s in FLEET_INTERVALS_S:  # a busier process spends less per message (its loop batches)
        point = steady_point(BRIDGE_TOPOLOGY, certs, meters, interval_s, seconds, lambda line: None)
        published = point["published_per_s"] * point["duration_s"]
        received = point["delivered_per_s"] * point["duration_s"]
        if published < 100 or received < 100:
            raise TestbedError(f"calibration: the fleet published {published:.0f} and the subscriber received "
                               f"{received:.0f} readings in {seconds:g} s; too few to measure")
        fleet = round(point["cpu"]["fleets"]["seconds"] / published * 1e6, 2)
        dms = round(point["cpu"]["harness"]["seconds"] / received * 1e6, 2)
        fleet_curve.append([point["published_per_s"], fleet])
        dms_curve.append([point["delivered_per_s"], dms])
        progress(f"  fleet: {fleet} us per reading published ({meters} meters every {interval_s:g} s, gmqtt, "
                 f"{point['published_per_s']:.0f}/s); the DMS-side subscriber {dms} us per reading received (paho)")
    return ModelClientCosts(
        fleet_us_per_reading=fleet_curve[0][1], subscriber_us_per_message=dms_curve[0][1],
        flood_publisher_us_per_message=publisher, flood_subscriber_us_per_message=subscriber,
        fleet_curve=fleet_curve, subscriber_curve=dms_curve,
        conditions=f"fleet: one substation of {BRIDGE_TOPOLOGY.name} with {meters} meters every "
                   f"{' and '.join(f'{i:g}' for i in FLEET_INTERVALS_S)} s for {seconds:g} s each (the curves: "
                   f"[readings/s, us]; the flat figures: the first), CPU seconds of the fleet process / readings "
                   f"published and of this process (the subscriber) / readings received; flood: 2 mosquitto_pub -d "
                   f"at {sent:.0f} msg/s, QoS 0, 256 B, into one mosquitto_sub, for 5 s")


def _fit(points: list[ModelBrokerPoint]) -> ModelBrokerFit:
    """Least squares per QoS: cost = base + per_subscriber x (subscribers - 1) + per_kib x KiB x subscribers
    (each delivery encrypts and writes the payload again; a payload term independent of the deliveries
    left the QoS 0 points 36 % off, this one fits every point within 3 %)."""
    fit = ModelBrokerFit(base_us={}, per_subscriber_us={}, per_kib_us={})
    for q in QOS_KEYS:
        rows = [p for p in points if p["qos"] == int(q)]
        a = numpy.array([[1.0, p["subscribers"] - 1, p["payload_bytes"] / 1024 * p["subscribers"]] for p in rows])
        b = numpy.array([p["cpu_us_per_message"] for p in rows])
        coef = numpy.linalg.lstsq(a, b, rcond=None)[0]
        fit["base_us"][q] = round(float(coef[0]), 3)
        fit["per_subscriber_us"][q] = round(float(coef[1]), 3)
        fit["per_kib_us"][q] = round(float(coef[2]), 3)
    return fit


def _round_trips(procs: Processes, pki: PKI, identity: TLSIdentity, endpoint: Endpoint, root: str,
                 count: int) -> list[float]:
    """Command round trips (ms) on the idle broker through the benchmarks' echo responder (its own
    process, as ``fmb bench prioritization`` runs it): one command at a time, QoS 1."""
    ready = procs.logs / "responder.ready"
    ready.unlink(missing_ok=True)
    responder = procs.start("cal-responder", [sys.executable, "-m", "testbed.bench.echo"], {
        "FMB_CONTROL": f"{endpoint.host}:{endpoint.port}", "FMB_CA": str(pki.ca_cert), "FMB_CERT": str(identity.cert),
        "FMB_KEY": str(identity.key), "FMB_ROOT": root, "FMB_QOS": "1", "FMB_DEVICE_ID": "cal-responder",
        "FMB_READY_FILE": str(ready)})
    wait_until(ready.exists, 30, interval_s=0.05, what="the echo responder")
    acked = threading.Event()
    subscribed = threading.Event()

    def on_connect(c: Any) -> None:
        c.on_subscribe = lambda *a: subscribed.set()
        c.subscribe(topic(root, "BenchAckProfile", "cal-responder"), 1)

    commander = connect(f"cal-commander-{time.monotonic_ns() % 10**9}", identity, endpoint,
                        on_message=lambda c, u, m: acked.set(), on_connect=on_connect)
    trips: list[float] = []
    try:
        if not subscribed.wait(10):
            raise TestbedError("calibration: the commander could not subscribe to acknowledgements within 10 s")
        subject = topic(root, "BenchCommandProfile", "cal-responder")
        any_back = False
        for i in range(count + 20):  # the first 20 warm up
            acked.clear()
            start = time.perf_counter_ns()
            commander.publish(subject, f"{i},{'c' * 64}".encode(), 1)
            came_back = acked.wait(5)
            any_back = any_back or came_back
            if came_back and i >= 20:
                trips.append((time.perf_counter_ns() - start) / 1e6)
            elif i == 2 and not any_back:  # three commands unanswered: the responder is not there
                raise TestbedError("calibration: the echo responder answered none of 3 commands within 5 s each; "
                                   f"see {procs.logs}")
            time.sleep(0.02)
    finally:
        commander.disconnect()
        commander.loop_stop()
        procs.stop([responder])
    return trips


def _handshakes(pid: int, identity: TLSIdentity, endpoint: Endpoint, count: int) -> float:
    """Broker CPU per mutual-TLS connection: CONNECT, CONNACK and DISCONNECT, one after another."""
    before = _cpu_s(pid)
    for i in range(count):
        client = connect(f"cal-hs-{i}-{time.monotonic_ns() % 10**9}", identity, endpoint)
        client.disconnect()
        client.loop_stop()
    return round((_cpu_s(pid) - before) / count * 1e6, 1)


def _bridge_point(topology: Topology, pki: PKI, procs: Processes, work: Path, messages: int) -> ModelBridgePoint:
    """A substation meter's readings over the topology's real bridge to the data centre's delivery broker."""
    site = topology.substations[0].name
    datacentre = next(s for s in topology.sites if s.bridge_to is None).name
    dc_record, dc_end = start_broker(procs, topology, topology.broker(f"{datacentre}-delivery"), pki,
                                     work / f"{datacentre}-delivery")
    edge_record, edge_end = start_broker(procs, topology, topology.broker(f"{site}-delivery"), pki,
                                         work / f"{site}-delivery")
    meter = next(d for d in topology.devices_at(site) if d.role == "meter")
    paths = pki.client("recorder")
    counter = _Counter(TLSIdentity(pki.ca_cert, paths.cert, paths.key), dc_end, "cal-bridge-sub",
                       topic(topology.root, "MeterReadingProfile", "+"), topology.qos, 1)
    mpaths = pki.client(meter.id)
    publisher = connect(meter.id, TLSIdentity(pki.ca_cert, mpaths.cert, mpaths.key), edge_end)
    subject = topic(topology.root, "MeterReadingProfile", meter.id)
    body = b"r" * PAYLOADS[0]
    try:
        # The bridge connects on its own schedule: wait until a reading crosses.
        def crossed() -> bool:
            _publish(publisher, subject, body, topology.qos, 1)
            return counter.wait(1, 0.5) >= 1
        wait_until(crossed, 30, interval_s=0.2, what="the first reading over the bridge")
        _publish(publisher, subject, body, topology.qos, 50)
        counter.wait(51, 10)
        with counter.lock:
            counter.count = 0
        edge0, dc0 = _cpu_s(edge_record.pid), _cpu_s(dc_record.pid)
        _publish(publisher, subject, body, topology.qos, messages)
        delivered = counter.wait(messages, 60)
        edge_us = (_cpu_s(edge_record.pid) - edge0) / messages * 1e6
        dc_us = (_cpu_s(dc_record.pid) - dc0) / messages * 1e6
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        counter.close()
        procs.stop([edge_record, dc_record])
    return ModelBridgePoint(qos=topology.qos, payload_bytes=PAYLOADS[0], messages=messages, delivered=delivered,
                            edge_cpu_us_per_message=round(edge_us, 3), datacentre_cpu_us_per_message=round(dc_us, 3))


def device_times(latency: LatencyResult, broker_us: Callable[[int, int], float]) -> tuple[
        dict[str, float], float, dict[str, float], dict[str, Percentiles]]:
    """From a latency benchmark: (client overhead ms by QoS, the one-hop spread as a coefficient of
    variation, each device role's own processing ms). A step's hop crosses two brokers and one device:
    the device's time is the hop's median less two one-hop medians."""
    overhead: dict[str, float] = {}
    one_hops: dict[str, Percentiles] = {}
    devices: dict[str, list[float]] = {}
    cvs: list[float] = []
    for row in latency["by_qos"]:
        qos = row["qos"]
        one_hop = row["one_hop_ms"].get("p50", row["one_hop_ms"]["mean"])
        overhead[str(qos)] = round(max(one_hop - broker_us(qos, row["one_hop"]["payload_bytes"]) / 1000, 0.0), 4)
        one_hops[str(qos)] = row["one_hop_ms"]
        samples = row["samples"]["one_hop_ms"]
        if len(samples) > 1:
            cvs.append(statistics.pstdev(samples) / statistics.fmean(samples))
        for step in row["steps"]:
            hop = step["hop_ms"].get("p50")
            if step["traversals"] == 2 and hop is not None:
                role = step["device"].rsplit("-", 1)[0]
                devices.setdefault(role, []).append(max(hop - 2 * one_hop, 0.0))
    for q in QOS_KEYS:  # a latency run without a level: the nearest level measured
        nearest = min(overhead, key=lambda k: abs(int(k) - int(q)))
        overhead.setdefault(q, overhead[nearest])
        one_hops.setdefault(q, one_hops[nearest])
    device_ms = {role: round(statistics.median(v), 4) for role, v in sorted(devices.items())}
    return overhead, round(statistics.median(cvs), 3) if cvs else 0.0, device_ms, one_hops


def calibrate(certs: Path, work: Path, latency: LatencyResult, latency_source: str, messages: int = 3000,
              handshakes: int = 40, progress: Callable[[str], None] = print) -> ModelCalibration:
    """Measure everything the model needs on brokers of our own (free ports, mutual TLS); stops them all."""
    if messages < 100 or handshakes < 5:
        raise TestbedError(f"calibration: {messages} messages, {handshakes} handshakes per point; give at least "
                           "100 and 5 (fewer are below the CPU clock's resolution)")
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    procs = Processes(work)
    topology = bench_topology("fmb", 1, (free_port(), free_port()))
    pki = PKI(certs)
    pki.init({b.name: [] for b in topology.brokers}, ["bench"])
    paths = pki.client("bench")
    identity = TLSIdentity(pki.ca_cert, paths.cert, paths.key)
    points: list[ModelBrokerPoint] = []
    try:
        record, endpoint = start_broker(procs, topology, topology.broker("bench-delivery"), pki, work / "broker")
        for qos in (0, 1, 2):
            for payload in PAYLOADS:
                for subs in SUBSCRIBERS:
                    point = _broker_point(record.pid, identity, endpoint, topology.root, qos, payload, subs, messages)
                    progress(f"  broker QoS {qos}, {payload} B, {subs} subscriber(s): "
                             f"{point['cpu_us_per_message']} us CPU per message ({point['delivered']} delivered)")
                    points.append(point)
        handshake = _handshakes(record.pid, identity, endpoint, handshakes)
        progress(f"  TLS handshake: {handshake} us broker CPU per connection")
        clients = _client_costs(procs, pki, identity, endpoint, topology.root, certs, work, progress)
        # Commands are control-plane profiles: the round trip runs on the site's control broker.
        _, control = start_broker(procs, topology, topology.broker("bench-control"), pki, work / "control")
        trips = _round_trips(procs, pki, identity, control, topology.root, 200)
        if not trips:
            raise TestbedError("calibration: no command came back from the echo responder; see its log in "
                               f"{procs.logs}")
        round_trip = rounded(percentiles(trips), 4)
        progress(f"  control round trip through the echo responder: p50 {round_trip.get('p50')} ms")
        procs.stop()
        bridged = load_topology(BRIDGE_TOPOLOGY).with_free_ports()
        bridge_pki = ensure_pki(bridged, certs)
        bridge = _bridge_point(bridged, bridge_pki, procs, work, messages)
        progress(f"  bridge: {bridge['edge_cpu_us_per_message']} us at the edge broker, "
                 f"{bridge['datacentre_cpu_us_per_message']} us at the data centre's per reading")
    finally:
        procs.stop()
    return derive(points, [bridge], handshake, round_trip, latency, {
        "messages_per_point": messages, "handshakes": handshakes, "latency_fixture": latency_source,
        "client": "paho-mqtt, MQTT v5, TCP_NODELAY, mutual TLS; publisher and subscribers in this process",
        "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.monotonic() - started, 1)}, environment(topology, "TLSv1.3", "local"), clients)


def derive(points: list[ModelBrokerPoint], bridge: list[ModelBridgePoint], handshake_us: float,
           round_trip: Percentiles, latency: LatencyResult, conditions: ModelCalibrationConditions,
           env: Environment, clients: ModelClientCosts | None = None) -> ModelCalibration:
    """The calibration document from what was measured: the broker fit, and what the latency result adds."""
    fit = _fit(points)

    def broker_us(qos: int, payload: int) -> float:
        q = str(qos)
        return fit["base_us"][q] + fit["per_kib_us"][q] * payload / 1024

    overhead, cv, device_ms, one_hops = device_times(latency, broker_us)
    # The echo responder's own time: the round trip less its two one-hop traversals (broker and client stacks).
    hop_ms = fit["base_us"]["1"] / 1000 + overhead["1"]
    device_ms["responder"] = round(max(round_trip.get("p50", 0.0) - 2 * hop_ms, 0.0), 4)
    result = ModelCalibration(
        schema=CALIBRATION_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        conditions=conditions, broker_points=points, broker_fit=fit, bridge=bridge, handshake_us=handshake_us,
        round_trip_ms=round_trip, client_overhead_ms=overhead, one_hop_ms=one_hops, service_cv=cv,
        device_ms=device_ms, environment=env)
    if clients is not None:
        result["clients"] = clients
    return result
