"""``fmb bench storm``: control round trips during a substation's reconnect storm, shared against
segregated, at several storm sizes: the storm-bound curve of ``fmb.bench-bottleneck/1``.

Each size is one run of ``testbed.bench.scale``'s storm machinery (:func:`~testbed.bench.scale.run_storms`:
the topology's brokers with mutual TLS, one fleet process whose meters each hold their own certificate
and MQTT v5 connection, the substation's delivery broker restarted with every meter connected), so the
storm is the one ``fmb bench scale`` measures, not a copy of it. Per size two storms: commands on the
substation's own control broker (``segregated``), then on the restarted delivery broker itself
(``shared``). A point's load is the meters reconnecting; its delivery rate the readings/s the DMS side
(the data centre's delivery broker) received from the storm's SIGTERM until every meter had reported
again. No ``segregated+priority`` curve: the storm's contended resource is the restarted broker, which
a segregated control plane does not share at all, and niceness on two shared cores is what
``fmb bench prioritization`` already measures (the CPU-bound document).

A storm *saturates* the substation when its meters take more than twice as long to report again as
in the smallest storm of the same configuration (the broker, not the meters' backoff, sets the pace),
or do not all report within the wait: the rule is stated in the result's conditions.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from testbed.backends.environment import environment
from testbed.bench import bottleneck, scale
from testbed.core.errors import TestbedError
from testbed.core.results import (
    BottleneckConfig,
    BottleneckCurve,
    BottleneckPoint,
    BottleneckResult,
    PrioritizationControl,
    ScaleControl,
    ScaleStorm,
)
from testbed.core.topology import MAX_METERS_PER_FEEDER

__all__ = ["CONFIGS", "RESULT_FILE", "SATURATED_SLOWER", "StormOptions", "parse_sizes", "run_storm_bench",
           "storm_document", "summary"]

RESULT_FILE: Final = "bench-storm.json"
CONFIGS: Final[tuple[BottleneckConfig, ...]] = ("segregated", "shared")
SATURATED_SLOWER: Final = 2.0  # a storm this many times slower to report back than the smallest one saturates


@dataclass(frozen=True)
class StormOptions:
    """What ``fmb bench storm`` runs; :meth:`check` refuses nonsense in one line before anything starts."""

    sizes: tuple[int, ...] = (100, 300, 1000)  # meters of the storm substation, one run each
    interval_s: float = 5.0  # seconds between a meter's periodic readings
    command_rate: float = 20.0
    idle_control_s: float = 5.0
    connect_rate: float = 200.0
    quick: bool = False

    @classmethod
    def quick_run(cls) -> StormOptions:
        """``--quick``: 50 and 100 meters, readings every second, a one-second idle window."""
        return cls(sizes=(50, 100), interval_s=1.0, idle_control_s=2.0, connect_rate=100.0, quick=True)

    def check(self) -> None:
        """Raise TestbedError naming the option and the fix; the scale options each storm runs with too."""
        if not self.sizes or any(not 1 <= n <= MAX_METERS_PER_FEEDER for n in self.sizes):
            raise TestbedError(f"--sizes is {','.join(map(str, self.sizes)) or 'empty'}; give meters per storm, "
                               f"1 to {MAX_METERS_PER_FEEDER:,}, e.g. 100,300,1000")
        if list(self.sizes) != sorted(set(self.sizes)):
            raise TestbedError(f"--sizes is {','.join(map(str, self.sizes))}; give distinct sizes, smallest first")
        self.scale_options(self.sizes[0]).check()

    def scale_options(self, meters: int) -> scale.ScaleOptions:
        """The scale benchmark's options for one storm of ``meters`` (one substation, nothing else run)."""
        return scale.ScaleOptions(substations=1, meters=meters, intervals_s=(self.interval_s,),
                                  connect_rate=self.connect_rate, command_rate=self.command_rate,
                                  idle_control_s=self.idle_control_s, appendix_a_runs=0, quick=self.quick)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``100,300,1000``; a one-line error for anything else (the range: :meth:`StormOptions.check`)."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TestbedError(f"--sizes is {text!r}; give meters per storm, e.g. 100,300,1000") from None
    if not sizes:
        raise TestbedError(f"--sizes is {text!r}; give meters per storm, e.g. 100,300,1000")
    return sizes


def _control(measured: ScaleControl) -> PrioritizationControl:
    """A storm's command window in the bottleneck shape (``lost``: not acknowledged within the time-out)."""
    control = PrioritizationControl(sent=measured["sent"], acked=measured["acked"],
                                     unacked_within_s=measured["unacked_within_s"],
                                     lost=measured["sent"] - measured["acked"])
    for key in ("n", "min", "p50", "p90", "p99", "max", "mean"):
        if key in measured:
            control[key] = measured[key]
    return control


def _saturated(storm: ScaleStorm, smallest: ScaleStorm) -> bool:
    if storm["reported_s"] is None:
        return True
    base = smallest["reported_s"]
    return base is not None and storm is not smallest and storm["reported_s"] > SATURATED_SLOWER * base


def _curve(config: BottleneckConfig, storms: list[ScaleStorm]) -> BottleneckCurve:
    storms = sorted(storms, key=lambda s: s["meters"])
    points = [BottleneckPoint(load=float(s["meters"]), control_ms=_control(s["control_ms"]),
                              delivery_rate=s.get("delivered_per_s", 0.0), saturated=_saturated(s, storms[0]))
              for s in storms]
    # Idle and unsaturated figures from the same bus as the point the targets read (the saturation point).
    at = next((i for i, p in enumerate(points) if p["saturated"]), len(points) - 1)
    return BottleneckCurve(config=config, idle_p99_ms=storms[at]["control_idle_ms"].get("p99"),
                           unsaturated_rate=storms[at].get("delivered_before_per_s", 0.0), points=points)


def storm_document(runs: Sequence[tuple[scale.StormRun, list[float]]], options: StormOptions,
                   loads_before: list[float]) -> BottleneckResult:
    """The ``fmb.bench-bottleneck/1`` document of the storms of every size (each with the load average
    after it)."""
    if not runs:
        raise TestbedError("no storm was measured")
    storms = [s for run, _ in runs for s in run.storms]
    curves = [_curve(c, [s for s in storms if s["config"] == c]) for c in CONFIGS]
    last = runs[-1][0]
    conditions: dict[str, object] = {
        "sizes": list(options.sizes), "interval_s": options.interval_s, "command_rate": options.command_rate,
        "idle_control_s": options.idle_control_s, "connect_rate_per_fleet": options.connect_rate,
        "backoff": {"base_s": scale.BACKOFF[0], "cap_s": scale.BACKOFF[1]}, "qos": last.topology.qos,
        "tls_version": last.tls_version, "quick": options.quick, "repetitions": 1,
        "command_payload_bytes": 66,
        "storm": "the storm substation's delivery broker restarted (SIGTERM, start) with all its meters connected; "
                 "each meter its own certificate and MQTT v5 connection (gmqtt fleet), full-jitter reconnect "
                 "backoff; a fresh bus (brokers, fleet) per size, from testbed.bench.scale.run_storms",
        "load": "meters of the substation reconnecting (one storm per size and configuration)",
        "control": "BenchCommandProfile round trips (paho commander in the benchmark process -> testbed.bench.echo "
                   "responder) from the SIGTERM until every meter reported again; segregated: on the substation's "
                   "control broker; shared: on the restarted delivery broker itself",
        "delivery_rate": "readings/s of the storm substation's meters the DMS side (a subscriber on the data "
                         "centre's delivery broker) received over the same window, restart included",
        "idle_p99_ms": "control p99 in the idle window just before the storm the targets read (the saturation "
                       "point's, else the heaviest)",
        "unsaturated_rate": "readings/s the DMS side received in that idle window, before the storm",
        "saturated": f"the meters took more than {SATURATED_SLOWER:g} x as long to report again as in the smallest "
                     "storm of the same configuration, or did not all report within the wait",
        "no_priority_curve": "no segregated+priority: the segregated control broker shares nothing with the "
                             "restarted one but the machine's cores, which the CPU-bound document measures",
        "storms": [{"config": s["config"], "meters": s["meters"], "down_s": s["down_s"],
                    "reconnected_s": s["reconnected_s"], "reported_s": s["reported_s"], "reconnects": s["reconnects"],
                    "storm_s": s.get("storm_s"), "control_idle_p99_ms": s["control_idle_ms"].get("p99"),
                    "delivered_before_per_s": s.get("delivered_before_per_s"),
                    "delivered_per_s": s.get("delivered_per_s"),
                    "broker_cpu_percent_of_a_core": (s["cpu"]["brokers"]["percent_of_a_core"]
                                                     if "brokers" in s["cpu"] else None)}
                   for s in storms],
        "load_average_before": loads_before,
        "load_average_after_each_size": {str(run.storms[0]["meters"]): loads for run, loads in runs if run.storms},
        "machine": "every broker, the fleet, the responder and the harness on this machine's cores, loopback",
    }
    return BottleneckResult(
        schema=bottleneck.RESULT_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        bottleneck="storm", load_unit="meters reconnecting", load_axis="rising", conditions=conditions,
        curves=curves, targets=bottleneck.targets(curves),
        environment=environment(last.topology, last.tls_version, "local"))


def _loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_storm_bench(topology_path: Path, certs: Path, options: StormOptions, out: Path,
                    progress: Callable[[str], None] | None = None) -> BottleneckResult:
    """Every size's storms; writes ``out/bench-storm.json`` and returns it."""
    say = progress or (lambda line: None)
    options.check()
    before = _loads()
    say(f"storm benchmark: storms of {', '.join(map(str, options.sizes))} meters, readings every "
        f"{options.interval_s:g} s; load average {before[0]:.2f}")
    runs = []
    for meters in options.sizes:
        say(f" {meters} meters:")
        runs.append((scale.run_storms(topology_path, certs, options.scale_options(meters), CONFIGS, say), _loads()))
    result = storm_document(runs, options, before)
    bottleneck.check(result, "the storm benchmark's result")
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(result: BottleneckResult) -> str:
    """Control p99 per storm size and configuration, and the targets, for the terminal."""
    lines = [f"storm benchmark (load average {result['conditions'].get('load_average_before')}):"]
    for curve in result["curves"]:
        cells = [f"{p['load']:g}: p99 {p['control_ms'].get('p99', math.nan):.1f} ms"
                 f"{' (saturated)' if p['saturated'] else ''}, {p['delivery_rate']:.0f} readings/s"
                 + (f", {p['control_ms']['lost']} unacked" if p["control_ms"]["lost"] else "")
                 for p in curve["points"]]
        lines.append(f"  {curve['config']:10} idle p99 {curve['idle_p99_ms'] or math.nan:.1f} ms; " + "; ".join(cells))
    t = result["targets"]
    lines.append(f"  targets ({t['segregated_config']}): saturation / idle p99 {t['segregated_saturation_over_idle']}, "
                 f"shared / segregated {t['shared_over_segregated']}, delivery kept {t['delivery_kept']}; met: "
                 + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in t["met"].items()))
    return "\n".join(lines)
