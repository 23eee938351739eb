"""``fmb bench latency``: Appendix A end to end against one plain broker hop, per QoS level.

For each QoS level a fresh bus is started whose devices publish and subscribe at that QoS (the
caller supplies the buses: :func:`local_buses` starts local processes on free ports). On it,
after a warm-up, the scenario is repeated and every repetition's end-to-end and per-step times
are kept; between the repetitions, on the same running brokers, a plain publish -> broker ->
subscriber hop is timed (one publisher, one subscriber, one message in flight, TLS, the same QoS, a
payload the size of a supply command; a few after each repetition, so that the baseline sees the
machine's load as the scenario does). Each repetition is also split into its waterfall
(:mod:`testbed.bench.waterfall`): where the time goes, bus or devices. The overhead ratio is
end-to-end p50 / (broker traversals on the critical path x one-hop p50): what the devices, the
feeder model and the bridge add to the bus itself.

The result (``bench-latency.json``, schema :data:`RESULT_SCHEMA`) keeps the raw end-to-end and
one-hop samples so that CDFs can be drawn from it; nothing is re-measured to draw a figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

from testbed.backends.environment import environment
from testbed.backends.local import LocalBus
from testbed.bench import waterfall
from testbed.core.errors import ScenarioError, TestbedError
from testbed.core.payloads import encode
from testbed.core.results import (
    CriticalPath,
    LatencyByQosV3,
    LatencyResultV3,
    LatencyStep,
    OneHop,
    Percentiles,
    Repetition,
    ScenarioStep,
)
from testbed.core.scenario import Scenario
from testbed.core.stats import percentiles, rounded
from testbed.core.topics import topic
from testbed.core.topology import Topology
from testbed.harness.runner import Bus, ScenarioRunner
from testbed.security.pki import PKI
from testbed.transport.mqtt import connect, publish_properties

__all__ = [
    "ONE_HOP_WARMUP",
    "PERCENTILES",
    "OneHopProbe",
    "RESULT_FILE",
    "RESULT_SCHEMA",
    "TARGET_RATIO",
    "critical_path",
    "critical_path_traversals",
    "local_buses",
    "measure_qos",
    "one_hop",
    "parse_qos_levels",
    "run_latency",
    "source_revision",
    "step_traversals",
    "summary",
]

RESULT_SCHEMA: Final = "fmb.bench-latency/3"  # the shape: testbed.core.results.LatencyResultV3 (/2: LatencyResult)
RESULT_FILE = "bench-latency.json"
TARGET_RATIO = 1.3
PERCENTILES = (50, 90, 99)
ONE_HOP_WARMUP = 50
_DIGITS = 4  # 0.1 µs: below the clock's useful resolution for these hops, keeps the JSON small

BusFactory = Callable[[int], AbstractContextManager[Bus]]
Log = Callable[[str], None]


def _stats(samples: Sequence[float]) -> Percentiles:
    return rounded(percentiles(samples, PERCENTILES), _DIGITS)


def parse_qos_levels(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; raises TestbedError naming the fix on anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or any(q not in (0, 1, 2) for q in levels) or len(set(levels)) != len(levels):
        raise TestbedError(f"--qos is {text!r}; give distinct levels from 0, 1, 2 separated by commas, e.g. 0,1,2")
    return levels


class OneHopProbe:
    """One publisher and one subscriber on ``broker`` at the bus's QoS, timing one message at a time
    (TLS, a payload the size of a supply command); close it after use."""

    def __init__(self, bus: Bus, broker: str = "field-control") -> None:
        t = bus.topology
        self.broker, self.qos = broker, t.qos
        self.name = topic(t.root, "SupplyControlProfile", "bench-probe")  # no device has this mRID
        self.payload = encode("SupplyControlProfile", "operator", 0, {"setpoint_v": 120.0})
        self._received = threading.Event()
        self._stamps: dict[str, int] = {}
        subscribed = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            self._stamps["recv"] = time.perf_counter_ns()
            self._received.set()

        def on_connect(c: Any) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(self.name, t.qos)

        self._sub = connect(f"bench-sub-{time.monotonic_ns() % 10**9}", bus.identity("recorder"),
                            bus.endpoint(broker), on_message=on_message, on_connect=on_connect)
        self._pub = connect(f"bench-pub-{time.monotonic_ns() % 10**9}", bus.identity("operator"),
                            bus.endpoint(broker))
        if not subscribed.wait(10):
            self.close()
            raise ScenarioError("the one-hop subscriber could not subscribe in 10 s")

    def sample(self, count: int) -> list[float]:
        """``count`` hops, one after the other: publish to the subscriber's callback, in ms."""
        samples = []
        for i in range(count):
            self._received.clear()
            sent = time.perf_counter_ns()
            self._pub.publish(self.name, self.payload, self.qos, properties=publish_properties(None))
            if not self._received.wait(5):
                raise ScenarioError(f"one-hop message {i} on {self.broker} not received in 5 s")
            samples.append((self._stamps["recv"] - sent) / 1e6)
        return samples

    def close(self) -> None:
        for c in (self._sub, self._pub):
            c.disconnect()
            c.loop_stop()


def one_hop(bus: Bus, count: int, broker: str = "field-control", warmup: int = 50) -> OneHop:
    """Time ``count`` sequential publish -> subscriber hops on ``broker`` at the bus's QoS.

    Returns the broker, the payload size, the counts and the raw samples in ms.
    """
    probe = OneHopProbe(bus, broker)
    try:
        probe.sample(warmup)
        samples = probe.sample(count)
    finally:
        probe.close()
    return {"broker": broker, "payload_bytes": len(probe.payload), "count": count, "warmup": warmup,
            "samples_ms": samples}


def critical_path_traversals(topology: Topology, scenario: Scenario, steps: list[ScenarioStep]) -> CriticalPath:
    """Broker traversals from the trigger to the end, following each step's ``after`` link back.

    A step whose receivers sit at its publisher's site crosses one broker; one whose receivers
    sit at another site crosses two (the local broker and, over the bridge, the remote one).
    """
    chain = critical_path(scenario)
    per_step = {str(n): step_traversals(topology, steps[n - 1]) for n in chain}
    return {"path": chain, "per_step": per_step, "total": sum(per_step.values())}


def critical_path(scenario: Scenario) -> list[int]:
    """The step numbers from the trigger to the last step, following each step's ``after`` back."""
    chain, n = [], len(scenario.steps)
    while n:
        chain.append(n)
        n = scenario.steps[n - 1].after
    chain.reverse()
    return chain


def step_traversals(topology: Topology, step: ScenarioStep) -> int:
    """Brokers a step's message crosses: 1 to receivers at its publisher's site, 2 over the bridge."""
    here = topology.device(step["device"]).site
    return 2 if any(topology.device(r).site != here for r in step["receivers"]) else 1


def _repetitions(runner: ScenarioRunner, count: int, qos: int, phase: str, log: Log,
                 each: Callable[[Repetition], object] | None = None) -> list[Repetition]:
    """``count`` repetitions; stops at the first failure (a benchmark of a broken bus is no figure).
    ``each`` sees every passed repetition at once, while the recorder still holds its messages."""
    reps = []
    every = max(1, count // 10)
    for i in range(1, count + 1):
        rep = runner.run_once(i)
        if not rep["passed"]:
            raise ScenarioError(f"QoS {qos}: {phase} repetition {i} failed: {rep['failure']}")
        if each is not None:
            each(rep)
        reps.append(rep)
        if phase == "measured" and (i % every == 0 or i == count):
            so_far = percentiles([r["e2e_ms"] for r in reps if r["e2e_ms"] is not None], (50,))["p50"]
            log(f"  QoS {qos}: repetition {i}/{count}, end-to-end p50 so far {so_far:.2f} ms")
    return reps


def measure_qos(bus: Bus, scenario: Scenario, repeat: int, warmup: int, hops: int,
                log: Log = print) -> LatencyByQosV3:
    """One QoS level on one running bus: the scenario repetitions (each split into its waterfall
    from the recorder's sightings), then the one-hop baseline."""
    qos = bus.topology.qos
    split: list[tuple[list[int], list[waterfall.Segment]] | str] = []
    hop_samples: list[float] = []
    # The baseline is taken between the repetitions, a few hops after each, so that it sees the load
    # they see: on a shared machine a baseline measured apart moved by 3x from one minute to the next.
    per_rep = -(-hops // repeat)
    probe = OneHopProbe(bus)
    try:
        with ScenarioRunner(bus, scenario) as runner:
            _repetitions(runner, warmup, qos, "warm-up", log)
            probe.sample(ONE_HOP_WARMUP)

            def after_each(rep: Repetition) -> None:
                try:
                    split.append(waterfall.split(bus.topology, rep, runner.recorder.snapshot(rep["first_index"])))
                except waterfall.Incomplete as e:
                    split.append(str(e))
                hop_samples.extend(probe.sample(min(per_rep, hops - len(hop_samples))))

            reps = _repetitions(runner, repeat, qos, "measured", log, after_each)
            tls = runner.recorder.tls_version
    finally:
        probe.close()
    hop: OneHop = {"broker": probe.broker, "payload_bytes": len(probe.payload), "count": hops,
                   "warmup": ONE_HOP_WARMUP, "samples_ms": hop_samples}
    shown = reps[-1]["steps"]
    traversals = critical_path_traversals(bus.topology, scenario, shown)
    e2e_samples = [r["e2e_ms"] for r in reps if r["e2e_ms"] is not None]  # every one: they all passed
    steps: list[LatencyStep] = []
    for i, step in enumerate(shown):
        key = str(step["n"])
        steps.append({
            "n": step["n"], "name": step["name"], "device": step["device"], "receivers": step["receivers"],
            "plane": step["plane"], "after": step["after"],
            "on_critical_path": key in traversals["per_step"], "traversals": step_traversals(bus.topology, step),
            "hop_ms": _stats([r["steps"][i]["hop_ms"] for r in reps]),
        })
    # The last leg, from the diagram's publish to the tablet's display, belongs to no step.
    display = _stats([r["e2e_ms"] - r["steps"][-1]["t_ms"] for r in reps if r["e2e_ms"] is not None])
    e2e, hop_stats = _stats(e2e_samples), _stats(hop["samples_ms"])
    expected = traversals["total"] * hop_stats["p50"]
    ratio = e2e["p50"] / expected
    falls = waterfall.summarise(split, e2e_samples, traversals["total"], hop_stats["p50"])
    if not falls["sums_within_tolerance"]:
        log(f"  QoS {qos}: the waterfall's p50s sum to {falls['sum_of_p50_ms']:.2f} ms against an end-to-end p50 "
            f"of {falls['e2e_p50_ms']:.2f} ms ({falls['sum_deviation']:+.1%}): outside the 5 % the issue asks")
    return {
        "qos": qos,
        "tls_version": tls,
        "e2e_ms": e2e,
        "steps": steps,
        "display_ms": display,
        "one_hop_ms": hop_stats,
        "one_hop": {"broker": hop["broker"], "payload_bytes": hop["payload_bytes"], "count": hop["count"],
                    "warmup": hop["warmup"]},
        "critical_path": traversals,
        "critical_path_one_hop_ms": round(expected, _DIGITS),
        "overhead_ratio": round(ratio, 3),
        "meets_target": ratio <= TARGET_RATIO,
        "samples": {"e2e_ms": [round(v, _DIGITS) for v in e2e_samples],
                    "one_hop_ms": [round(v, _DIGITS) for v in hop["samples_ms"]]},
        "waterfall": falls,
    }


@contextlib.contextmanager
def _local_bus(topology: Topology, pki: PKI, qos: int, log: Log) -> Iterator[Bus]:
    variant = dataclasses.replace(topology, qos=qos).with_free_ports()
    with tempfile.TemporaryDirectory(prefix=f"fmb-bench-qos{qos}-") as state:
        bus = LocalBus(variant, pki, Path(state))
        log(f"QoS {qos}: starting {len(variant.brokers)} brokers and {len(variant.devices)} devices "
            f"on free ports (state {state})")
        bus.start()
        try:
            yield bus
        finally:
            bus.stop()


def local_buses(topology: Topology, pki: PKI, log: Log = print) -> BusFactory:
    """A factory of fresh local buses of ``topology`` at a given QoS, each stopped after use."""
    return lambda qos: _local_bus(topology, pki, qos, log)


def source_revision() -> str | None:
    """The checkout's commit, ``+dirty`` with uncommitted changes; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def run_latency(buses: BusFactory, topology: Topology, scenario: Scenario, qos_levels: Iterable[int],
                repeat: int, warmup: int, hops: int, out: Path, log: Log = print) -> LatencyResultV3:
    """The whole benchmark, one fresh bus per QoS level; writes ``out/bench-latency.json``."""
    if repeat < 2:
        raise TestbedError(f"--repeat is {repeat}; percentiles need 2 or more repetitions")
    if warmup < 0 or hops < 2:
        raise TestbedError(f"--warmup is {warmup} and --hops {hops}; give warmup >= 0 and hops >= 2")
    levels = list(qos_levels)
    by_qos = []
    started, load_before = time.monotonic(), os.getloadavg()
    for qos in levels:
        with buses(qos) as bus:
            by_qos.append(measure_qos(bus, scenario, repeat, warmup, hops, log))
    env = environment(topology, by_qos[0]["tls_version"], "local")
    env["qos"] = levels
    result: LatencyResultV3 = {
        "schema": RESULT_SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conditions": {
            "scenario": scenario.name, "topology": topology.name, "qos_levels": levels,
            "repetitions": repeat, "warmup_repetitions": warmup,
            "one_hop_messages": hops, "one_hop_warmup_messages": by_qos[0]["one_hop"]["warmup"],
            "one_hop_broker": by_qos[0]["one_hop"]["broker"],
            "one_hop_payload_bytes": by_qos[0]["one_hop"]["payload_bytes"],
            "tls_version": by_qos[0]["tls_version"],
            "bus": "a fresh bus per QoS level (every device at that QoS), on free loopback ports; "
                   "the one-hop baseline runs on the same brokers, interleaved with the repetitions "
                   "(ceil(hops / repetitions) messages after each, after a warm-up of its own)",
            "client": "paho-mqtt, MQTT v5, TCP_NODELAY, one message in flight",
            "percentile_method": "linear interpolation between closest ranks (numpy 'linear')",
            "duration_s": round(time.monotonic() - started, 1),
            "source_revision": source_revision(),  # the devices and harness code that was measured
            # Other work on the machine shares the cores with the bus: say how busy it was.
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "target_ratio": TARGET_RATIO,
        "by_qos": by_qos,
        "environment": env,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def summary(result: LatencyResultV3) -> str:
    """The headline table of a latency result, for a terminal."""
    c = result["conditions"]
    lines = [
        f"latency benchmark: {c['scenario']} x{c['repetitions']} (after {c['warmup_repetitions']} warm-up) per QoS, "
        f"{c['tls_version']}; one hop: {c['one_hop_messages']} messages of {c['one_hop_payload_bytes']} B "
        f"on {c['one_hop_broker']}",
        f"{'QoS':>3}  {'e2e p50':>8} {'p90':>7} {'p99':>7} {'max':>7}  {'hop p50':>8} {'p99':>6}  "
        f"{'trav.':>5}  {'ratio':>5}  target <= {result['target_ratio']}",
    ]
    for q in result["by_qos"]:
        e, h = q["e2e_ms"], q["one_hop_ms"]
        lines.append(
            f"{q['qos']:>3}  {e['p50']:8.2f} {e['p90']:7.2f} {e['p99']:7.2f} {e['max']:7.2f}  "
            f"{h['p50']:8.3f} {h['p99']:6.3f}  {q['critical_path']['total']:>5}  {q['overhead_ratio']:5.2f}  "
            f"{'met' if q['meets_target'] else 'NOT met'}")
    lines.append("(milliseconds; ratio = e2e p50 / (broker traversals on the critical path x one-hop p50))")
    for q in result["by_qos"]:
        w = q["waterfall"]
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in w["p50_by_kind_ms"].items() if v)
        devices = ", ".join(f"{d} {s.get('p50', 0.0):.2f}" for d, s in w["device_ms"].items())
        lines.append(f"QoS {q['qos']} waterfall (p50 sums, ms): {kinds} = {w['sum_of_p50_ms']:.2f} against e2e p50 "
                     f"{w['e2e_p50_ms']:.2f} ({w['sum_deviation']:+.1%}, "
                     f"{'within' if w['sums_within_tolerance'] else 'OUTSIDE'} {w['sum_tolerance']:.0%}); "
                     f"bus {w['bus_over_one_hop']:.2f} x its one-hop share; per device p50: {devices}")
    return "\n".join(lines)
