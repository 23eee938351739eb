"""A fleet of smart meters: one asyncio process runs the N meters of one substation.

Each meter is its own MQTT v5 connection with its own certificate (CN = its mRID), to the
substation's delivery broker only: a meter reads nothing and publishes only
``MeterReadingProfile/<own mRID>``, so the broker's ACL confines it as it confines a single meter
(``devices/meter.py``). Readings go by exception (the voltage moved by the meter's deadband since its
last report, in the trace of what moved it) and periodically (``period_s``; the first at a random
phase in [0, period), so a fleet does not report in lockstep), each with the meter's own sequence
number and timestamp. One watch per feeder model fans the feeder's state out to its meters (all read
its ``meter_v``); a meter without a feeder socket reports a nominal 120.0 V periodically. Connections
open at FMB_FLEET_CONNECT_RATE per second; after a loss each meter reconnects with full-jitter
exponential backoff (``testbed.transport.aio``) and reports once back (an edge broker keeps nothing).
QoS 2 is refused: see ``testbed.transport.aio``. SIGTERM disconnects every meter and exits 0.

Configuration (environment; ``--help`` prints this):

    FMB_FLEET_ID            the fleet's name, e.g. sub-001-fleet (logs, heartbeat)      (required)
    FMB_DELIVERY            host:port of the substation's delivery broker              (required)
    FMB_CA                  the CA file                                                 (required)
    FMB_FLEET_FILE          JSON: {"root": "fmb", "qos": 1, "backoff": {"base_s": 0.5, "cap_s": 20},
                            "meters": [{"id", "cert", "key", "feeder_socket", "deadband_v",
                            "period_s"}, ...]}; feeder_socket null or absent: no physics  (required)
    FMB_READY_FILE          the heartbeat (testbed.transport.health), with the counters expected,
                            connected, published, reconnects, rejected, connect_failures, skipped,
                            unusable (a certificate or key that would not load)
    FMB_FLEET_CONNECT_RATE  connections opened per second at start                   (default 200)
    FMB_LOG_LEVEL           DEBUG, INFO, ...                                          (default INFO)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import math
import os
import random
import signal
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.feeder import FeederLink
from testbed.core.errors import ConfigError, DeviceError, TestbedError
from testbed.core.payloads import MAX_PLAUSIBLE_V, NOMINAL_V, child_traceparent, encode
from testbed.core.topics import topic
from testbed.transport.aio import AioClient, Backoff, small_tls_buffers
from testbed.transport.guard import one_line
from testbed.transport.health import TICK_S, Heartbeat
from testbed.transport.mqtt import Endpoint, TLSIdentity, tls_context

__all__ = ["Fleet", "FleetConfig", "MeterSpec", "load_fleet_file", "main"]

log = logging.getLogger("fleet")

PROFILE = "MeterReadingProfile"
DEFAULT_CONNECT_RATE = 200.0  # TLS handshakes per second: 1,000 meters in 5 s without starving the broker
MAX_FLEET_FILE_BYTES = 64 << 20  # about 300,000 meters; anything larger is not a substation
MAX_METERS = 100_000
MAX_ID_CHARS = 64
SUMMARY_EVERY_S = 10.0  # a line of counters in the log
CONTEXTS_AHEAD = 8  # TLS contexts loading in worker threads ahead of the connection ramp


@dataclass(frozen=True)
class MeterSpec:
    """One meter of the fleet file."""

    id: str
    cert: Path
    key: Path
    feeder_socket: Path | None = None
    deadband_v: float = 0.5
    period_s: float = 5.0


@dataclass(frozen=True)
class FleetConfig:
    """The fleet's settings: environment and fleet file, validated."""

    fleet_id: str
    delivery: Endpoint
    ca: Path
    root: str
    qos: int
    meters: tuple[MeterSpec, ...]
    backoff: Backoff
    connect_rate: float = DEFAULT_CONNECT_RATE
    ready_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FleetConfig:
        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise DeviceError(f"set {name} (see python -m devices.fleet --help)")
            return value

        fleet_id = need("FMB_FLEET_ID")
        try:
            delivery = Endpoint.parse(need("FMB_DELIVERY"))
        except ValueError as e:
            raise DeviceError(f"FMB_DELIVERY: {e}; give host:port of the delivery broker") from None
        ca = Path(need("FMB_CA"))
        if not ca.is_file():
            raise DeviceError(f"FMB_CA: {ca} does not exist; create the PKI with `fmb certs init`")
        rate_text = env.get("FMB_FLEET_CONNECT_RATE", "") or str(DEFAULT_CONNECT_RATE)
        try:
            rate = float(rate_text)
        except ValueError:
            rate = math.nan
        if not 0 < rate <= 100_000:  # NaN fails this too
            raise DeviceError(f"FMB_FLEET_CONNECT_RATE is {one_line(rate_text, 40)!r}; give connections per "
                              "second, a number > 0")
        root, qos, meters, backoff = load_fleet_file(Path(need("FMB_FLEET_FILE")))
        ready = env.get("FMB_READY_FILE")
        return cls(fleet_id, delivery, ca, root, qos, meters, backoff, rate, Path(ready) if ready else None)


def load_fleet_file(path: Path) -> tuple[str, int, tuple[MeterSpec, ...], Backoff]:
    """Read and validate FMB_FLEET_FILE: ``(root, qos, meters, backoff)``, or a one-line ConfigError."""
    def bad(field: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"FMB_FLEET_FILE {path}", field, problem, fix)

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FLEET_FILE_BYTES + 1)
    except OSError as e:
        raise bad("", f"cannot be read ({e.strerror})", "give the path of the fleet's JSON file") from None
    if len(raw) > MAX_FLEET_FILE_BYTES:
        raise bad("", f"is larger than {MAX_FLEET_FILE_BYTES >> 20} MB", "split the meters over several fleets")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise bad("", f"is not JSON ({one_line(str(e), 120)})", "fix the syntax") from None
    if not isinstance(data, dict):
        raise bad("", f"is a JSON {type(data).__name__}", 'write an object {"root": ..., "qos": ..., "meters": [...]}')
    _unknown(bad, "", data, {"root", "qos", "meters", "backoff"})
    root = data.get("root", "fmb")
    if not isinstance(root, str) or not root or len(root) > MAX_ID_CHARS or not _plain(root):
        raise bad("root", f"is {_show(root)}", "give one topic level without / + # or control characters")
    qos = data.get("qos", 1)
    if qos == 2 and not isinstance(qos, bool):
        raise bad("qos", "is 2, which the fleet refuses (gmqtt cannot keep QoS 2's exactly-once across "
                  "reconnects: testbed.transport.aio)", "use 1 (readings carry sequence numbers) or 0")
    if qos not in (0, 1) or isinstance(qos, bool):
        raise bad("qos", f"is {_show(qos)}", "use 0 or 1")
    backoff = _backoff(bad, data.get("backoff", {}))
    meters = data.get("meters")
    if not isinstance(meters, list) or not meters:
        raise bad("meters", f"is {_show(meters)}", "give a non-empty list of meters")
    if len(meters) > MAX_METERS:
        raise bad("meters", f"has {len(meters)} meters", f"split them over fleets of at most {MAX_METERS}")
    specs = tuple(_meter(bad, f"meters[{i}]", m, path.parent) for i, m in enumerate(meters))
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.id in seen:
            raise bad(f"meters[{i}].id", f"{spec.id!r} appears twice", "give every meter its own mRID")
        seen.add(spec.id)
    return root, int(qos), specs, backoff


def _meter(bad: Any, where: str, m: object, base: Path) -> MeterSpec:
    if not isinstance(m, dict):
        raise bad(where, f"is {_show(m)}", 'give an object {"id": ..., "cert": ..., "key": ...}')
    _unknown(bad, where, m, {"id", "cert", "key", "feeder_socket", "deadband_v", "period_s"})
    ident = m.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > MAX_ID_CHARS or not _plain(ident):
        raise bad(f"{where}.id", f"is {_show(ident)}",
                  f"give the meter's mRID (its certificate's CN): 1-{MAX_ID_CHARS} characters without / + #")
    files = []
    for key in ("cert", "key"):
        value = m.get(key)
        if not isinstance(value, str) or not value:
            raise bad(f"{where}.{key}", f"is {_show(value)}", f"give the path of {ident}'s {key} file")
        file = base / value
        if not file.is_file():
            raise bad(f"{where}.{key}", f"{one_line(str(file), 200)} does not exist",
                      f"issue {ident}'s certificate (fmb certs init) or fix the path")
        files.append(file)
    feeder = m.get("feeder_socket")
    if feeder is not None and (not isinstance(feeder, str) or not feeder):
        raise bad(f"{where}.feeder_socket", f"is {_show(feeder)}",
                  "give the feeder model's socket path, or null for no physics")
    deadband = _number(bad, f"{where}.deadband_v", m.get("deadband_v", 0.5), 0.0, MAX_PLAUSIBLE_V, "volts >= 0")
    period = _number(bad, f"{where}.period_s", m.get("period_s", 5.0), 0.05, 86_400.0,
                     "seconds between periodic readings, 0.05-86400")
    return MeterSpec(ident, files[0], files[1], base / feeder if feeder else None, deadband, period)


def _backoff(bad: Any, table: object) -> Backoff:
    if not isinstance(table, dict):
        raise bad("backoff", f"is {_show(table)}", 'give an object {"base_s": 0.5, "cap_s": 20}')
    _unknown(bad, "backoff", table, {"base_s", "cap_s", "stable_s"})
    base = _number(bad, "backoff.base_s", table.get("base_s", 0.5), 0.01, 3600.0, "seconds, 0.01-3600")
    cap = _number(bad, "backoff.cap_s", table.get("cap_s", 20.0), base, 3600.0, f"seconds, {base:g}-3600")
    stable = _number(bad, "backoff.stable_s", table.get("stable_s", 10.0), 0.0, 86_400.0, "seconds >= 0")
    return Backoff(base, cap, stable)


def _number(bad: Any, field: str, value: object, low: float, high: float, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad(field, f"is {_show(value)}", f"give {fix}")
    return float(value)


def _unknown(bad: Any, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            field = f"{where}.{key}" if where else key
            raise bad(one_line(field, 80), "is not a known field",
                      f"remove it or use one of: {', '.join(sorted(allowed))}")


def _plain(text: str) -> bool:
    return text.isprintable() and not any(c in text for c in "/+# ")


def _show(value: object) -> str:
    return one_line(repr(value), 60)


class Meter:
    """One meter's state: its connection, its sequence number, what it measured and last reported."""

    __slots__ = ("client", "index", "measured_v", "next_due", "reported_v", "seq", "spec", "topic")

    def __init__(self, index: int, spec: MeterSpec, root: str) -> None:
        self.index = index
        self.spec = spec
        self.topic = topic(root, PROFILE, spec.id)
        self.client: AioClient | None = None
        self.seq = 0
        self.measured_v: float | None = None
        self.reported_v: float | None = None
        self.next_due = 0.0


class Fleet:
    """Runs every meter of a :class:`FleetConfig` until :meth:`stop`."""

    def __init__(self, config: FleetConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.meters = [Meter(i, spec, config.root) for i, spec in enumerate(config.meters)]
        self.by_feeder: dict[Path, list[Meter]] = {}
        for meter in self.meters:
            if meter.spec.feeder_socket is None:
                meter.measured_v = NOMINAL_V  # no physics: a nominal reading, periodically
            else:
                self.by_feeder.setdefault(meter.spec.feeder_socket, []).append(meter)
        self.published = 0
        self.skipped = 0  # readings due while the meter was disconnected or its broker's window full
        self.unusable = 0  # meters whose certificate or key could not be loaded
        self.heartbeat = Heartbeat(config.ready_file, config.fleet_id,
                                   disconnected_limit_s=config.backoff.cap_s + 2 * TICK_S + 2)
        self._stop = asyncio.Event()
        self._none_connected_since: float | None = None

    # -- the whole life --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to disconnect every meter and return."""
        self._stop.set()

    async def run(self) -> None:
        """Open the connections at the configured rate, report until :meth:`stop`, then disconnect all."""
        loop = asyncio.get_running_loop()
        for path, meters in self.by_feeder.items():
            threading.Thread(target=self._watch_feeder, args=(loop, path, meters), daemon=True,
                             name=f"feeder-{path.name}").start()
        tasks = [asyncio.create_task(self._ramp(), name="ramp"),
                 asyncio.create_task(self._periodic(), name="periodic"),
                 asyncio.create_task(self._beat(), name="heartbeat")]
        self.log_summary("starting")
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        clients = [m.client for m in self.meters if m.client is not None]
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        runs = [t for t in asyncio.all_tasks() if t.get_name().startswith("meter ")]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*runs, *tasks, return_exceptions=True), 3.0)
        self.log_summary("stopped")
        self.heartbeat.stop()

    async def _ramp(self) -> None:
        """Start the meters' connections at ``connect_rate`` per second.

        Each meter's TLS context (its own key pair) takes milliseconds to load (OpenSSL 3 parses the
        PEM files): a few load in worker threads ahead of the ramp, so the event loop keeps serving
        the handshakes already under way; the loop yields after every meter even when behind."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.config.connect_rate
        queue = iter(self.meters)
        ahead: deque[tuple[Meter, asyncio.Future[ssl.SSLContext]]] = deque()

        def load_next() -> None:
            meter = next(queue, None)
            if meter is not None:
                ahead.append((meter, loop.run_in_executor(None, tls_context, _identity(self.config, meter.spec))))

        for _ in range(CONTEXTS_AHEAD):
            load_next()
        start = time.monotonic()
        started = 0
        while ahead:
            meter, loading = ahead.popleft()
            load_next()
            try:
                context = await loading
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: a key that does not fit, a bad PEM
                self.unusable += 1
                log.error("%s: cannot load its certificate and key (%s); this meter stays offline", meter.spec.id,
                          one_line(str(e)))
                continue
            client = AioClient(meter.spec.id, context, self.config.delivery, backoff=self.config.backoff,
                               rng=self.rng, on_connect=self._on_connect(meter))
            meter.client = client
            asyncio.create_task(client.run(), name=f"meter {meter.spec.id}")
            started += 1
            # Paced on the clock, not on sleeps; sleep(0) when behind still lets the handshakes run.
            await asyncio.sleep(max(0.0, start + started * interval - time.monotonic()))

    def _on_connect(self, meter: Meter) -> Any:
        def connected(client: AioClient) -> None:
            if client.connections > 1:  # back after a loss: the edge broker kept nothing, report now
                self._report(meter, "periodic", None)
        return connected

    # -- readings -----------------------------------------------------------------------------------

    def _report(self, meter: Meter, reason: str, cause: str | None) -> None:
        now = time.monotonic()
        meter.next_due = now + meter.spec.period_s
        client, volts = meter.client, meter.measured_v
        if client is None or volts is None or not client.connected:
            self.skipped += 1
            return
        seq = meter.seq + 1
        payload = encode(PROFILE, meter.spec.id, seq, {"voltage_v": volts, "reason": reason})
        try:
            client.publish(meter.topic, payload, self.config.qos, traceparent=child_traceparent(cause))
        except TestbedError as e:  # disconnected in between, or Receive Maximum unacknowledged
            self.skipped += 1
            log.debug("%s: reading not sent: %s", meter.spec.id, e)
            return
        meter.seq = seq  # consecutive on the wire: a gap the subscriber sees is a loss
        meter.reported_v = volts
        self.published += 1

    async def _periodic(self) -> None:
        """One timer for every meter: a heap of (due, meter), one entry per meter, never more."""
        now = time.monotonic()
        heap = []
        for meter in self.meters:
            meter.next_due = now + self.rng.uniform(0.0, meter.spec.period_s)  # spread the phases
            heap.append((meter.next_due, meter.index))
        heapq.heapify(heap)
        while heap:
            due, index = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))
                continue
            meter = self.meters[index]
            if meter.next_due > due:  # it reported by exception meanwhile: its period restarted
                heapq.heapreplace(heap, (meter.next_due, index))
                continue
            self._report(meter, "periodic", None)
            heapq.heapreplace(heap, (meter.next_due, index))

    # -- the feeder models ---------------------------------------------------------------------------

    def _watch_feeder(self, loop: asyncio.AbstractEventLoop, path: Path, meters: list[Meter]) -> None:
        """One watch per feeder (a thread: FeederLink blocks); each state goes to the event loop."""
        while not self._stop.is_set():
            try:
                for state in FeederLink(path, timeout_s=5.0).watch():
                    loop.call_soon_threadsafe(self._feeder_state, path, meters, state)
                log.warning("feeder model at %s closed the watch; reconnecting", path)
            except (TestbedError, OSError, ValueError, KeyError, TypeError) as e:
                log.warning("feeder model at %s: %s; retrying", path, one_line(str(e)))
            except RuntimeError:  # the event loop is closed: the fleet is stopping
                return
            time.sleep(1.0)

    def _feeder_state(self, path: Path, meters: list[Meter], state: object) -> None:
        volts = state.get("meter_v") if isinstance(state, dict) else None
        if isinstance(volts, bool) or not isinstance(volts, int | float) or not 0 <= volts <= MAX_PLAUSIBLE_V:
            log.error("feeder model at %s sent an implausible state %s; ignored", path, _show(state))
            return
        cause = state.get("traceparent") if isinstance(state, dict) else None
        cause = cause if isinstance(cause, str) and len(cause) <= 64 else None
        for meter in meters:
            meter.measured_v = float(volts)
            if meter.reported_v is None or abs(volts - meter.reported_v) >= meter.spec.deadband_v:
                self._report(meter, "exception", cause)

    # -- health ------------------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """What the heartbeat carries."""
        clients = [m.client for m in self.meters if m.client is not None]
        return {"expected": len(self.meters), "connected": sum(c.connected for c in clients),
                "published": self.published, "reconnects": sum(c.reconnects for c in clients),
                "rejected": sum(c.refused for c in clients), "connect_failures": sum(c.failed for c in clients),
                "skipped": self.skipped, "unusable": self.unusable}

    async def _beat(self) -> None:
        last_summary = time.monotonic()
        while True:
            counters = self.counters()
            self.heartbeat.counters = counters
            self.heartbeat.beat(self._problems(counters))
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                last_summary = time.monotonic()
                self.log_summary("running")
            await asyncio.sleep(TICK_S)

    def _problems(self, counters: dict[str, int]) -> list[str]:
        # A fleet with some meters down (a revoked one, a storm under way) is working; one with none
        # connected for longer than the backoff explains has lost its broker.
        now = time.monotonic()
        if counters["connected"] or not counters["expected"]:
            self._none_connected_since = None
            return []
        if self._none_connected_since is None:
            self._none_connected_since = now
        down = now - self._none_connected_since
        started = sum(m.client is not None for m in self.meters) + self.unusable == len(self.meters)
        if started and down > self.heartbeat.disconnected_limit_s:
            return [f"no meter connected for {down:.0f} s"]
        return []

    def log_summary(self, what: str) -> None:
        c = self.counters()
        errors = {m.client.last_error for m in self.meters if m.client is not None and not m.client.connected
                  and m.client.last_error}
        log.info("%s %s: connected %d/%d, published %d, reconnects %d, rejected %d, connect failures %d%s",
                 self.config.fleet_id, what, c["connected"], c["expected"], c["published"], c["reconnects"],
                 c["rejected"], c["connect_failures"], f" (last error: {sorted(errors)[0]})" if errors else "")


def _identity(config: FleetConfig, spec: MeterSpec) -> TLSIdentity:
    return TLSIdentity(config.ca, spec.cert, spec.key)


def _quiet_gmqtt(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # gmqtt 0.8's protocol raises AttributeError in connection_lost when a connection attempt is
    # abandoned during its TLS handshake (our connect timeout): nothing is lost, but asyncio would
    # log a traceback per meter in a storm.
    handle = str(context.get("handle", ""))
    if isinstance(context.get("exception"), AttributeError) and "MQTTProtocol.connection_lost" in handle:
        log.debug("gmqtt: a connection abandoned during its handshake closed")
        return
    loop.default_exception_handler(context)


def main() -> None:
    """Entry point of ``python -m devices.fleet``."""
    argparse.ArgumentParser(prog="python -m devices.fleet", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    level = os.environ.get("FMB_LOG_LEVEL", "INFO")
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if level.upper() != "DEBUG":  # gmqtt logs every lost connection with a traceback: thousands in a storm
        logging.getLogger("gmqtt").setLevel(logging.CRITICAL)
    try:
        config = FleetConfig.from_env(os.environ)
    except TestbedError as e:
        raise SystemExit(f"error: {e}") from None

    small_tls_buffers()  # every connection of this process is a meter's, which receives next to nothing

    async def run() -> None:
        fleet = Fleet(config)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_gmqtt)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fleet.stop)
        await fleet.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
