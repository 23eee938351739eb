"""``fmb model validate``: the model's predictions against what the benchmarks measured here.

Each measured point is re-created in the model from the conditions its result file states (meters,
substations, interval, QoS, payload; flood rate, payloads and command rate), never from its outcome,
and the model's throughput, p50 and p99 are set against the measured ones: error = (predicted -
measured) / measured, targets 15 % (throughput, p50) and 25 % (p99). The calibration comes from
other runs (``fmb model calibrate``), so no validation point is fitted.

CPU contention is the one condition the brokers' own costs do not carry: the benchmarks run every
broker, client and load generator on the machine's two cores. With ``contention=True`` and a
calibration that has the clients' CPU costs (``fmb model calibrate`` measures them), the model gets
the machine (:class:`testbed.model.sim.Host`: its cores shared fairly by every process): the scale
run's fleets, brokers and DMS-side subscriber; the prioritization run's commander, responder,
brokers, flood publishers and flood subscriber, the priority configuration's two pinned sets of cores
as two hosts. The load generators are driven at what they really sent (``published_per_s`` of a
scale point, ``sent_rate`` of a prioritization step: the generator's behaviour, counted at the
generator, not the bus's outcome), and a flood publisher costs the CPU it was seen to use per message
sent at that step (``mosquitto_pub`` paces itself by spinning: its cost per message depends on the
rate asked). An older calibration without clients' costs, or a result without those counts, falls
back to the load-average slowdown (every broker's work x load / cores), and the rows say which.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import simpy

from testbed.core.errors import TestbedError
from testbed.core.results import ModelCalibration, ModelValidation, ModelValidationRow
from testbed.core.stats import percentiles
from testbed.model.bus import Settings, run_model
from testbed.model.calibration import Costs
from testbed.model.sim import Broker, Hop, Host, Recorder, Route, poisson_source

__all__ = ["TARGETS", "VALIDATION_SCHEMA", "validate"]

VALIDATION_SCHEMA: Final = "fmb.model-validation/1"
TARGETS: Final = {"throughput_per_s": 0.15, "p50_ms": 0.15, "p99_ms": 0.25}


def _read(path: Path, schema: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise TestbedError(f"validate: {path}: no such file; give a {schema} result") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TestbedError(f"validate: {path}: cannot read it as JSON ({e}); give a {schema} result") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise TestbedError(f"validate: {path}: schema {got!r}, not {schema!r}; give that benchmark's result file")
    return doc


@contextlib.contextmanager
def _fields_of(path: Path, schema: str) -> Iterator[None]:
    """A result file whose fields are missing or of the wrong type (edited, truncated, hostile) is one
    line naming the file, not a traceback from deep in the model."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise TestbedError(f"validate: {path}: a field is missing or of the wrong type ({type(e).__name__}: "
                           f"{e}); give the {schema} result the benchmark wrote") from None


def _row(bench: str, point: str, metric: str, measured: float | None,
         predicted: float | None) -> ModelValidationRow | None:
    if measured is None or predicted is None or measured <= 0:
        return None
    error = (predicted - measured) / measured
    return ModelValidationRow(benchmark=bench, point=point, metric=metric, measured=round(measured, 3),
                              predicted=round(predicted, 3), error=round(error, 4), target=TARGETS[metric],
                              met=abs(error) <= TARGETS[metric])


def _slowdown(conditions: dict[str, Any], cores: int | None, contention: bool) -> float:
    loads = [v[0] for k, v in conditions.items() if k.startswith("load_average") and isinstance(v, list) and v]
    if not contention or not loads or not cores:
        return 1.0
    return max(1.0, float(sum(loads)) / len(loads) / cores)


def _host_cores(doc: dict[str, Any], calibration: ModelCalibration, contention: bool) -> int:
    """The measured machine's cores when the model can share them among its processes, else 0."""
    cores = doc.get("environment", {}).get("machine", {}).get("cores")
    return int(cores) if contention and "clients" in calibration and isinstance(cores, int) and cores > 0 else 0


def _scale_rows(doc: dict[str, Any], calibration: ModelCalibration, contention: bool, duration_s: float,
                seed: int) -> tuple[list[ModelValidationRow], str]:
    conditions = doc["conditions"]
    cores = doc.get("environment", {}).get("machine", {}).get("cores")
    host = _host_cores(doc, calibration, contention)
    slowdown = 1.0 if host else _slowdown(conditions, cores, contention)
    rows: list[ModelValidationRow] = []
    for i, point in enumerate(doc.get("steady", [])):
        subs = max(int(point["substations"]), 1)
        interval = float(point["interval_s"])
        published = float(point.get("published_per_s") or 0.0)
        if host and published > 0:  # the fleets' real rate: what they published, not what was asked
            interval = int(point["meters"]) / published
        settings = Settings(substations=subs, meters=int(point["meters"]) // subs, interval_s=interval,
                            duration_s=max(duration_s, 3 * interval), warmup_s=min(interval, 1.0),
                            qos=int(conditions.get("qos", 1)),
                            payload_bytes=int(point.get("payload_bytes", 150)), command_rate=0.0,
                            slowdown=slowdown, cores=host, seed=seed + i)
        run = run_model(settings, calibration)
        flow = next(f for f in run["flows"] if f["flow"] == "reading")
        window = settings.duration_s - settings.warmup_s
        name = f"{point['meters']} meters / {point['interval_s']:g} s"
        lat, got = point["latency_ms"], flow["latency_ms"]
        for row in (_row("scale", name, "throughput_per_s", point["delivered_per_s"], flow["delivered"] / window),
                    _row("scale", name, "p50_ms", lat.get("p50"), got.get("p50")),
                    _row("scale", name, "p99_ms", lat.get("p99"), got.get("p99"))):
            if row:
                rows.append(row)
    load = [conditions.get("load_average_before"), conditions.get("load_average_after")]
    if host:
        return rows, (f"scale: {host} cores shared by the fleets, brokers and DMS-side subscriber (load average "
                      f"{load}); fleets at the rate they published")
    return rows, f"scale: load average {load} on {cores} cores -> slowdown x{slowdown:.2f}"


def _prioritization_point(calibration: ModelCalibration, config: str, flood_rate: float, command_rate: float,
                          command_qos: int, flood_qos: int, payload: int, command_payload: int, publishers: int,
                          seconds: float, seed: int, slowdown: float = 1.0) -> tuple[list[float], float]:
    """One load of the prioritization benchmark: commands to a responder on the control broker (the
    delivery broker when shared) while a flood goes to the delivery broker; (round trips s, flood msg/s)."""
    env = simpy.Environment()
    rng = random.Random(seed)
    costs = Costs(calibration, rng)
    rec = Recorder(warmup_s=0.5)
    delivery = Broker(env, "delivery", slowdown)
    control = delivery if config == "shared" else Broker(env, "control", slowdown)
    cmd = costs.message_mean_s(command_qos, command_payload, 1)
    commands = Route(env, "control", [
        Hop(broker=control, service_s=cmd), Hop(broker=control, service_s=cmd)], rec, 0.0, costs.draw,
        lambda: costs.round_trip_rest_draw_s(command_qos, command_payload) * slowdown)
    flood = Route(env, "flood", [Hop(broker=delivery, service_s=costs.message_mean_s(flood_qos, payload, 1))],
                  rec, 0.0, costs.draw)
    env.process(poisson_source(env, command_rate, commands.send, rng, seconds))
    flood_cost = costs.message_mean_s(flood_qos, payload, 1)
    if flood_rate >= 0:
        env.process(poisson_source(env, flood_rate, flood.send, rng, seconds))
        env.run(until=seconds)
        return rec.latencies["control"], len(rec.latencies["flood"]) / (seconds - rec.warmup_s)
    # "As fast as the publishers can": a closed loop. Each publisher's messages wait in the broker's
    # socket buffer, so at most a receive buffer's worth each is queued ahead of a command.
    window = publishers * max(1, _receive_buffer() // (payload + WIRE_BYTES))
    carried = [0]

    def closed_loop() -> Generator[simpy.Event, Any, None]:
        queued: deque[float] = deque()
        while env.now < seconds:
            done = delivery.take(costs.draw(flood_cost))
            assert done is not None  # this broker is never restarted
            queued.append(done)
            if env.now >= rec.warmup_s:
                carried[0] += 1
            if len(queued) >= window:
                yield env.timeout(max(queued.popleft() - env.now, 0.0))
    env.process(closed_loop())
    env.run(until=seconds)
    return rec.latencies["control"], carried[0] / (seconds - rec.warmup_s)


WIRE_BYTES: Final = 60  # MQTT header, topic and TLS record framing of a flood message, beside its payload


def _receive_buffer() -> int:
    """The kernel's default TCP receive buffer (tcp_rmem's middle value): how much of a publisher's flood
    one connection holds before TCP stops it."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 131072  # Linux's default


def _flood_contention(config: str, flood_rate: float, flood_cost: float, publishers: int, cores: int) -> float:
    """How much slower the control path runs beside the flood on the same cores (processor sharing): the
    flood's publishers, broker and subscriber are C programs doing the same TLS work per message, so each
    costs about what the broker does. "max" keeps all of them busy: (publishers + 2) runnable on ``cores``.
    With priority the control plane has cores of its own (the benchmark pins and renices the flood)."""
    if config == "segregated+priority" or flood_rate == 0:
        return 1.0
    if flood_rate < 0:
        return max(1.0, (publishers + 2) / cores)
    busy = min(3 * flood_rate * flood_cost / cores, 0.9)
    return 1 / (1 - busy)


def _hosted_point(calibration: ModelCalibration, config: str, point: dict[str, Any], c: dict[str, Any], cores: int,
                  seconds: float, seed: int) -> tuple[list[float], float]:
    """One prioritization step on the machine's shared cores: (round trips s, flood msg/s delivered)."""
    env = simpy.Environment()
    rng = random.Random(seed)
    costs = Costs(calibration, rng)
    rec = Recorder(warmup_s=0.5, end_s=seconds)
    placement = c.get("priority_placement", {})
    if config == "segregated+priority":  # the control plane and the flood pinned to cores of their own
        ctl_cores = len(placement.get("control", {}).get("cpus", [])) or max(cores - 1, 1)
        control_host, flood_host = Host("control cores", ctl_cores), Host("flood cores", max(cores - ctl_cores, 1))
    else:
        control_host = flood_host = Host("machine", cores)
    delivery = Broker(env, "delivery", host=flood_host)
    control = delivery if config == "shared" else Broker(env, "control", host=control_host)
    qos, payload = int(c["command_qos"]), int(c.get("command_payload_bytes", 66))
    cmd, paho = costs.message_mean_s(qos, payload, 1), costs.client_mean_s("subscriber")
    commander, responder = Broker(env, "commander", host=control_host), Broker(env, "responder", host=control_host)
    commands = Route(env, "control", [
        Hop(broker=commander, service_s=paho), Hop(broker=control, service_s=cmd),
        Hop(broker=responder, service_s=paho), Hop(broker=control, service_s=cmd),
        Hop(broker=commander, service_s=paho)], rec, 0.0, costs.draw,
        lambda: max(costs.round_trip_rest_draw_s(qos, payload) - 3 * paho, 0.0))
    env.process(poisson_source(env, float(c["command_rate"]), commands.send, rng, seconds))
    sent = float(point.get("sent_rate") or 0.0)
    publishers = max(int(c.get("flood_publishers", 1)), 1)
    if sent > 0:
        used = (point.get("cpu") or {}).get("publishers", {}).get("seconds")
        window = float(c.get("seconds_per_step", 10.0))
        per_message = used / (sent * window) if used else costs.client_mean_s("flood_publisher")
        subscriber = Broker(env, "flood-subscriber", host=flood_host)
        flood_s = costs.message_mean_s(int(c["flood_qos"]), int(c["payload_bytes"]), 1)
        for k in range(publishers):
            flood = Route(env, "flood", [
                Hop(broker=Broker(env, f"publisher-{k}", host=flood_host), service_s=per_message),
                Hop(broker=delivery, service_s=flood_s),
                Hop(broker=subscriber, service_s=costs.client_mean_s("flood_subscriber"))], rec, 0.0, costs.draw)
            env.process(poisson_source(env, sent / publishers, flood.send, rng, seconds))
    env.run(until=seconds)
    return rec.latencies["control"], len(rec.latencies.get("flood", [])) / (seconds - rec.warmup_s)


def _prioritization_rows(doc: dict[str, Any], calibration: ModelCalibration, seconds: float,
                         seed: int, contention: bool = True) -> list[ModelValidationRow]:
    c = doc["conditions"]
    cores = doc.get("environment", {}).get("machine", {}).get("cores") or 1
    host = _host_cores(doc, calibration, contention)
    publishers = int(c.get("flood_publishers", 1))
    flood_cost = Costs(calibration, random.Random(0)).message_mean_s(int(c["flood_qos"]), int(c["payload_bytes"]), 1)
    rows: list[ModelValidationRow] = []
    for config, points in doc["results"].items():
        for j, point in enumerate(points):
            rate = point["offered_rate"]
            if host and (rate == 0 or "sent_rate" in point):
                trips, carried = _hosted_point(calibration, config, point, c, host, seconds, seed + j)
                _add_rows(rows, f"{config} flood {rate} (sent {point.get('sent_rate', 0):.0f}/s, {host} cores)",
                          point, trips, carried, rate)
                continue
            flood = -1.0 if rate == "max" else float(rate)
            slowdown = _flood_contention(config, flood, flood_cost, publishers, cores)
            trips, carried = _prioritization_point(
                calibration, config, flood, float(c["command_rate"]), int(c["command_qos"]), int(c["flood_qos"]),
                int(c["payload_bytes"]), int(c.get("command_payload_bytes", 66)), publishers, seconds, seed + j,
                slowdown)
            _add_rows(rows, f"{config} flood {rate} (x{slowdown:.2f})", point, trips, carried, rate)
    return rows


def _add_rows(rows: list[ModelValidationRow], name: str, point: dict[str, Any], trips: list[float], carried: float,
              rate: Any) -> None:
    ms: dict[str, Any] = dict(percentiles([t * 1000 for t in trips])) if trips else {}
    ctl = point["control_ms"]
    for row in (_row("prioritization", name, "throughput_per_s", point["achieved_rate"] or None,
                     carried if rate != 0 else None),
                _row("prioritization", name, "p50_ms", ctl.get("p50"), ms.get("p50")),
                _row("prioritization", name, "p99_ms", ctl.get("p99"), ms.get("p99"))):
        if row:
            rows.append(row)


def validate(calibration: ModelCalibration, calibration_name: str, scale: Sequence[Path],
             prioritization: Sequence[Path], contention: bool = True, duration_s: float = 30.0,
             seed: int = 1) -> ModelValidation:
    """The validation table over every given result file of ``fmb bench scale`` and ``prioritization``."""
    if not scale and not prioritization:
        raise TestbedError("validate: no measurements; give --scale FILE and/or --prioritization FILE")
    if duration_s < 2:
        raise TestbedError(f"validate: --seconds {duration_s:g}; give 2 or more simulated seconds per point")
    rows: list[ModelValidationRow] = []
    sources: list[str] = []
    notes: list[str] = []
    for path in scale:
        doc = _read(path, "fmb.bench-scale/1")
        with _fields_of(path, "fmb.bench-scale/1"):
            got, note = _scale_rows(doc, calibration, contention, duration_s, seed)
            rows += got
            notes.append(note)
            sources.append(f"{path} ({len(doc.get('steady', []))} steady loads"
                           f"{', quick' if doc['conditions'].get('quick') else ''})")
    for path in prioritization:
        doc = _read(path, "fmb.bench-prioritization/1")
        with _fields_of(path, "fmb.bench-prioritization/1"):
            rows += _prioritization_rows(doc, calibration, min(duration_s, 10.0), seed, contention)
            note = doc["conditions"].get("note", "")
            sources.append(f"{path}{f' ({note})' if note else ''}")
    if contention and "clients" in calibration:
        notes.append("prioritization: commander, responder, brokers, flood publishers (at their sent rate and "
                     "measured CPU per message) and flood subscriber share the machine's cores; with priority the "
                     "control plane and the flood on their pinned cores; a step without sent_rate: as below")
    notes.append("prioritization without the clients' costs: the flood's own processes on the same cores -> "
                 "slowdown (publishers + 2) / cores at max, 1 / (1 - 3 x rate x cost / cores) below; none with "
                 "priority (pinned apart)")
    return ModelValidation(schema=VALIDATION_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           calibration=calibration_name, measurements=sources,
                           contention="; ".join(notes) if contention else "none (each broker a core of its own)",
                           rows=rows, met=sum(r["met"] for r in rows), total=len(rows))
