"""``fmb bench cpu --from bench-prioritization.json``: the CPU-bound result, as it stands, in the
``fmb.bench-bottleneck/1`` shape, so the report "when does segregation matter" shows it beside the
broker-, WAN- and storm-bound curves.

``fmb bench prioritization`` floods the delivery plane on this machine's two shared cores: its
contended resource is the CPU, not a broker's queue (issue 4), and the converted document says so
(``bottleneck: "cpu"``, labelled CPU-bound). Nothing is re-measured: each step becomes a point whose
load is the offered flood rate; the ``"max"`` step (publishers unthrottled) is placed at the rate it
achieved and is the one saturated point. The delivery plane's reference rate ("kept" is against it)
is the most any configuration's unthrottled flood carried: below saturation every configuration
carries what it is offered, so that is the rate a priority for commands may cost.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

from testbed.bench import bottleneck
from testbed.core.errors import TestbedError
from testbed.core.results import (
    BottleneckCurve,
    BottleneckPoint,
    BottleneckResult,
    Environment,
    PrioritizationRow,
)

__all__ = ["RESULT_FILE", "SOURCE_SCHEMA", "from_prioritization", "load_prioritization"]

RESULT_FILE: Final = "bench-cpu.json"
SOURCE_SCHEMA: Final = "fmb.bench-prioritization/1"


def load_prioritization(path: Path) -> dict[str, Any]:
    """Read a ``fmb.bench-prioritization/1`` file; a one-line error naming the file otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise TestbedError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SOURCE_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise TestbedError(f"{path} holds {found!r}, not {SOURCE_SCHEMA}: give the bench-prioritization.json "
                           "that `fmb bench prioritization` wrote")
    return doc


def _point(row: Mapping[str, Any], where: str) -> BottleneckPoint:
    offered, achieved, control = row.get("offered_rate"), row.get("achieved_rate"), row.get("control_ms")
    if not isinstance(achieved, int | float) or not isinstance(control, dict) \
            or not (offered == "max" or isinstance(offered, int | float)):
        raise TestbedError(f"{where}: a step without offered_rate, achieved_rate and control_ms: {dict(row)!r}")
    saturated = offered == "max"
    sent = row.get("sent_rate")  # what the publishers really sent, where the result counted it
    if isinstance(sent, int | float) and not isinstance(sent, bool) and sent >= 0:
        load = float(sent)
    else:
        load = float(achieved if saturated else offered)
    return BottleneckPoint(load=load, control_ms=control,  # type: ignore[typeddict-item]
                           delivery_rate=float(achieved), saturated=saturated)


def from_prioritization(doc: Mapping[str, Any], source: str = "bench-prioritization.json") -> BottleneckResult:
    """The CPU-bound ``fmb.bench-bottleneck/1`` document of a ``fmb.bench-prioritization/1`` one."""
    if doc.get("schema") != SOURCE_SCHEMA:
        raise TestbedError(f"{source} holds {doc.get('schema')!r}, not {SOURCE_SCHEMA}")
    results = doc.get("results")
    if not isinstance(results, dict) or not results:
        raise TestbedError(f"{source}: no results per configuration")
    unknown = sorted(set(results) - set(bottleneck.CONFIGS))
    if unknown:
        raise TestbedError(f"{source}: configuration {unknown[0]!r} is not one of {', '.join(bottleneck.CONFIGS)}")
    steps = {config: [_point(r, f"{source} {config}") for r in cast(list[PrioritizationRow], rows)]
             for config, rows in results.items()}
    capacity = max((p["delivery_rate"] for points in steps.values() for p in points if p["saturated"]), default=0.0)
    curves: list[BottleneckCurve] = []
    for config in bottleneck.CONFIGS:  # shared, segregated, segregated+priority: the report's order
        if config not in steps:
            continue
        points = sorted(steps[config], key=lambda p: p["load"])
        idle = next((p for p in points if p["load"] == 0), None)
        curves.append(BottleneckCurve(config=config,
                                      idle_p99_ms=idle["control_ms"].get("p99") if idle else None,
                                      unsaturated_rate=capacity, points=points))
    conditions: dict[str, object] = {
        **(doc.get("conditions") or {}),
        "label": "CPU-bound: every broker and client on this machine's two shared cores; the contended resource "
                 "is the CPU, not a broker's queue (issue 4)",
        "converted_from": f"{source} ({SOURCE_SCHEMA}, created {doc.get('created')})",
        "load": "the flood's rate on the delivery plane (msg/s): what its publishers sent where the result counted "
                "it (sent_rate), else the rate asked (the unthrottled 'max' step: the rate it achieved); the "
                "unthrottled step is the one marked saturated",
        "unsaturated_rate": "the most any configuration's unthrottled flood carried (msg/s): below saturation each "
                            "carries what it is offered",
    }
    return BottleneckResult(
        schema=bottleneck.RESULT_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        bottleneck="cpu", load_unit="msg/s offered (delivery-plane flood)", load_axis="rising",
        conditions=conditions, curves=curves, targets=bottleneck.targets(curves),
        environment=cast(Environment, doc.get("environment") or {}))
