"""``fmb bench scale``: a utility's bus on one machine, thousands of meters each with its own certificate.

From a scale topology (``brokers/topologies/utility.toml``: a data centre and substations of
meters, ``--substations`` / ``--meters`` to resize it) the benchmark starts every broker itself
(``testbed.bench.common.start_broker``: the topology's configurations, ACLs and bridges, mutual
TLS with the project's PKI) and one fleet process per substation (``devices/fleet.py``: each meter
its own gmqtt MQTT v5 connection and certificate, readings with a sequence number and timestamp,
full-jitter reconnect backoff), rather than a whole ``LocalBus``: the supplies, cap banks, tablets,
DMS and monitor would add processes that carry no meter traffic. Meters have no feeder model (a
nominal 120 V reading, periodically): the physics does not ride on the bus. Phases:

* **connection ramp**: every fleet starts at once, each opening ``--connect-rate`` connections a
  second; time until every meter is connected (the fleets' heartbeats, 0.5 s ticks), TLS
  handshakes per second per broker, broker and fleet memory per connection (RSS from ``/proc``
  before and after), CPU of brokers and fleets (``/proc/<pid>/stat``);
* **steady state**, per ``--interval`` with every meter, then (after the storms) at the last interval
  with half the fleets stopped, a quarter... down to one: meter -> DMS latency, measured from the reading's own
  timestamp (``ts_ns``, set by the fleet as it publishes) to its arrival at a harness subscriber
  holding the recorder identity on the data centre's delivery broker, where the DMS reads (so the
  latency crosses the substation broker, the bridge and the data-centre broker); readings
  published and delivered per second, losses from the meters' sequence numbers;
* **reconnect storm**: the storm substation's (the largest) delivery broker is restarted (SIGTERM,
  start) with all its meters connected; time until every meter is connected again and until each
  has reported a reading published after the restart; meanwhile control commands
  (``BenchCommandProfile``, acknowledged by ``testbed.bench.echo``'s responder) go round trip on
  that substation's control broker (``segregated``), then, in a second storm, on the restarted
  delivery broker itself (``shared``);
* **Appendix A on one substation** (the last): after the phases above, the whole bus as a
  ``LocalBus`` (DMS, supplies, cap banks, feeder models, tablets, the fleets at the last interval),
  Appendix A repeated on that substation with every fleet reporting, then with every other
  substation's fleet stopped (idle); end-to-end p50 / p99 of each.

Targets (issue 12; reported against, not asserted): >= 10,000 meters over >= 10 substations all
connected; 1,000 readings/s with meter -> DMS p99 <= 100 ms; a 2,000-meter storm back in <= 30 s
with control p99 <= 100 ms on the segregated plane (``--storm-meters 2000`` gives the storm
substation 2,000 meters); memory per connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from brokers.mosquitto import render_acl
from testbed.backends import processes
from testbed.backends.environment import environment
from testbed.backends.local import LocalBus
from testbed.backends.processes import ProcessRecord
from testbed.bench.common import Processes, start_broker
from testbed.bench.scaleprobes import Commander, ProcessCpu, Readings, rss_kb
from testbed.core.errors import TestbedError
from testbed.core.results import (
    PercentilesIfAny,
    ScaleAppendixA,
    ScaleConditions,
    ScaleRamp,
    ScaleRampBroker,
    ScaleResult,
    ScaleScenarioRuns,
    ScaleSteady,
    ScaleStorm,
    ScaleTargets,
)
from testbed.core.scenario import load_scenario
from testbed.core.stats import percentiles, rounded
from testbed.core.topology import MAX_METERS_PER_FEEDER, MAX_SUBSTATIONS, SiteSpec, Topology, load_topology
from testbed.core.waiting import WaitTimeout, wait_until
from testbed.harness.runner import ScenarioRunner
from testbed.security.provision import ensure_pki
from testbed.transport.health import read_health
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["RESULT_FILE", "RESULT_SCHEMA", "ScaleOptions", "StormRun", "parse_backoff", "parse_intervals",
           "run_scale", "run_storms", "scale_topology", "summary"]

RESULT_SCHEMA: Final = "fmb.bench-scale/1"  # the shape: testbed.core.results.ScaleResult
RESULT_FILE = "bench-scale.json"
BACKOFF = (0.5, 20.0)  # the fleets' reconnect backoff (full jitter: base, cap), their own default
TICK_S = 0.25  # how often the harness samples the fleets' heartbeats
TARGETS: Final = {"meters_min": 10_000, "substations_min": 10, "readings_per_s_min": 1000.0,
                  "latency_p99_max_ms": 100.0, "storm_meters_min": 2000, "storm_back_max_s": 30.0,
                  "storm_control_p99_max_ms": 100.0}


@dataclass(frozen=True)
class ScaleOptions:
    """What ``fmb bench scale`` runs; :meth:`check` refuses nonsense in one line before anything starts."""

    substations: int | None = None  # None: the topology's
    meters: int | None = None  # per substation; None: the topology's
    storm_meters: int | None = None  # meters of the storm substation; None: as the others
    intervals_s: tuple[float, ...] = (10.0,)
    duration_s: float = 30.0
    connect_rate: float = 200.0
    command_rate: float = 20.0
    idle_control_s: float = 5.0
    appendix_a_runs: int = 20  # per configuration (loaded, idle); 0: not run
    backoff: tuple[float, float] = BACKOFF  # the meters' reconnect backoff, seconds (base, cap)
    quick: bool = False

    @classmethod
    def quick_smoke(cls) -> ScaleOptions:
        """A smoke of seconds for the tests: 2 substations x 20 meters, readings every second."""
        # 20 connections/s: a ramp of a second, long enough for the heartbeats (0.5 s) to time it.
        return cls(substations=2, meters=20, intervals_s=(1.0,), duration_s=3.0, connect_rate=20.0,
                   command_rate=20.0, idle_control_s=1.0, appendix_a_runs=3, quick=True)

    def check(self) -> None:
        for option, value, low, high in (("--substations", self.substations, 1, MAX_SUBSTATIONS),
                                         ("--meters", self.meters, 1, MAX_METERS_PER_FEEDER),
                                         ("--storm-meters", self.storm_meters, 1, MAX_METERS_PER_FEEDER)):
            if value is not None and not low <= value <= high:
                raise TestbedError(f"{option} is {value}; give {low} to {high:,}")
        base, cap = self.backoff
        if not (0.01 <= base <= cap <= 3600):
            raise TestbedError(f"--backoff is {base:g},{cap:g}; give BASE,CAP seconds, 0.01 <= BASE <= CAP <= 3600")
        if not 0 <= self.appendix_a_runs <= 10_000:
            raise TestbedError(f"--appendix-a is {self.appendix_a_runs}; give runs per configuration, 0 to 10000")
        if not self.intervals_s or any(not 0.05 <= i <= 86_400 for i in self.intervals_s):
            raise TestbedError(f"--interval is {','.join(f'{i:g}' for i in self.intervals_s) or 'empty'}; give "
                               "seconds between a meter's readings, 0.05 to 86400, e.g. 10 or 10,5")
        for option, number in (("--duration", self.duration_s), ("--connect-rate", self.connect_rate),
                               ("--command-rate", self.command_rate)):
            if not (number > 0 and math.isfinite(number)):
                raise TestbedError(f"{option} is {number:g}; give a number > 0")


def parse_intervals(text: str) -> tuple[float, ...]:
    """``10`` or ``10,5,2`` (seconds); a one-line error for anything else."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TestbedError(f"--interval is {text!r}; give seconds, e.g. 10 or 10,5") from None
    if not values:
        raise TestbedError(f"--interval is {text!r}; give seconds, e.g. 10 or 10,5")
    return values


def parse_backoff(text: str) -> tuple[float, float]:
    """``BASE,CAP`` seconds; a one-line error for anything else (the range: :meth:`ScaleOptions.check`)."""
    try:
        base, cap = (float(x) for x in text.split(","))
    except ValueError:
        raise TestbedError(f"--backoff is {text!r}; give BASE,CAP seconds, e.g. 0.5,20") from None
    return base, cap


# -- the topology at the size asked ----------------------------------------------------------------

def scale_topology(path: Path, options: ScaleOptions, work: Path) -> Topology:
    """``path`` resized as ``options`` ask (the first ``[[substations]]`` table), on free ports.

    The file is rewritten and loaded again, so the result is validated like any topology. With
    ``storm_meters`` one substation (``<name>-storm-001``) has that many meters, the rest as asked.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        load_topology(path)  # says it with the file, the field and the fix
        raise TestbedError(f"{path}: {e}") from None
    templates = data.get("substations")
    if not isinstance(templates, list) or not templates or not isinstance(templates[0], dict):
        load_topology(path)  # a broken file fails here with its field and fix
        raise TestbedError(f"{path} has no [[substations]] table: a scale benchmark needs one "
                           "(brokers/topologies/utility.toml or utility-small.toml)")
    first = templates[0]
    feeders = first.get("feeders", 1) if isinstance(first.get("feeders", 1), int) else 1
    if options.meters is not None:
        first["meters_per_feeder"] = max(1, math.ceil(options.meters / max(1, feeders)))
    if options.substations is not None:
        first["count"] = options.substations
    if options.storm_meters is not None:
        storm = {**first, "name": f"{first.get('name', 'sub')}-storm", "count": 1,
                 "meters_per_feeder": max(1, math.ceil(options.storm_meters / max(1, feeders)))}
        count = first.get("count", 1)
        if isinstance(count, int) and count <= 1:
            templates[0] = storm
        else:
            first["count"] = count - 1 if isinstance(count, int) else count
            templates.insert(0, storm)
    for template in templates:  # the whole bus's fleets (Appendix A's phase) read as often as ours
        if isinstance(template, dict):
            template["meter_period_s"] = options.intervals_s[-1]
    resized = work / Path(path).name
    resized.write_text(_toml(data))
    topology = load_topology(resized)
    if not topology.fleets:
        raise TestbedError(f"{path} declares no fleet of meters; give a [[substations]] table with meters")
    return topology.with_free_ports()


def _toml(data: dict[str, Any]) -> str:
    """The small TOML subset topology files use (tables, arrays of tables, scalars)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TestbedError(f"cannot rewrite the topology value {v!r}")

    def table(prefix: str, t: dict[str, Any], header: str) -> list[str]:
        lines = [header] if header else []
        lines += [f"{k} = {value(v)}" for k, v in t.items()
                  if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))]
        for k, v in t.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                lines += table(name, v, f"\n[{name}]")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines += table(name, item, f"\n[[{name}]]")
        return lines

    return "\n".join(table("", data, "")) + "\n"


# -- the bus of the benchmark -----------------------------------------------------------------------

@dataclass
class _Fleet:
    name: str
    site: str
    meters: int
    file: Path
    ready: Path
    record: ProcessRecord | None = None
    started: float = 0.0  # monotonic

    def health(self) -> tuple[float, dict[str, int]]:
        """(when the fleet wrote its last heartbeat, epoch seconds; its counters), (0, {}) before the first."""
        report = read_health(self.ready, stale_s=30).report
        counters = report.get("counters") if report else None
        if not report or not isinstance(counters, dict):
            return 0.0, {}
        return float(report.get("time", 0.0)), dict(counters)

    def counters(self) -> dict[str, int]:
        return self.health()[1]


class _Bus:
    """The brokers and fleets a scale run starts, stopped by pid at the end."""

    def __init__(self, topology: Topology, certs: Path, work: Path, interval_s: float, options: ScaleOptions,
                 say: Callable[[str], None]) -> None:
        self.topology, self.work, self.say = topology, work, say
        self.connect_rate, self.backoff = options.connect_rate, options.backoff
        self.procs = Processes(work)
        t0 = time.monotonic()
        self.pki = ensure_pki(topology, certs)  # as the bus provisions it: a substation's meters under its CA
        self.pki_s = time.monotonic() - t0
        self.brokers: dict[str, ProcessRecord] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.storm_site = max(topology.substations, key=lambda s: len(topology.devices_at(s.name))).name
        self.fleets = [self._fleet_file(name, interval_s) for name in topology.fleets]

    def identity(self, name: str) -> TLSIdentity:
        paths = self.pki.client(name)
        return TLSIdentity(self.pki.ca_cert, paths.cert, paths.key)

    def start_broker(self, name: str) -> None:
        broker = self.topology.broker(name)
        # The storm substation's delivery broker also carries the control plane's bench profiles,
        # for the storm with the control plane on the shared broker.
        shared = (render_acl(self.topology, self.topology.broker(f"{broker.site}-control"))
                  if broker.site == self.storm_site and broker.plane == "delivery" else "")
        record, endpoint = start_broker(self.procs, self.topology, broker, self.pki, self.work / name, shared)
        self.brokers[name], self.endpoints[name] = record, endpoint

    def start_brokers(self) -> None:
        # The data centre first: the substations' bridges connect to it.
        for site in sorted(self.topology.sites, key=lambda s: s.bridge_to is not None):
            for plane in ("delivery", "control"):
                self.start_broker(f"{site.name}-{plane}")
        self.say(f"  {len(self.brokers)} brokers up ({len(self.topology.substations)} substations and the data centre)")

    def _fleet_file(self, name: str, interval_s: float) -> _Fleet:
        meters = self.topology.fleets[name]
        site = meters[0].site
        entries = []
        for m in meters:
            paths = self.pki.client(m.id)
            feeder = self.topology.feeder_of(m.id)
            entries.append({"id": m.id, "cert": str(paths.cert), "key": str(paths.key), "period_s": interval_s,
                            "deadband_v": feeder.meter_deadband_v if feeder else 0.5})
        file = self.work / f"{name}.json"
        file.touch(mode=0o600)  # where each meter's key is: for the fleet's eyes only, as the local bus does
        file.write_text(json.dumps({"root": self.topology.root, "qos": self.topology.qos,
                                    "backoff": _backoff(self.backoff), "meters": entries}))
        return _Fleet(name, site, len(meters), file, self.work / f"{name}.ready")

    def set_interval(self, interval_s: float) -> None:
        self.fleets = [self._fleet_file(f.name, interval_s) for f in self.fleets]

    def start_fleets(self) -> None:
        for fleet in self.fleets:
            fleet.ready.unlink(missing_ok=True)
            delivery = self.endpoints[f"{fleet.site}-delivery"]
            fleet.started = time.monotonic()
            fleet.record = self.procs.start(fleet.name, [sys.executable, "-m", "devices.fleet"], env={
                "FMB_FLEET_ID": fleet.name, "FMB_DELIVERY": f"{delivery.host}:{delivery.port}",
                "FMB_CA": str(self.pki.ca_cert), "FMB_FLEET_FILE": str(fleet.file), "FMB_READY_FILE": str(fleet.ready),
                "FMB_FLEET_CONNECT_RATE": f"{self.connect_rate:g}"})

    def stop_fleets(self, fleets: list[_Fleet] | None = None) -> None:
        """SIGTERM to ``fleets`` (default: every one running); they disconnect their meters and exit."""
        group = self.running() if fleets is None else fleets
        self.procs.stop([f.record for f in group if f.record is not None], timeout_s=15)
        for f in group:
            f.record = None

    def running(self) -> list[_Fleet]:
        return [f for f in self.fleets if f.record is not None]

    def fleet_pids(self) -> list[int]:
        return [f.record.pid for f in self.running() if f.record is not None]

    def broker_pids(self) -> list[int]:
        return [r.pid for r in self.brokers.values()]

    def connected(self) -> dict[str, int]:
        return {f.name: f.counters().get("connected", 0) for f in self.running()}

    def check_fleets(self) -> None:
        """A fleet that exited is a failed run: say which and where its log is."""
        for f in self.fleets:
            if f.record is not None and not processes.alive(f.record):
                raise TestbedError(f"fleet {f.name} exited; see {f.record.log}")


# -- phases -------------------------------------------------------------------------------------------

def _stats(values: Sequence[float], digits: int = 2) -> PercentilesIfAny:
    return rounded(percentiles(values), digits) if values else {}  # type: ignore[return-value]


def _ramp(bus: _Bus, say: Callable[[str], None], timeout_s: float) -> ScaleRamp:
    before = {name: rss_kb(r.pid) for name, r in bus.brokers.items()}
    cpu = ProcessCpu({"brokers": bus.broker_pids, "fleets": bus.fleet_pids, "harness": lambda: [os.getpid()]})
    cpu.start()
    bus.start_fleets()
    t0 = time.monotonic()
    total = sum(f.meters for f in bus.fleets)
    timeline: list[list[float]] = []
    per_fleet: dict[str, list[tuple[float, int]]] = {f.name: [] for f in bus.fleets}
    done_at: dict[str, float] = {}
    last_say = t0
    while time.monotonic() - t0 < timeout_s:
        bus.check_fleets()
        now = time.monotonic()
        connected = bus.connected()
        for f in bus.fleets:
            per_fleet[f.name].append((now - f.started, connected[f.name]))
            if connected[f.name] >= f.meters and f.name not in done_at:
                done_at[f.name] = now - f.started
        timeline.append([round(now - t0, 2), sum(connected.values())])
        if now - last_say >= 2:
            last_say = now
            say(f"  ramp: {sum(connected.values()):,}/{total:,} meters connected after {now - t0:.0f} s")
        if len(done_at) == len(bus.fleets):
            break
        time.sleep(TICK_S)
    seconds_to_all = round(max(done_at.values()), 2) if len(done_at) == len(bus.fleets) else None
    time.sleep(1.0)  # let the brokers settle their buffers before reading memory
    cpu_used = cpu.result()
    rows: list[ScaleRampBroker] = []
    connected = bus.connected()
    for f in bus.fleets:
        broker = f"{f.site}-delivery"
        after = rss_kb(bus.brokers[broker].pid)
        fleet_rss = rss_kb(f.record.pid) if f.record else None
        seconds = done_at.get(f.name)
        samples = per_fleet[f.name]
        peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in _pairs(samples, 1.0)) if len(samples) > 4 else None
        b0 = before.get(broker)
        rows.append(ScaleRampBroker(
            broker=broker, fleet=f.name, meters=f.meters, connected=connected[f.name],
            seconds_to_all=round(seconds, 2) if seconds is not None else None,
            handshakes_per_s=_rate(samples, f.meters),
            peak_handshakes_per_s=round(peak, 1) if peak is not None else None,
            broker_rss_kb_before=b0, broker_rss_kb_after=after,
            broker_kb_per_connection=round((after - b0) / f.meters, 2) if after and b0 else None,
            fleet_rss_kb=fleet_rss, fleet_kb_per_connection=round(fleet_rss / f.meters, 1) if fleet_rss else None))
    say(f"  ramp: {sum(connected.values()):,}/{total:,} connected; all in "
        f"{f'{seconds_to_all:.1f} s' if seconds_to_all is not None else f'NOT within {timeout_s:.0f} s'}")
    return ScaleRamp(
        meters=total, substations=len(bus.fleets), connect_rate_per_fleet=bus.connect_rate,
        all_connected=seconds_to_all is not None, seconds_to_all=seconds_to_all,
        handshakes_per_s=_rate([(t, int(n)) for t, n in timeline], total), brokers=rows,
        broker_kb_per_connection=_stats([r["broker_kb_per_connection"] for r in rows
                                         if r["broker_kb_per_connection"] is not None]),
        fleet_kb_per_connection=_stats([r["fleet_kb_per_connection"] for r in rows
                                        if r["fleet_kb_per_connection"] is not None]),
        cpu=cpu_used, connected_by_time=timeline)


def _rate(samples: list[tuple[float, int]], meters: int) -> float | None:
    """Connections per second from the first sample with any connected to the first with all: the
    interpreter's start and the loading of keys before the first handshake do not count."""
    first = next(((t, n) for t, n in samples if n > 0), None)
    last = next((t for t, n in samples if n >= meters), None)
    if first is None or last is None or last <= first[0]:
        return None
    return round((meters - first[1]) / (last - first[0]), 1)


def _pairs(samples: list[tuple[float, int]], span_s: float) -> Iterable[tuple[tuple[float, int], tuple[float, int]]]:
    """Pairs of samples about ``span_s`` apart (for the peak rate over a second)."""
    j = 0
    for i, a in enumerate(samples):
        j = max(j, i + 1)
        while j < len(samples) and samples[j][0] - a[0] < span_s:
            j += 1
        if j < len(samples):
            yield a, samples[j]


def _steady(bus: _Bus, readings: Readings, interval_s: float, duration_s: float,
            say: Callable[[str], None]) -> ScaleSteady:
    fleets = bus.running()
    meters = sum(f.meters for f in fleets)
    time.sleep(min(interval_s, 10.0))  # every meter past its first (random-phase) reading
    _drain(readings, say)
    bus.check_fleets()
    cpu = ProcessCpu({"brokers": bus.broker_pids, "fleets": bus.fleet_pids, "harness": lambda: [os.getpid()]})
    published0 = sum(f.counters().get("published", 0) for f in fleets)
    lost0, dup0, rej0, earlier0, n0, bytes0 = readings.counts()
    readings.take()
    cpu.start()
    t0 = time.monotonic()
    time.sleep(duration_s)
    elapsed = time.monotonic() - t0
    samples = readings.take()
    published = sum(f.counters().get("published", 0) for f in fleets) - published0
    lost, dup, rej, earlier, n, nbytes = readings.counts()
    latency = _stats([s[1] / 1e6 for s in samples])
    point = ScaleSteady(
        meters=meters, substations=len(fleets), interval_s=interval_s, duration_s=round(elapsed, 2),
        offered_per_s=round(meters / interval_s, 1), published_per_s=round(published / elapsed, 1),
        delivered_per_s=round(len(samples) / elapsed, 1), latency_ms=latency, lost=lost - lost0,
        duplicated=dup - dup0, rejected=rej - rej0, earlier=earlier - earlier0,
        payload_bytes=round((nbytes - bytes0) / (n - n0), 1) if n > n0 else None, cpu=cpu.result())
    say(f"  steady {meters:,} meters every {interval_s:g} s: published {point['published_per_s']:,.0f}/s, "
        f"delivered {point['delivered_per_s']:,.0f}/s, meter -> DMS p50 {latency.get('p50', math.nan):.1f} "
        f"p99 {latency.get('p99', math.nan):.1f} ms, lost {point['lost']}")
    return point


def _drain(readings: Readings, say: Callable[[str], None], timeout_s: float = 120.0) -> None:
    """Wait until what the previous fleets published has stopped arriving (a backlog queued for the DMS
    side in an earlier, saturated point would otherwise delay this point's readings behind it)."""
    start, last = time.monotonic(), readings.counts()[3]
    while time.monotonic() - start < timeout_s:
        time.sleep(1.0)
        now = readings.counts()[3]
        if now == last:
            return
        last = now
    say(f"  (readings of the previous fleets were still arriving after {timeout_s:g} s)")


def _storm(bus: _Bus, readings: Readings, config: str, options: ScaleOptions, wait_s: float,
           say: Callable[[str], None]) -> ScaleStorm:
    site = bus.storm_site
    broker = f"{site}-delivery"
    fleet = next(f for f in bus.fleets if f.site == site)
    own = {m.id for m in bus.topology.fleets[fleet.name]}
    control = bus.endpoints[broker if config == "shared" else f"{site}-control"]
    bench = bus.identity("bench")
    target = f"responder-{config}"
    responder = bus.procs.start(f"responder-{config}", [sys.executable, "-m", "testbed.bench.echo"], {
        "FMB_CONTROL": f"{control.host}:{control.port}", "FMB_CA": str(bench.ca), "FMB_CERT": str(bench.cert),
        "FMB_KEY": str(bench.key), "FMB_ROOT": bus.topology.root, "FMB_QOS": str(bus.topology.qos),
        "FMB_DEVICE_ID": target})
    commander = Commander(bench, control, bus.topology.root, bus.topology.qos, target)
    try:
        deadline = time.monotonic() + 15
        while not commander.window(20, 0.25)["acked"]:  # the responder is subscribed
            if time.monotonic() > deadline:
                raise TestbedError(f"the echo responder never acknowledged a command; see {responder.log}")
        readings.take()
        t_idle = time.monotonic()
        idle = commander.window(options.command_rate, options.idle_control_s)
        before = _own_per_s(readings.take(), own, time.monotonic() - t_idle)
        reconnects0 = fleet.counters().get("reconnects", 0)
        cpu = ProcessCpu({"brokers": bus.broker_pids, "fleets": bus.fleet_pids, "harness": lambda: [os.getpid()]})
        cpu.start()
        first = commander.start(options.command_rate)
        t_stop = time.monotonic()
        killed = bus.procs.stop([bus.brokers[broker]], timeout_s=10)
        bus.start_broker(broker)
        t_up, t_up_epoch = time.monotonic(), time.time()
        readings.mark(time.time_ns())
        say(f"  storm ({config}): {broker} restarted in {t_up - t_stop:.2f} s{' (SIGKILLed)' if killed else ''}; "
            f"{fleet.meters:,} meters reconnecting")
        reconnected: float | None = None
        reported: float | None = None
        heard: dict[str, int] = {}
        last_say = t_up
        while time.monotonic() - t_up < wait_s and (reconnected is None or reported is None):
            bus.check_fleets()
            if time.monotonic() - last_say >= 5:
                last_say = time.monotonic()
                say(f"  storm ({config}): {len(heard):,}/{fleet.meters:,} meters reported again after "
                    f"{last_say - t_up:.0f} s")
            beat, counters = fleet.health()
            # Every meter connected again, by a heartbeat written after the restart (0.5 s ticks).
            if (reconnected is None and beat >= t_up_epoch and counters.get("connected", 0) >= fleet.meters
                    and counters.get("reconnects", 0) >= reconnects0 + fleet.meters):
                reconnected = beat - t_up_epoch
            heard = {m: ns for m, ns in readings.heard_after().items() if m in own}
            if reported is None and len(heard) >= fleet.meters:
                reported = (max(heard.values()) - readings.mark_ns) / 1e9
            time.sleep(TICK_S)
        # The delivery window ends with the storm, before the commander waits for late acknowledgements.
        storm_s = time.monotonic() - t_stop
        during = _own_per_s(readings.take(), own, storm_s)
        storm_control = commander.stop(first)
        cpu_used = cpu.result()
        mark = readings.mark_ns
        times = sorted((ns - mark) / 1e9 for ns in heard.values())
        by_time = [[round(t, 2), i + 1] for i, t in enumerate(times)]
        reconnects = fleet.counters().get("reconnects", 0) - reconnects0
        say(f"  storm ({config}): all connected {f'after {reconnected:.1f} s' if reconnected is not None else 'NO'}, "
            f"all reported {f'after {reported:.1f} s' if reported is not None else f'NO ({len(heard)})'}; control "
            f"p99 idle {idle.get('p99', math.nan):.1f} ms, storm {storm_control.get('p99', math.nan):.1f} ms, "
            f"unacked {storm_control['sent'] - storm_control['acked']}")
        return ScaleStorm(config=config, broker=broker, meters=fleet.meters, down_s=round(t_up - t_stop, 3),
                          reconnected_s=round(reconnected, 2) if reconnected is not None else None,
                          reported_s=round(reported, 2) if reported is not None else None, reported=len(heard),
                          reconnects=reconnects, wait_s=wait_s, control_idle_ms=idle, control_ms=storm_control,
                          reported_by_time=_thin(by_time, 400), cpu=cpu_used, delivered_before_per_s=before,
                          delivered_per_s=during, storm_s=round(storm_s, 2))
    finally:
        commander.close()
        bus.procs.stop([responder])


def _own_per_s(samples: list[tuple[int, int, str]], own: set[str], seconds: float) -> float:
    """Readings/s of the storm substation's own meters among ``samples`` (the DMS side's, over ``seconds``)."""
    return round(sum(1 for s in samples if s[2] in own) / max(seconds, 1e-6), 1)


def _halvings(count: int) -> list[int]:
    """How many fleets the steady states against the number of meters keep: count / 2, count / 4, ... 1."""
    steps, keep = [], count // 2
    while keep >= 1:
        steps.append(keep)
        keep //= 2
    return steps


def _thin(rows: list[list[float]], most: int) -> list[list[float]]:
    """At most ``most`` rows, evenly picked, the last kept (a curve for the plot, not every meter)."""
    if len(rows) <= most:
        return rows
    step = len(rows) / most
    picked = [rows[int(i * step)] for i in range(most)]
    return [*picked[:-1], rows[-1]]


def _wait_all_connected(bus: _Bus, timeout_s: float) -> None:
    def settled() -> bool:
        bus.check_fleets()
        connected = bus.connected()
        return all(connected[f.name] >= f.meters for f in bus.running())

    with contextlib.suppress(WaitTimeout):
        wait_until(settled, timeout_s, interval_s=TICK_S, what="every meter connected")


def _appendix_a(topology: Topology, certs: Path, runs: int, work: Path, say: Callable[[str], None]) -> ScaleAppendixA:
    """Appendix A on one substation of the whole bus (LocalBus: DMS, supplies, cap banks, feeder models,
    fleets), every fleet reporting, then with every other substation's fleet stopped."""
    substation = topology.substations[-1].name  # not the storm's
    scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
    pki = ensure_pki(topology, certs)  # (done by the first phase: only checks)
    state = Path(tempfile.mkdtemp(prefix="fmb-scale-a-"))  # short: the feeders' Unix sockets live in it
    bus = LocalBus(topology, pki, state, monitor=False, ui_port=None)
    t0 = time.monotonic()
    say(f"  Appendix A: starting the whole bus ({len(topology.devices):,} devices) for {runs} runs on {substation}")
    try:
        bus.start()  # stops what it started if it fails
    except TestbedError as e:  # the other phases' figures stand: say why this one is missing
        shutil.rmtree(state, ignore_errors=True)
        say(f"  Appendix A: not run, the whole bus did not start in {time.monotonic() - t0:.0f} s: {e}")
        return ScaleAppendixA(ran=False, why=f"the whole bus (LocalBus) did not start after "
                              f"{time.monotonic() - t0:.0f} s: {str(e)[:400]}")
    try:
        started = time.monotonic() - t0
        configs: dict[str, ScaleScenarioRuns] = {}
        with ScenarioRunner(bus, scenario, substation=substation) as runner:
            for config in ("loaded", "idle"):
                if config == "idle":
                    for fleet, meters in topology.fleets.items():
                        if meters[0].site != substation:
                            bus.stop_process(fleet)
                result = runner.run(runs, work / f"appendix-a-{config}")
                e2e = [r["e2e_ms"] for r in result["runs"] if r["passed"] and r["e2e_ms"] is not None]
                runs_stats = ScaleScenarioRuns(passed=len(e2e), failed=result["repetitions"] - len(e2e),
                                               failure=result["failure"])
                runs_stats.update(_stats(e2e))  # type: ignore[typeddict-item]
                configs[config] = runs_stats
                say(f"  Appendix A on {substation}, {config}: {len(e2e)}/{result['repetitions']} passed, "
                    f"e2e p50 {runs_stats.get('p50', math.nan):.0f} p99 {runs_stats.get('p99', math.nan):.0f} ms"
                    + (f" ({result['failure']})" if result["failure"] else ""))
    finally:
        bus.stop()
        shutil.rmtree(state, ignore_errors=True)
    loaded, idle = configs["loaded"].get("p99"), configs["idle"].get("p99")
    return ScaleAppendixA(
        ran=True, why="loaded: every fleet reporting; idle: every other substation's fleet stopped (the scenario's "
                      "own fleet runs: its regulating meter is one of them)",
        substation=substation, repetitions=runs, bus_start_s=round(started, 1), loaded=configs["loaded"],
        idle=configs["idle"], loaded_over_idle_p99=round(loaded / idle, 2) if loaded and idle else None)


def _targets(ramp: ScaleRamp, steady: list[ScaleSteady], storms: list[ScaleStorm]) -> ScaleTargets:
    t = TARGETS
    steady_met = any(p["delivered_per_s"] >= t["readings_per_s_min"]
                     and p["latency_ms"].get("p99", math.inf) <= t["latency_p99_max_ms"] for p in steady)
    segregated = [s for s in storms if s["config"] == "segregated"]
    storm_met = any(s["meters"] >= t["storm_meters_min"] and s["reported_s"] is not None
                    and s["reported_s"] <= t["storm_back_max_s"]
                    and s["control_ms"].get("p99", math.inf) <= t["storm_control_p99_max_ms"]
                    and s["control_ms"]["acked"] == s["control_ms"]["sent"] for s in segregated)
    return ScaleTargets(
        meters_min=int(t["meters_min"]), substations_min=int(t["substations_min"]),
        all_connected_met=ramp["all_connected"] and ramp["meters"] >= t["meters_min"]
        and ramp["substations"] >= t["substations_min"],
        readings_per_s_min=t["readings_per_s_min"], latency_p99_max_ms=t["latency_p99_max_ms"], steady_met=steady_met,
        storm_meters_min=int(t["storm_meters_min"]), storm_back_max_s=t["storm_back_max_s"],
        storm_control_p99_max_ms=t["storm_control_p99_max_ms"], storm_met=storm_met,
        memory_reported=all(r["broker_kb_per_connection"] is not None and r["fleet_kb_per_connection"] is not None
                            for r in ramp["brokers"]))


def _loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _available_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def run_scale(topology_path: Path, certs: Path, options: ScaleOptions, out: Path,
              progress: Callable[[str], None] | None = None) -> ScaleResult:
    """The whole benchmark; writes ``out/bench-scale.json`` and returns it."""
    say = progress or (lambda line: None)
    options.check()
    load_before, memory_before = _loads(), _available_gib()
    work = Path(tempfile.mkdtemp(prefix="fmb-bench-scale-"))
    ok = False
    try:
        topology = scale_topology(topology_path, options, work)
        meters = sum(len(m) for m in topology.fleets.values())
        say(f"scale benchmark: {meters:,} meters over {len(topology.fleets)} substations "
            f"({topology.name}), readings every {', '.join(f'{i:g}' for i in options.intervals_s)} s; "
            f"load average {load_before[0]:.2f}")
        bus = _Bus(topology, certs, work, options.intervals_s[0], options, say)
        say(f"  PKI ready in {bus.pki_s:.1f} s ({len(topology.client_identities()):,} client identities)")
        readings: Readings | None = None
        try:
            bus.start_brokers()
            readings = Readings(bus.identity("recorder"), bus.endpoints[f"{_datacentre(topology).name}-delivery"],
                                topology.root, topology.qos)
            ramp_timeout = max(120.0, 3 * meters / options.connect_rate + 60, meters / 20)
            ramp = _ramp(bus, say, ramp_timeout)
            steady: list[ScaleSteady] = []
            for n, interval in enumerate(options.intervals_s):
                if n:
                    bus.stop_fleets()
                    readings.restart_sequences()
                    bus.set_interval(interval)
                    bus.start_fleets()
                    _wait_all_connected(bus, ramp_timeout)
                steady.append(_steady(bus, readings, interval, options.duration_s, say))
            wait_s = max(4 * TARGETS["storm_back_max_s"], 3 * options.intervals_s[-1] + 10)
            storms = []
            for config in ("segregated", "shared"):
                _wait_all_connected(bus, ramp_timeout)
                time.sleep(min(2.0, options.intervals_s[-1]))
                storms.append(_storm(bus, readings, config, options, wait_s, say))
            # Against the number of meters: fleets stopped (no restart needed) down to one substation.
            for keep in _halvings(len(bus.fleets)):
                bus.stop_fleets(bus.running()[keep:])
                steady.append(_steady(bus, readings, options.intervals_s[-1], options.duration_s, say))
            tls = readings.client.socket()
            tls_version = tls.version() if tls is not None and hasattr(tls, "version") else None
        finally:
            if readings is not None:
                readings.close()
            bus.procs.stop(timeout_s=15)
        appendix_a = (_appendix_a(topology, certs, options.appendix_a_runs, work, say) if options.appendix_a_runs
                      else ScaleAppendixA(ran=False, why="--appendix-a 0"))
        ok = True
    finally:
        if ok:
            _keep_logs(work, out / "logs")
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"  (the run's brokers' and fleets' logs are kept in {work})")
    conditions = ScaleConditions(
        topology=str(topology_path), substations=len(topology.fleets), meters=meters,
        meters_per_substation=[f.meters for f in bus.fleets], storm_substation=bus.storm_site,
        intervals_s=list(options.intervals_s), duration_s=options.duration_s, qos=topology.qos,
        tls_version=tls_version, connect_rate_per_fleet=options.connect_rate, backoff=_backoff(options.backoff),
        command_rate=options.command_rate, idle_control_s=options.idle_control_s, repetitions=1, quick=options.quick,
        started="brokers (start_broker: the topology's configurations, ACLs, bridges; the data centre without "
                "its SIGUSR1 snapshot ticker) and one fleet per substation as processes of the benchmark, not a "
                "LocalBus (no supplies, cap banks, tablets, DMS, monitor); meters without a feeder model",
        dms_side="a harness subscriber (paho, recorder identity) on the data centre's delivery broker, where the "
                 "DMS reads; latency = its receive time - the reading's ts_ns (one machine, one clock)",
        fleet="devices/fleet.py on gmqtt, one process per substation, one MQTT v5 connection and certificate per "
              "meter, periodic readings at random phase",
        commander="paho-mqtt in the benchmark process, BenchCommandProfile -> testbed.bench.echo -> BenchAckProfile",
        load_average_before=load_before, load_average_after=_loads(), memory_available_gib_before=memory_before,
        pki_seconds=round(bus.pki_s, 1))
    result = ScaleResult(schema=RESULT_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         conditions=conditions, ramp=ramp, steady=steady, storm=storms, appendix_a=appendix_a,
                         targets=_targets(ramp, steady, storms),
                         environment=environment(topology, tls_version, "local"))
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def steady_point(topology_path: Path, certs: Path, meters: int, interval_s: float, duration_s: float,
                 say: Callable[[str], None]) -> ScaleSteady:
    """One steady state of one substation's fleet as the benchmark measures it (its brokers, the data
    centre's, the fleet and the DMS-side subscriber in this process): ``fmb model calibrate`` takes the
    clients' CPU per reading from it."""
    options = ScaleOptions(substations=1, meters=meters, intervals_s=(interval_s,), duration_s=duration_s)
    options.check()
    work = Path(tempfile.mkdtemp(prefix="fmb-steady-"))
    try:
        topology = scale_topology(topology_path, options, work)
        bus = _Bus(topology, certs, work, interval_s, options, say)
        readings: Readings | None = None
        try:
            bus.start_brokers()
            readings = Readings(bus.identity("recorder"), bus.endpoints[f"{_datacentre(topology).name}-delivery"],
                                topology.root, topology.qos)
            bus.start_fleets()
            _wait_all_connected(bus, max(120.0, 3 * meters / options.connect_rate + 60))
            return _steady(bus, readings, interval_s, duration_s, say)
        finally:
            if readings is not None:
                readings.close()
            bus.procs.stop(timeout_s=15)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class StormRun:
    """What :func:`run_storms` measured: the storms in order, and what a result needs to state them."""

    storms: list[ScaleStorm]
    topology: Topology
    tls_version: str | None
    connect_s: float | None  # every meter connected after the fleets started; None: not within the time-out


def run_storms(topology_path: Path, certs: Path, options: ScaleOptions, configs: Sequence[str],
               say: Callable[[str], None]) -> StormRun:
    """Only the reconnect storms (one per ``configs`` entry: "segregated", "shared"), on the brokers and
    fleets ``options`` size, with no ramp figures, steady states or Appendix A: ``fmb bench storm``
    sweeps the storm substation's size with it. Everything it starts is stopped before it returns."""
    options.check()
    work = Path(tempfile.mkdtemp(prefix="fmb-bench-storm-"))
    ok = False
    try:
        topology = scale_topology(topology_path, options, work)
        bus = _Bus(topology, certs, work, options.intervals_s[-1], options, say)
        readings: Readings | None = None
        try:
            bus.start_brokers()
            readings = Readings(bus.identity("recorder"), bus.endpoints[f"{_datacentre(topology).name}-delivery"],
                                topology.root, topology.qos)
            meters = sum(f.meters for f in bus.fleets)
            timeout = max(120.0, 3 * meters / options.connect_rate + 60)
            t0 = time.monotonic()
            bus.start_fleets()
            _wait_all_connected(bus, timeout)
            connected = bus.connected()
            connect_s = (time.monotonic() - t0 if all(connected[f.name] >= f.meters for f in bus.running())
                         else None)
            wait_s = max(4 * TARGETS["storm_back_max_s"], 3 * options.intervals_s[-1] + 10)
            storms = []
            for config in configs:
                _wait_all_connected(bus, timeout)
                time.sleep(min(2.0, options.intervals_s[-1]))
                storms.append(_storm(bus, readings, config, options, wait_s, say))
            tls = readings.client.socket()
            tls_version = tls.version() if tls is not None and hasattr(tls, "version") else None
        finally:
            if readings is not None:
                readings.close()
            bus.procs.stop(timeout_s=15)
        ok = True
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"  (the run's brokers' and fleets' logs are kept in {work})")
    return StormRun(storms, topology, tls_version, round(connect_s, 2) if connect_s is not None else None)


def _backoff(backoff: tuple[float, float]) -> dict[str, float]:
    return {"base_s": backoff[0], "cap_s": backoff[1]}


def _keep_logs(work: Path, logs: Path) -> None:
    """The brokers', fleets' and responders' logs beside the result (what a surprising figure is checked against)."""
    logs.mkdir(parents=True, exist_ok=True)
    for log in work.rglob("*.log"):
        name = log.name if log.parent == work else f"{log.parent.name}.log"
        shutil.copyfile(log, logs / name)


def _datacentre(topology: Topology) -> SiteSpec:
    storm_bridge = topology.substations[0].bridge_to
    return next(s for s in topology.sites if s.name == storm_bridge)


def summary(result: ScaleResult) -> str:
    """The headline figures against the targets, for the terminal."""
    ramp, t = result["ramp"], result["targets"]
    lines = [f"scale benchmark: {ramp['meters']:,} meters over {ramp['substations']} substations "
             f"(load average {result['conditions']['load_average_before'][0]:.2f} before, "
             f"{result['conditions']['load_average_after'][0]:.2f} after)",
             f"  ramp: all connected {_s(ramp['seconds_to_all']) if ramp['all_connected'] else 'NO'}"
             f", {_rate_text(ramp['handshakes_per_s'])} handshakes/s in all; broker "
             f"{ramp['broker_kb_per_connection'].get('p50', math.nan):.1f} KiB and fleet "
             f"{ramp['fleet_kb_per_connection'].get('p50', math.nan):.0f} KiB per connection (median of substations)"
             f"; target >= {t['meters_min']:,} meters, >= {t['substations_min']} substations: "
             f"{'met' if t['all_connected_met'] else 'NOT met'}"]
    for p in result["steady"]:
        lat = p["latency_ms"]
        lines.append(f"  steady {p['meters']:,} meters every {p['interval_s']:g} s: delivered "
                     f"{p['delivered_per_s']:,.0f}/s, meter -> DMS p50 {lat.get('p50', math.nan):.1f} "
                     f"p99 {lat.get('p99', math.nan):.1f} ms, lost {p['lost']}")
    lines.append(f"  target {t['readings_per_s_min']:,.0f} readings/s with p99 <= {t['latency_p99_max_ms']:g} ms: "
                 f"{'met' if t['steady_met'] else 'NOT met'}")
    for s in result["storm"]:
        c = s["control_ms"]
        lines.append(f"  storm {s['config']:10} {s['meters']:,} meters: reconnected {_s(s['reconnected_s'])}, "
                     f"reported {_s(s['reported_s'])}; control p99 {c.get('p99', math.nan):.1f} ms "
                     f"(idle {s['control_idle_ms'].get('p99', math.nan):.1f}), unacked {c['sent'] - c['acked']}")
    lines.append(f"  target a {t['storm_meters_min']:,}-meter storm back <= {t['storm_back_max_s']:g} s, control p99 "
                 f"<= {t['storm_control_p99_max_ms']:g} ms segregated: {'met' if t['storm_met'] else 'NOT met'}")
    a = result["appendix_a"]
    if a["ran"] and "loaded" in a and "idle" in a:
        lines.append(f"  Appendix A on {a.get('substation')}: e2e p50 / p99 {a['loaded'].get('p50', math.nan):.0f} / "
                     f"{a['loaded'].get('p99', math.nan):.0f} ms with every fleet reporting, "
                     f"{a['idle'].get('p50', math.nan):.0f} / {a['idle'].get('p99', math.nan):.0f} ms idle "
                     f"(passed {a['loaded']['passed']} + {a['idle']['passed']} of {2 * a.get('repetitions', 0)})")
    else:
        lines.append(f"  Appendix A under load: not run ({a['why']})")
    return "\n".join(lines)


def _rate_text(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "? (all within one heartbeat)"


def _s(value: float | None) -> str:
    return f"in {value:.1f} s" if value is not None else "NO"
