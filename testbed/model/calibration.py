"""The calibration file the capacity model runs on: reading it (every field checked, one-line errors)
and the service times it gives (a broker's cost per message, a bridge's, a handshake's).

The file is written by ``fmb model calibrate`` (:mod:`testbed.model.measure`) from short runs on
real brokers; ``tests/fixtures/model-calibration.json`` is one such run, committed so the model,
its validation and the notebook run without measuring. A broker's CPU time per message is linear
in its deliveries and in its payload times its deliveries (a least-squares fit per QoS over the
measured points, within 3 % of each of them); a
hop's variability comes from the spread of measured one-hop latencies, so the model's service
times are gamma-distributed with the mean of the fit and that coefficient of variation.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any, Final, cast

import numpy

from testbed.core.errors import TestbedError
from testbed.core.results import ModelCalibration

__all__ = ["CALIBRATION_SCHEMA", "DEFAULT_CALIBRATION", "Costs", "load_calibration"]

CALIBRATION_SCHEMA: Final = "fmb.model-calibration/1"  # shape: testbed.core.results.ModelCalibration
DEFAULT_CALIBRATION: Final = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "model-calibration.json"
QOS_KEYS: Final = ("0", "1", "2")
_LIMIT_BYTES: Final = 1 << 20
QUANTILES: Final = ("min", "p50", "p90", "p99", "max")
_AT: Final = (0.0, 0.5, 0.9, 0.99, 1.0)


def _fail(path: Path, field: str, problem: str) -> TestbedError:
    return TestbedError(f"calibration {path}: {field} {problem}; write it with `fmb model calibrate`")


def _number(path: Path, doc: dict[str, Any], key: str, low: float = 0.0, where: str = "") -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
        raise _fail(path, f"{where}{key}", f"is {value!r}, not a number >= {low:g}")
    return float(value)


def _by_qos(path: Path, doc: dict[str, Any], key: str) -> None:
    table = doc.get(key)
    if not isinstance(table, dict) or set(table) != set(QOS_KEYS):
        raise _fail(path, key, f"must map each QoS {', '.join(QOS_KEYS)} to a number; got {table!r:.60}")
    for q in QOS_KEYS:
        _number(path, table, q, low=-math.inf if key != "client_overhead_ms" else 0.0, where=f"{key}.")
        if key == "base_us" and table[q] <= 0:
            raise _fail(path, f"{key}.{q}", f"is {table[q]!r}; a message costs the broker more than nothing")


def _rows(path: Path, doc: dict[str, Any], key: str, fields: tuple[str, ...]) -> None:
    rows = doc.get(key)
    if not isinstance(rows, list) or not rows:
        raise _fail(path, key, "must be a non-empty list of measurements")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _fail(path, f"{key}[{i}]", "is not an object")
        for f in fields:
            _number(path, row, f, where=f"{key}[{i}].")
        if row.get("qos") not in (0, 1, 2):
            raise _fail(path, f"{key}[{i}].qos", f"is {row.get('qos')!r}; give 0, 1 or 2")


def _quantiles(path: Path, stats: dict[str, Any], where: str) -> None:
    """Percentiles the model draws from: each present, and in order (min <= p50 <= ... <= max)."""
    values = [_number(path, stats, key, where=where) for key in QUANTILES]
    if values != sorted(values):
        raise _fail(path, where.rstrip("."), f"has percentiles out of order ({values})")


def load_calibration(path: Path | str | None = None) -> ModelCalibration:
    """Read and check a calibration file (default: the committed fixture)."""
    file = Path(path) if path is not None else DEFAULT_CALIBRATION
    try:
        if file.stat().st_size > _LIMIT_BYTES:
            raise TestbedError(f"calibration {file}: larger than {_LIMIT_BYTES} bytes; is it a calibration file?")
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        raise TestbedError(f"calibration {file}: no such file; give a file `fmb model calibrate` wrote") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TestbedError(f"calibration {file}: cannot read it ({e}); check the path and its permissions") from None
    except json.JSONDecodeError as e:
        raise TestbedError(f"calibration {file}: not JSON (line {e.lineno}: {e.msg}); write it with "
                           "`fmb model calibrate`") from None
    if not isinstance(doc, dict):
        raise _fail(file, "the document", "is not a JSON object")
    if doc.get("schema") != CALIBRATION_SCHEMA:
        raise _fail(file, "schema", f"is {doc.get('schema')!r}, not {CALIBRATION_SCHEMA!r}")
    _rows(file, doc, "broker_points", ("qos", "payload_bytes", "subscribers", "messages", "cpu_us_per_message"))
    _rows(file, doc, "bridge", ("qos", "payload_bytes", "messages", "edge_cpu_us_per_message",
                                "datacentre_cpu_us_per_message"))
    fit = doc.get("broker_fit")
    if not isinstance(fit, dict):
        raise _fail(file, "broker_fit", "is missing")
    for key in ("base_us", "per_subscriber_us", "per_kib_us"):
        _by_qos(file, fit, key)
    _by_qos(file, doc, "client_overhead_ms")
    _number(file, doc, "handshake_us")
    if doc["handshake_us"] <= 0:
        raise _fail(file, "handshake_us", "is 0; a TLS handshake costs the broker more than nothing")
    trips = doc.get("round_trip_ms")
    if not isinstance(trips, dict):
        raise _fail(file, "round_trip_ms", "is missing (the idle command round trip through the echo responder)")
    _quantiles(file, trips, "round_trip_ms.")
    hops = doc.get("one_hop_ms")
    if not isinstance(hops, dict) or set(hops) != set(QOS_KEYS) or not all(isinstance(v, dict) for v in hops.values()):
        raise _fail(file, "one_hop_ms", "must map each QoS 0, 1, 2 to the one-hop latency percentiles")
    for q in QOS_KEYS:
        _quantiles(file, hops[q], f"one_hop_ms.{q}.")
    cv = _number(file, doc, "service_cv")
    if cv > 10:
        raise _fail(file, "service_cv", f"is {cv}; a coefficient of variation above 10 is not a measurement")
    devices = doc.get("device_ms")
    if not isinstance(devices, dict) or not devices:
        raise _fail(file, "device_ms", "must map each device role to its processing time in ms")
    for role in devices:
        _number(file, devices, role, where="device_ms.")
    if not isinstance(doc.get("environment"), dict) or not isinstance(doc.get("conditions"), dict):
        raise _fail(file, "environment and conditions", "are missing; a figure needs its conditions")
    if "clients" in doc:  # optional: older calibrations have no clients' costs
        clients = doc["clients"]
        if not isinstance(clients, dict):
            raise _fail(file, "clients", "is not an object of the clients' CPU per message")
        for key in CLIENT_KEYS.values():
            if _number(file, clients, key, where="clients.") <= 0:
                raise _fail(file, f"clients.{key}", "is 0; a client spends more than nothing on a message")
        for key in ("fleet_curve", "subscriber_curve"):
            curve = clients.get(key, [[1.0, 1.0]])
            if not isinstance(curve, list) or not curve or not all(
                    isinstance(pt, list) and len(pt) == 2 and all(
                        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                        for v in pt) for pt in curve) or [pt[0] for pt in curve] != sorted(pt[0] for pt in curve):
                raise _fail(file, f"clients.{key}", "must be [[messages/s, us per message], ...] at rising rates, "
                                                    "every number > 0")
    return cast(ModelCalibration, doc)


CLIENT_KEYS: Final = {"fleet": "fleet_us_per_reading", "subscriber": "subscriber_us_per_message",
                      "flood_publisher": "flood_publisher_us_per_message",
                      "flood_subscriber": "flood_subscriber_us_per_message"}


class Costs:
    """The service times a calibration gives, in seconds, drawn from one seeded generator."""

    def __init__(self, calibration: ModelCalibration, rng: random.Random, cv: float | None = None) -> None:
        self.cal, self.rng = calibration, rng
        self.cv = calibration["service_cv"] if cv is None else cv
        fit = calibration["broker_fit"]
        self._base = {int(q): fit["base_us"][q] for q in QOS_KEYS}
        self._per_sub = {int(q): fit["per_subscriber_us"][q] for q in QOS_KEYS}
        self._per_kib = {int(q): fit["per_kib_us"][q] for q in QOS_KEYS}
        self._bridge = {p["qos"]: p for p in calibration["bridge"]}
        self._shape = 1.0 / (self.cv * self.cv) if self.cv > 0 else 0.0
        self._gamma = numpy.random.default_rng(rng.getrandbits(64))
        self._batch: list[float] = []
        self._next = 0

    def message_mean_s(self, qos: int, payload_bytes: int, subscribers: int) -> float:
        """A broker's mean CPU time for one message published to it with ``subscribers`` deliveries."""
        deliveries = max(subscribers, 1)
        us = (self._base[qos] + self._per_sub[qos] * (deliveries - 1)
              + self._per_kib[qos] * payload_bytes / 1024 * deliveries)
        return max(us, 1.0) * 1e-6

    def bridge_mean_s(self, qos: int, payload_bytes: int) -> tuple[float, float]:
        """(sending broker, receiving broker) mean CPU for one message over a bridge: measured at the
        calibrated QoS nearest ``qos``, scaled by the payload as the broker fit scales it."""
        point = self._bridge.get(qos) or next(iter(self._bridge.values()))
        extra = self._per_kib[qos] * (payload_bytes - point["payload_bytes"]) / 1024
        return (max(point["edge_cpu_us_per_message"] + extra, 1.0) * 1e-6,
                max(point["datacentre_cpu_us_per_message"] + extra, 1.0) * 1e-6)

    def _quantile_draw(self, stats: Any) -> float:
        """One value from a distribution known by its percentiles (linear between them), in seconds."""
        u = self.rng.random()
        points = [float(stats[k]) for k in QUANTILES]
        for i in range(1, len(_AT)):
            if u <= _AT[i]:
                share = (u - _AT[i - 1]) / (_AT[i] - _AT[i - 1])
                return (points[i - 1] + share * (points[i] - points[i - 1])) * 1e-3
        return points[-1] * 1e-3

    def clients_draw_s(self, qos: int, payload_bytes: int = 124) -> float:
        """A message's time outside the brokers (publisher and subscriber stacks): a one-hop latency drawn
        from the measured ones, less the broker's mean cost."""
        return max(self._quantile_draw(self.cal["one_hop_ms"][str(qos)]) - self.message_mean_s(qos, payload_bytes, 1),
                   0.0)

    def round_trip_rest_draw_s(self, qos: int, payload_bytes: int) -> float:
        """A command round trip's time outside the brokers (commander, responder, their stacks): a round trip
        drawn from the calibrated ones, less its two broker jobs, and divided by the contention it was
        measured under (the calibration run's load average over the cores, as validation multiplies it):
        the time those processes would take with a core each."""
        rest = self._quantile_draw(self.cal["round_trip_ms"]) - 2 * self.message_mean_s(qos, payload_bytes, 1)
        return max(rest, 0.0) / self.measured_slowdown

    @property
    def measured_slowdown(self) -> float:
        """load / cores of the calibration run (1 when it had a core per runnable process)."""
        cond, cores = self.cal["conditions"], self.cal["environment"]["machine"]["cores"] or 1
        loads = [cond["load_average_before"][0], cond["load_average_after"][0]]
        return max(1.0, sum(loads) / len(loads) / cores)

    def client_mean_s(self, client: str, rate: float | None = None) -> float:
        """A client process's mean CPU per message (``fleet``, ``subscriber``, ``flood_publisher``,
        ``flood_subscriber``), for a model of one machine's shared cores; at ``rate`` messages/s where the
        calibration has that client's cost curve (linear between its points in log rate, flat beyond)."""
        clients = self.cal.get("clients")
        if clients is None:
            raise TestbedError("the calibration has no clients' CPU costs, which a model with cores needs; run "
                               "`fmb model calibrate` again (it measures them now) or leave cores out")
        curve = clients.get(f"{client}_curve") if rate is not None and rate > 0 else None
        if not curve:
            return float(clients[CLIENT_KEYS[client]]) * 1e-6  # type: ignore[literal-required]
        points = [(math.log(r), us) for r, us in curve]  # type: ignore[attr-defined]
        x = math.log(rate)  # type: ignore[arg-type]
        if x <= points[0][0]:
            return float(points[0][1]) * 1e-6
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if x <= x1:
                return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0)) * 1e-6 if x1 > x0 else float(y1) * 1e-6
        return float(points[-1][1]) * 1e-6

    def handshake_mean_s(self) -> float:
        return self.cal["handshake_us"] * 1e-6

    def draw(self, mean_s: float) -> float:
        """One service time of mean ``mean_s``: gamma with the calibration's coefficient of variation
        (unit-mean gamma variates drawn by numpy in batches, seeded from ``rng``: a million draws in
        milliseconds instead of seconds)."""
        if self.cv <= 0:
            return mean_s
        if self._next >= len(self._batch):
            self._batch = self._gamma.gamma(self._shape, 1.0 / self._shape, 1 << 16).tolist()
            self._next = 0
        value = self._batch[self._next]
        self._next += 1
        return mean_s * float(value)
