"""The shape every "shared against segregated" benchmark writes (``fmb.bench-bottleneck/1``).

A bottleneck (a broker at its CPU quota, a shaped WAN link, a reconnect storm, the machine's two
cores) is measured as one curve per configuration: command round trips (p50/p99) and the delivery
plane's rate against load. :func:`targets` reads the issue's three targets off the curves the same
way for every bottleneck, and :func:`check` tells a reader what is wrong with a document before it
draws one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from testbed.core.errors import TestbedError
from testbed.core.results import BottleneckConfig, BottleneckCurve, BottleneckPoint, BottleneckTargets

__all__ = ["BOTTLENECKS", "RESULT_SCHEMA", "TARGETS", "check", "saturation_point", "targets"]

RESULT_SCHEMA: Final = "fmb.bench-bottleneck/1"
BOTTLENECKS: Final = ("cpu", "broker", "wan", "storm")
CONFIGS: Final[tuple[BottleneckConfig, ...]] = ("shared", "segregated", "segregated+priority")
# The targets, read at each bottleneck's saturation.
TARGETS: Final = {"segregated_saturation_over_idle_max": 2.0, "shared_over_segregated_min": 10.0,
                  "delivery_kept_min": 0.8}


def saturation_point(curve: BottleneckCurve) -> BottleneckPoint | None:
    """The first point at which the curve's bottleneck was saturated (its heaviest point if none was)."""
    points = curve["points"]
    if not points:
        return None
    return next((p for p in points if p["saturated"]), points[-1])


def _p99(point: BottleneckPoint | None) -> float | None:
    return None if point is None else point["control_ms"].get("p99")


def targets(curves: list[BottleneckCurve]) -> BottleneckTargets:
    """The targets at saturation: the segregated configuration is the one with priority where the
    document has it, else plain segregated; "shared" is compared at its own saturation point."""
    by = {c["config"]: c for c in curves}
    seg_name: BottleneckConfig = "segregated+priority" if "segregated+priority" in by else "segregated"
    seg, shared = by.get(seg_name), by.get("shared")
    seg_sat = saturation_point(seg) if seg else None
    seg_p99 = _p99(seg_sat)
    over_idle = (round(seg_p99 / seg["idle_p99_ms"], 2)
                 if seg and seg_p99 is not None and seg["idle_p99_ms"] else None)
    shared_p99 = _p99(saturation_point(shared)) if shared else None
    ratio = round(shared_p99 / seg_p99, 2) if shared_p99 is not None and seg_p99 else None
    kept = (round(seg_sat["delivery_rate"] / seg["unsaturated_rate"], 3)
            if seg and seg_sat and seg["unsaturated_rate"] > 0 else None)
    return BottleneckTargets(
        segregated_config=seg_name, segregated_saturation_over_idle=over_idle, shared_over_segregated=ratio,
        delivery_kept=kept,
        met={"segregated_saturation_over_idle": over_idle is not None
             and over_idle <= TARGETS["segregated_saturation_over_idle_max"],
             "shared_over_segregated": ratio is not None and ratio >= TARGETS["shared_over_segregated_min"],
             "delivery_kept": kept is not None and kept >= TARGETS["delivery_kept_min"]})


def check(doc: Mapping[str, Any], source: str = "result") -> None:
    """Raise TestbedError naming the first thing wrong with a ``fmb.bench-bottleneck/1`` document."""
    def bad(what: str) -> TestbedError:
        return TestbedError(f"{source}: {what} (a fmb.bench-bottleneck/1 document: see testbed/core/results.py)")

    if doc.get("schema") != RESULT_SCHEMA:
        raise bad(f"schema is {doc.get('schema')!r}, not {RESULT_SCHEMA!r}")
    if doc.get("bottleneck") not in BOTTLENECKS:
        raise bad(f"bottleneck {doc.get('bottleneck')!r} is not one of {', '.join(BOTTLENECKS)}")
    curves = doc.get("curves")
    if not isinstance(curves, list) or not curves:
        raise bad("it has no curves")
    for i, curve in enumerate(curves):
        if not isinstance(curve, dict) or curve.get("config") not in CONFIGS:
            raise bad(f"curve {i} has config {curve.get('config') if isinstance(curve, dict) else curve!r}, "
                      f"not one of {', '.join(CONFIGS)}")
        points = curve.get("points")
        if not isinstance(points, list):
            raise bad(f"curve {curve['config']} has no list of points")
        loads = []
        for p in points:
            if not isinstance(p, dict) or not isinstance(p.get("load"), int | float) \
                    or not isinstance(p.get("control_ms"), dict) or not isinstance(p.get("delivery_rate"), int | float):
                raise bad(f"curve {curve['config']} has a point without load, control_ms and delivery_rate: {p!r}")
            loads.append(p["load"])
        if loads != sorted(loads, reverse=doc.get("load_axis") == "falling"):
            raise bad(f"curve {curve['config']}'s points are not ordered from the lightest load to the heaviest")
