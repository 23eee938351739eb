"""The bus as a capacity model: a topology's brokers, bridges, fleets and commands on the simpy engine.

The shape is the testbed's utility topology: a data centre with a delivery and a control broker
(one broker for both with ``control=shared``) and ``substations`` edge sites, each with its own
pair bridged to the data centre over a WAN link each way. Every substation's ``meters`` read every
``interval_s`` at random phases (one process per fleet); the DMS commands a random substation
``command_rate`` times a second and the command's acknowledgement comes back (the round trip the
prioritization and scale benchmarks time). ``direct=true`` connects the meters straight to the data
centre's delivery broker instead (the "one broker pair" of the issue's questions). Faults: a broker
restart (its clients reconnect with full-jitter or fixed exponential backoff, each connection a TLS
handshake on the broker's one thread, a handshake that waits past ``connect_timeout_s`` is abandoned
after the broker has started it and tried again), a flood onto the data centre's delivery broker,
a partition of every WAN link.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import simpy

from testbed.core.errors import TestbedError
from testbed.core.results import ModelBrokerLoad, ModelCalibration, ModelFlow, ModelRun, PercentilesIfAny
from testbed.core.stats import percentiles, rounded
from testbed.core.topology import Topology
from testbed.model.calibration import Costs
from testbed.model.sim import Broker, Hop, Host, Link, Recorder, Route, periodic_fleet, poisson_source

__all__ = ["RUN_SCHEMA", "Settings", "from_topology", "parse_settings", "run_model"]

RUN_SCHEMA: Final = "fmb.model-run/1"
# Bytes a message costs on a WAN link besides its payload and topic: MQTT fixed header and v5 properties
# (~10), a TLS 1.3 record (22), TCP/IP headers (40), and the QoS 1 acknowledgement's share the other way
# (~70 on the wire). An estimate from the protocols' header sizes, not a measurement.
WIRE_OVERHEAD_BYTES: Final = 140
COMMAND_BYTES: Final = 420  # a signed command: JSON body, Ed25519 signature, trace context (bench-wan's order)


@dataclass(frozen=True)
class Settings:
    """What ``fmb model run --set KEY=VALUE`` can change; times in seconds, rates per second."""

    substations: int = 2
    meters: int = 20  # per substation
    interval_s: float = 60.0
    duration_s: float = 30.0
    warmup_s: float = 5.0
    qos: int = 1
    payload_bytes: int = 150
    command_rate: float = 20.0
    command_qos: int = 1
    control: str = "segregated"  # or "shared": the control plane on the delivery brokers
    direct: bool = False  # meters connect to the data centre's delivery broker, not a substation's
    dc_subscribers: int = 1  # deliveries of each reading at the data centre (the DMS; a recorder adds one)
    wan_bps: float = 0.0  # each substation's WAN link, each way (0: not a bottleneck, as on loopback)
    wan_delay_s: float = 0.0
    bridge_queue: int = 10000  # messages a bridge holds for a partitioned link (max_queued_messages)
    flood_rate: float = 0.0  # extra messages/s onto the data centre's delivery broker
    flood_payload_bytes: int = 256
    flood_qos: int = 0
    restart: str = ""  # a broker to restart: "dc-delivery", "dc-control" or "sub-001-delivery"...
    restart_at_s: float = 10.0
    down_s: float = 1.0
    backoff: str = "jitter"  # "jitter" (full jitter) or "fixed" (exponential, the same for every client)
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 20.0
    connect_timeout_s: float = 10.0
    accept_backlog: int = 100  # connections the listener queues before the kernel drops new SYNs (listen(fd, 100))
    storm_cohort: int = 1  # clients that reconnect as one (1: each its own; more: a storm of millions in seconds)
    storm_limit_s: float = 3600.0  # stop a storm that has not ended this long after the restart
    storm_readings: bool = True  # simulate the reconnected meters' readings as messages (else as a fluid load only)
    partition_at_s: float = 0.0
    partition_s: float = 0.0
    slowdown: float = 1.0  # every broker's work x this: CPU contention (1 = a core to itself)
    cores: int = 0  # 0: every process a core of its own; N: brokers and clients share one machine's N cores
    seed: int = 1

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("substations", self.substations >= 1, "1 or more"), ("meters", self.meters >= 0, "0 or more"),
            ("interval_s", self.interval_s > 0, "seconds > 0"), ("duration_s", self.duration_s > 0, "seconds > 0"),
            ("warmup_s", 0 <= self.warmup_s < self.duration_s, "seconds >= 0 and below duration_s"),
            ("qos", self.qos in (0, 1, 2), "0, 1 or 2"), ("command_qos", self.command_qos in (0, 1, 2), "0, 1 or 2"),
            ("flood_qos", self.flood_qos in (0, 1, 2), "0, 1 or 2"),
            ("payload_bytes", 0 <= self.payload_bytes <= 1 << 20, "0 to 1 MiB"),
            ("flood_payload_bytes", 0 <= self.flood_payload_bytes <= 1 << 20, "0 to 1 MiB"),
            ("command_rate", self.command_rate >= 0, "commands/s >= 0"),
            ("control", self.control in ("segregated", "shared"), "segregated or shared"),
            ("dc_subscribers", self.dc_subscribers >= 1, "1 or more"),
            ("wan_bps", self.wan_bps >= 0, "bit/s >= 0 (0: unlimited)"), ("wan_delay_s", self.wan_delay_s >= 0, ">= 0"),
            ("bridge_queue", self.bridge_queue >= 1, "1 or more"), ("flood_rate", self.flood_rate >= 0, ">= 0"),
            ("down_s", self.down_s >= 0, ">= 0"), ("restart_at_s", self.restart_at_s >= 0, ">= 0"),
            ("backoff", self.backoff in ("jitter", "fixed"), "jitter or fixed"),
            ("backoff_base_s", self.backoff_base_s > 0, "> 0"), ("backoff_cap_s", self.backoff_cap_s > 0, "> 0"),
            ("connect_timeout_s", self.connect_timeout_s > 0, "> 0"),
            ("accept_backlog", self.accept_backlog >= 1, "1 or more"), ("storm_cohort", self.storm_cohort >= 1, ">= 1"),
            ("storm_limit_s", self.storm_limit_s > 0, "> 0"),
            ("partition_s", self.partition_s >= 0, ">= 0"), ("slowdown", self.slowdown >= 1, "1 or more"),
            ("cores", 0 <= self.cores <= 1024, "0 (a core per process) to 1024"),
        ]
        for key, fine, want in checks:
            if not fine:
                raise TestbedError(f"model setting {key} = {getattr(self, key)!r}; give {want}")
        if self.meters * self.substations > 5_000_000:
            raise TestbedError(f"model: {self.meters * self.substations} meters; the model holds at most 5,000,000")


_FIELDS: Final = {f.name: f.type for f in dataclasses.fields(Settings)}


def _value(key: str, text: str, kind: Any) -> Any:
    try:
        if kind in ("bool", bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind in ("int", int):
            return int(text)
        if kind in ("float", float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        return text
    except ValueError:
        raise TestbedError(f"--set {key}={text}: not a {kind}; e.g. --set {key}="
                           f"{getattr(Settings(), key)}") from None


def parse_settings(pairs: Sequence[str], base: Settings | None = None) -> Settings:
    """``KEY=VALUE`` strings over ``base`` (the defaults); each mistake is one line naming the fix."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TestbedError(f"--set {pair!r}: give KEY=VALUE, e.g. --set substations=300")
        if key not in _FIELDS:
            raise TestbedError(f"--set {key}: no such setting; known: {', '.join(sorted(_FIELDS))}")
        changes[key] = _value(key, text.strip(), _FIELDS[key])
    return dataclasses.replace(base or Settings(), **changes)


def from_topology(topology: Topology) -> Settings:
    """The settings a topology describes: its substations, their meters and reading period, its QoS."""
    subs = topology.substations
    if not subs:  # Appendix A: one field site with one meter
        feeders = topology.feeders
        return Settings(substations=1, meters=sum(len(f.meters) for f in feeders) or 1, qos=topology.qos,
                        interval_s=feeders[0].meter_period_s if feeders else 5.0)
    meters = [sum(1 for d in topology.devices_at(s.name) if d.role == "meter") for s in subs]
    periods = [f.meter_period_s for f in topology.feeders]
    return Settings(substations=len(subs), meters=max(meters), qos=topology.qos,
                    interval_s=periods[0] if periods else 60.0)


class _Storm:
    """Clients of a restarted broker reconnecting: each attempt a TLS handshake on the broker's thread.

    While the broker is down an attempt is refused at once. Up, the listener queues at most
    ``accept_backlog`` connections; past that the kernel drops the SYN, the client's kernel sends it
    again 1, 2, 4 ... s later (Linux's SYN retransmission) until ``connect_timeout_s``, then the client
    backs off. A queued handshake that waits past ``connect_timeout_s`` is abandoned by its client, but
    the broker still does it (it reads the ClientHello before it sees the close): wasted work.
    ``storm_cohort`` clients move as one (one attempt, that many handshakes of work), so that a storm of
    hundreds of thousands takes seconds to simulate; the backoff draws are then per cohort.
    """

    def __init__(self, env: simpy.Environment, broker: Broker, clients: int, s: Settings, costs: Costs,
                 rng: random.Random, background: Callable[[], float]) -> None:
        self.env, self.broker, self.s, self.costs, self.rng, self.background = env, broker, s, costs, rng, background
        self.clients, self.cohort = clients, s.storm_cohort
        self.connected = bytearray(math.ceil(clients / s.storm_cohort))  # per cohort, 1: connected
        self.remaining = clients
        self.attempts = self.refused = self.dropped = self.abandoned = 0
        self.reconnect_s: list[float] = []
        self.start = 0.0
        self.done = env.event()
        self._pending: deque[float] = deque()  # completion times of the handshakes the listener holds

    def strike(self) -> None:
        self.start = self.env.now
        self.connected[:] = bytes(len(self.connected))
        self.remaining = self.clients
        self.broker.restart(self.s.down_s)
        for unit in range(len(self.connected)):
            self._later(unit, 0, 0.0)

    def size(self, unit: int) -> int:
        return min(self.cohort, self.clients - unit * self.cohort)

    def _delay(self, attempt: int) -> float:
        ceiling = min(self.s.backoff_cap_s, self.s.backoff_base_s * 2 ** min(attempt, 30))
        return self.rng.uniform(0, ceiling) if self.s.backoff == "jitter" else ceiling

    def _later(self, unit: int, attempt: int, wait: float) -> None:
        event = self.env.timeout(wait + self._delay(attempt))
        event.callbacks.append(lambda _e: self._attempt(unit, attempt))

    def _attempt(self, unit: int, attempt: int, syn: int = 0, began: float | None = None) -> None:
        now, size = self.env.now, self.size(unit)
        began = now if began is None else began
        if syn == 0:
            self.attempts += size
        pending = self._pending
        while pending and pending[0] <= now:
            pending.popleft()
        if now >= self.broker.down_until and len(pending) * self.cohort >= max(self.s.accept_backlog, self.cohort):
            self.dropped += size  # listen queue full: the SYN is dropped
            retry = float(2 ** syn)
            if now + retry - began < self.s.connect_timeout_s:
                event = self.env.timeout(retry)
                event.callbacks.append(lambda _e: self._attempt(unit, attempt, syn + 1, began))
            else:
                self.abandoned += size
                self._later(unit, attempt + 1, max(began + self.s.connect_timeout_s - now, 0.0))
            return
        # The readings of the clients already back take their share of the thread (a fluid approximation:
        # a handshake's work stretched by 1 / (1 - their utilisation)).
        busy = min(self.background(), 0.95)
        done = self.broker.take(self.costs.draw(self.costs.handshake_mean_s()) * size / (1 - busy))
        if done is None:  # still down: connection refused at once
            self.refused += size
            self._later(unit, attempt + 1, 0.0)
            return
        pending.append(done)
        if done - began > self.s.connect_timeout_s:  # gave up; the broker does the handshake anyway
            self.abandoned += size
            self._later(unit, attempt + 1, began + self.s.connect_timeout_s - now)
        else:
            event = self.env.timeout(done - now)
            event.callbacks.append(lambda _e: self._connected(unit))

    def _connected(self, unit: int) -> None:
        self.connected[unit] = 1
        self.reconnect_s.append(self.env.now - self.start)
        self.remaining -= self.size(unit)
        if self.remaining == 0 and not self.done.triggered:
            self.done.succeed()


def _flow(name: str, recorder: Recorder) -> ModelFlow:
    lat = recorder.latencies[name]
    stats: PercentilesIfAny = {}
    if lat:
        stats = PercentilesIfAny(**rounded(percentiles([x * 1000 for x in lat], (50, 90, 99)), 3))
    return ModelFlow(flow=name, sent=recorder.sent[name], delivered=len(lat), lost=recorder.lost[name],
                     latency_ms=stats)


def run_model(s: Settings, calibration: ModelCalibration, topology: str = "(settings)",
              calibration_name: str = "") -> ModelRun:
    """Simulate ``s.duration_s`` seconds (past a storm's end, when there is one) and report the metrics."""
    wall = time.perf_counter()
    env = simpy.Environment()
    rng = random.Random(s.seed)
    costs = Costs(calibration, rng)
    rec = Recorder(warmup_s=s.warmup_s, end_s=s.duration_s if not s.restart else float("inf"))
    # One machine's cores shared by every process, clients included: the meters' fleets and the DMS
    # side cost CPU per reading too (calibrated), and each is a single thread of its own.
    host = Host("machine", s.cores) if s.cores else None
    fleet_s = costs.client_mean_s("fleet", s.meters / s.interval_s) if host else 0.0
    dms_side = Broker(env, "dms-side", host=host) if host else None
    dc_d = Broker(env, "dc-delivery", s.slowdown, host)
    dc_c = dc_d if s.control == "shared" else Broker(env, "dc-control", s.slowdown, host)
    brokers = [dc_d] + ([] if dc_c is dc_d else [dc_c])
    reading_topic = 45  # fmb/metermodule/MeterReadingProfile/sub-001-f1-m0001
    reading_wire = s.payload_bytes + reading_topic + WIRE_OVERHEAD_BYTES
    edge_s, dc_s = costs.bridge_mean_s(s.qos, s.payload_bytes)
    dc_s += costs.message_mean_s(s.qos, s.payload_bytes, s.dc_subscribers) - costs.message_mean_s(
        s.qos, s.payload_bytes, 1)
    cmd_s = costs.message_mean_s(s.command_qos, COMMAND_BYTES, 1)
    slow = s.slowdown

    def reading_clients() -> float:
        return costs.clients_draw_s(s.qos, s.payload_bytes) * slow

    def command_ends() -> float:  # the DMS's and the device's stacks and the device's answer, as calibrated
        return costs.round_trip_rest_draw_s(s.command_qos, COMMAND_BYTES) * slow
    links: list[Link] = []
    readings: list[Route] = []
    commands: list[Route] = []
    draw = costs.draw
    for k in range(s.substations):
        name = f"sub-{k + 1:03d}"
        edge_d = Broker(env, f"{name}-delivery", s.slowdown, host)
        edge_c = edge_d if s.control == "shared" else Broker(env, f"{name}-control", s.slowdown, host)
        brokers += [edge_d] + ([] if edge_c is edge_d else [edge_c])
        up = Link(env, f"{name}-uplink", s.wan_bps, s.wan_delay_s, s.bridge_queue)
        down = Link(env, f"{name}-downlink", s.wan_bps, s.wan_delay_s, s.bridge_queue)
        links += [up, down]
        reading_hops = ([Hop(broker=dc_d, service_s=costs.message_mean_s(s.qos, s.payload_bytes, s.dc_subscribers))]
                        if s.direct else
                        [Hop(broker=edge_d, service_s=edge_s), Hop(link=up, size_bytes=reading_wire),
                         Hop(broker=dc_d, service_s=dc_s)])
        if host is not None and dms_side is not None:
            fleet = Broker(env, f"{name}-fleet", host=host)
            reading_hops = [Hop(broker=fleet, service_s=fleet_s), *reading_hops,
                            Hop(broker=dms_side, service_s=costs.client_mean_s(
                                "subscriber", s.substations * s.meters / s.interval_s))]
        readings.append(Route(env, "reading", reading_hops, rec, 0.0, draw, reading_clients))
        cmd_wire = COMMAND_BYTES + 40 + WIRE_OVERHEAD_BYTES
        commands.append(Route(env, "control round trip", [
            Hop(broker=dc_c, service_s=cmd_s), Hop(link=down, size_bytes=cmd_wire),
            Hop(broker=edge_c, service_s=cmd_s),
            Hop(broker=edge_c, service_s=cmd_s), Hop(link=up, size_bytes=cmd_wire),
            Hop(broker=dc_c, service_s=cmd_s)], rec, 0.0, draw, command_ends))
    storm: _Storm | None = None
    restart_target = next((b for b in brokers if b.name == s.restart), None) if s.restart else None
    if s.restart and restart_target is None:
        raise TestbedError(f"model setting restart = {s.restart!r}: no such broker; give dc-delivery, dc-control or "
                           f"sub-001-delivery ... sub-{s.substations:03d}-delivery")
    full_rho = s.substations * s.meters / s.interval_s * dc_s
    if restart_target is not None:
        if restart_target is dc_d and s.direct:
            clients = s.meters * s.substations
        elif restart_target.name.startswith("sub-") and restart_target.name.endswith("-delivery"):
            clients = s.meters
        else:  # the data centre behind substation brokers: only the bridges reconnect
            clients = s.substations if restart_target is not dc_c or s.control == "segregated" else 2 * s.substations
        meters_on = restart_target is dc_d and s.direct or restart_target.name.endswith("-delivery") and \
            restart_target is not dc_d
        storm = _Storm(env, restart_target, clients, s, costs, rng,
                       lambda: full_rho * (1 - storm.remaining / clients) if storm and meters_on else 0.0)

        def restart() -> Any:
            yield env.timeout(s.restart_at_s)
            assert storm is not None
            storm.strike()
        env.process(restart())
    until = s.duration_s if storm is None else 1e12
    messages = [0]
    for k in range(s.substations):
        route = readings[k]
        gate = storm is not None and (s.direct or storm.broker.name == f"sub-{k + 1:03d}-delivery")
        if gate and not s.storm_readings:
            continue  # their load on the broker enters the storm as a fluid (_Storm.background)

        def send(meter: int, route: Route = route, gate: bool = gate, offset: int = k * s.meters if s.direct else 0
                 ) -> None:
            if gate and storm is not None and storm.start and not storm.connected[(meter + offset) // s.storm_cohort]:
                return
            messages[0] += 1
            route.send()
        periodic_fleet(env, s.meters, s.interval_s, send, rng, until)

    def command() -> None:
        messages[0] += 1
        commands[rng.randrange(s.substations)].send()
    env.process(poisson_source(env, s.command_rate, command, rng, until))
    if s.flood_rate > 0:
        flood_hops = [Hop(broker=dc_d, service_s=costs.message_mean_s(s.flood_qos, s.flood_payload_bytes, 1))]
        if host is not None:  # its publisher and its subscriber on the same cores
            flood_hops = [Hop(broker=Broker(env, "flood-publisher", host=host),
                              service_s=costs.client_mean_s("flood_publisher")), *flood_hops,
                          Hop(broker=Broker(env, "flood-subscriber", host=host),
                              service_s=costs.client_mean_s("flood_subscriber"))]
        flood = Route(env, "flood", flood_hops, rec, 0.0, draw, lambda: costs.clients_draw_s(s.flood_qos) * slow)

        def flood_one() -> None:
            messages[0] += 1
            flood.send()
        env.process(poisson_source(env, s.flood_rate, flood_one, rng, until))
    if s.partition_s > 0:
        def partition() -> Any:
            yield env.timeout(s.partition_at_s)
            for link in links:
                link.partition(s.partition_s)
        env.process(partition())
    if storm is None:
        env.run(until=s.duration_s)
        elapsed = s.duration_s
    else:
        limit = s.restart_at_s + s.storm_limit_s
        env.run(until=simpy.events.AnyOf(env, [storm.done, env.timeout(limit)]))
        elapsed = env.now
    measured = max(elapsed - s.warmup_s, 1e-9)
    result = ModelRun(
        schema=RUN_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), topology=topology,
        settings={k: v for k, v in dataclasses.asdict(s).items()}, simulated_s=round(elapsed, 3),
        messages=messages[0], wall_s=0.0, flows=[_flow(n, rec) for n in rec.latencies],
        brokers=[_load(b, elapsed) for b in _shown(brokers)],
        links=[{"link": link.name, "utilisation": round(link.utilisation(elapsed), 4), "bytes": link.bytes,
                "mbit_per_s": round(link.bytes * 8 / elapsed / 1e6, 4), "max_queue": link.max_queue,
                "dropped": link.dropped} for link in links[:4]],
        calibration=calibration_name)
    del measured
    if host is not None:
        result["host"] = {"cores": host.cores, "offered_load": round(host.offered_load(elapsed), 4)}
    if storm is not None:
        back = sorted(storm.reconnect_s)
        result["storm"] = {
            "broker": storm.broker.name, "clients": storm.clients, "cohort": storm.cohort, "backoff": s.backoff,
            "all_back": storm.remaining == 0, "recovery_s": round(back[-1], 3) if storm.remaining == 0 else None,
            "p50_back_s": round(back[len(back) // 2], 3) if back else None,
            "p99_back_s": round(back[min(len(back) - 1, int(len(back) * 0.99))], 3) if back else None,
            "attempts": storm.attempts, "refused": storm.refused, "dropped": storm.dropped,
            "abandoned": storm.abandoned, "back_by_limit": storm.clients - storm.remaining,
            "broker_utilisation": round(storm.broker.utilisation(max(elapsed - s.restart_at_s, 1e-9)), 4),
            "max_queue": storm.broker.max_queue}
    result["wall_s"] = round(time.perf_counter() - wall, 2)
    return result


def _shown(brokers: list[Broker]) -> list[Broker]:
    """The data centre's brokers and the first substation's: every substation's are alike."""
    return [b for b in brokers if b.name.startswith("dc-") or b.name.startswith("sub-001-")]


def _load(b: Broker, elapsed: float) -> ModelBrokerLoad:
    return ModelBrokerLoad(broker=b.name, utilisation=round(min(b.utilisation(elapsed), 1.0), 4),
                           offered_load=round(b.utilisation(elapsed), 4),
                           mean_in_system=round(b.mean_in_system(elapsed), 3), max_queue=b.max_queue, jobs=b.jobs,
                           dropped=b.dropped)
