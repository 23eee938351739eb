"""Draw a scenario result (the dict loaded from a ``result.json``) as a timeline for people to read.

The plain-text view of the same run, ``summary_table``, is in :mod:`testbed.reporting.text`;
``plot_timeline`` draws the steps as a swimlane sequence diagram (one lane per device,
time flowing downward) into a PNG. This module only reads results and never measures; it uses
matplotlib's object API with the Agg canvas, so it touches no global pyplot state and needs no
display. A failed result (fewer steps, ``end`` null, no percentiles) renders what it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from testbed.core.results import ScenarioResultDoc, ScenarioStep
from testbed.reporting.text import failure_reason, format_ms, percentiles_line

__all__ = ["plot_timeline", "timeline_figure"]

Result = ScenarioResultDoc

# Colour *and* line style differ, so the planes stay distinct in greyscale prints.
_PLANE_STYLES: dict[str, dict[str, Any]] = {
    "control": {"color": "#b03a2e", "linestyle": "-", "label": "control plane"},
    "delivery": {"color": "#1f618d", "linestyle": "--", "label": "delivery plane"},
}
_OTHER_PLANE_STYLE: dict[str, Any] = {"color": "#7f8c8d", "linestyle": ":", "label": "other plane"}
_END_COLOUR = "#1e8449"
_FAILURE_COLOUR = "#b03a2e"
_MIN_LAYOUT_ROWS = 10  # nine Appendix A steps and the end marker
_LABEL_GID = "step-label"  # lets tests find the labels to check that none overlap
_LABEL_BOX = {
    "boxstyle": "round,pad=0.15",
    "facecolor": "white",
    "edgecolor": "none",
    "alpha": 0.85,
}


def _lane_order(result: Result) -> list[str]:
    """Return the lanes of ``result``, then any device the steps name that is not among them."""
    lanes = list(result.get("lanes") or [])
    end: Mapping[str, Any] = result.get("end") or {}
    for step in result.get("steps") or []:
        for device in [step.get("device"), *(step.get("receivers") or [])]:
            if device is not None and device not in lanes:
                lanes.append(device)
    if end.get("device") is not None and end["device"] not in lanes:
        lanes.append(end["device"])
    return lanes


def _title(result: Result) -> tuple[str, str]:
    """Return the headline and the conditions line of the timeline."""
    verdict = "PASSED" if result.get("passed") else "FAILED"
    e2e = result.get("e2e_ms")
    latency = "no e2e" if e2e is None else f"e2e {format_ms(e2e)} ms"
    headline = f"{result.get('scenario', '?')} — {verdict} — {latency}"
    environment: Mapping[str, Any] = result.get("environment") or {}
    conditions = [
        f"QoS {environment.get('qos', '?')}",
        str(environment.get("tls_version", "TLS ?")),
    ]
    if environment.get("mosquitto"):
        conditions.append(f"mosquitto {environment['mosquitto']}")
    if environment.get("python"):
        conditions.append(f"Python {environment['python']}")
    percentiles = percentiles_line(result)
    if percentiles:
        conditions.append(percentiles)
    return headline, "   ·   ".join(conditions)


def _draw_step(axes: Axes, row: int, step: ScenarioStep, lane_x: dict[str, int]) -> None:
    """Draw one step as arrows from its publisher to each receiver on ``row``."""
    style = _PLANE_STYLES.get(str(step.get("plane", "")), _OTHER_PLANE_STYLE)
    source = lane_x[step["device"]]
    targets = [lane_x[device] for device in step.get("receivers") or []]
    arrow = {
        "arrowstyle": "-|>",
        "color": style["color"],
        "linestyle": style["linestyle"],
        "linewidth": 1.8,
        "mutation_scale": 16,
        "shrinkA": 0,
        "shrinkB": 4,
    }
    for target in targets:
        if target == source:  # a device receiving its own publication: a small loop
            start, end = (source, row - 0.12), (source, row + 0.12)
            arrow_here = {**arrow, "connectionstyle": "arc3,rad=-1.5"}
        else:
            start, end, arrow_here = (source, row), (target, row), arrow
        axes.annotate("", xy=end, xytext=start, arrowprops=arrow_here, zorder=3)
    axes.plot(source, row, "o", color=style["color"], markersize=5, zorder=4)
    span = [source, *targets]
    label = f"{step.get('n', row + 1)}. {step.get('name', '')} (+{format_ms(step.get('hop_ms'))} ms)"
    axes.text(
        (min(span) + max(span)) / 2,
        row - 0.2,
        label,
        ha="center",
        va="bottom",
        fontsize=9,
        gid=_LABEL_GID,
        zorder=5,
        bbox=_LABEL_BOX,
    )


def _draw_outcome(axes: Axes, row: int, result: Result, lane_x: dict[str, int]) -> str | None:
    """Draw the end marker (or the failure) on ``row``; return its time-axis label, if any."""
    end = result.get("end")
    if end:
        x = lane_x[end["device"]]
        axes.plot(x, row, marker="*", color=_END_COLOUR, markersize=18, zorder=4)
        axes.text(
            x,
            row - 0.25,
            f"displayed, e2e = {format_ms(result.get('e2e_ms'))} ms",
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
            color=_END_COLOUR,
            gid=_LABEL_GID,
            zorder=5,
            bbox=_LABEL_BOX,
        )
        return f"t={format_ms(end.get('t_ms'))} ms"
    if not result.get("passed"):
        reason = failure_reason(result)
        reason = reason if len(reason) <= 90 else reason[:89] + "…"
        axes.text(
            (len(lane_x) - 1) / 2,
            row,
            f"FAILED after step {row}: {reason}",
            ha="center",
            va="center",
            fontsize=10,
            fontweight="bold",
            color=_FAILURE_COLOUR,
            gid=_LABEL_GID,
            zorder=5,
            bbox={
                "boxstyle": "round,pad=0.3",
                "facecolor": "#fdedec",
                "edgecolor": _FAILURE_COLOUR,
            },
        )
    return None


def _legend_handles(result: Result) -> list[Line2D]:
    """Return legend entries: both planes always, others and the end marker when drawn."""
    handles = [Line2D([], [], linewidth=1.8, **_PLANE_STYLES[name]) for name in _PLANE_STYLES]
    planes = {step.get("plane") for step in result.get("steps") or []}
    if planes - set(_PLANE_STYLES):
        handles.append(Line2D([], [], linewidth=1.8, **_OTHER_PLANE_STYLE))
    if result.get("end"):
        end_marker = Line2D([], [], marker="*", linestyle="none", color=_END_COLOUR, markersize=12)
        end_marker.set_label("displayed (end of scenario)")
        handles.append(end_marker)
    return handles


def _timeline_figure(result: Result) -> Figure:
    """Draw the swimlane diagram of ``result`` on a new Agg-backed figure."""
    figure = Figure(figsize=(11, 7), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    lanes = _lane_order(result)
    lane_x = {device: x for x, device in enumerate(lanes)}
    steps = list(result.get("steps") or [])

    # Hops are a fraction of a millisecond and several steps share one t_ms, so a true time
    # scale would stack arrows on top of each other. Each step gets its own row, in step order,
    # and the real t_ms is written on the time axis next to it: the order is what the eye
    # follows, and the figures stay exact. A short (failed) run keeps the row height of a full
    # one rather than stretching its few arrows over the whole figure.
    layout_rows = max(len(steps) + 1, _MIN_LAYOUT_ROWS)
    axes.vlines(range(len(lanes)), -0.7, layout_rows - 0.3, color="#bfc9ca", linewidth=1.5)
    time_labels = [f"t={format_ms(step.get('t_ms'))} ms" for step in steps]
    for row, step in enumerate(steps):
        _draw_step(axes, row, step, lane_x)
    end_label = _draw_outcome(axes, len(steps), result, lane_x)
    if end_label:
        time_labels.append(end_label)

    axes.set_xlim(-0.75, len(lanes) - 0.25)
    axes.set_ylim(layout_rows - 0.4, -0.9)  # inverted: time flows downward
    axes.xaxis.tick_top()
    axes.set_xticks(range(len(lanes)), lanes, fontsize=10, fontweight="bold")
    for tick in axes.get_xticklabels():
        tick.set_bbox({"boxstyle": "round,pad=0.3", "facecolor": "#eaf2f8", "edgecolor": "#5d6d7e"})
    axes.tick_params(axis="both", length=0)
    axes.tick_params(axis="x", pad=8)
    axes.set_yticks(range(len(time_labels)), time_labels, fontsize=9)
    axes.set_ylabel("time ↓  (one row per step, in order; labels give t_ms)", fontsize=9)
    for spine in axes.spines.values():
        spine.set_visible(False)

    handles = _legend_handles(result)
    figure.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False
    )
    headline, conditions = _title(result)
    figure.suptitle(headline, fontsize=14, fontweight="bold")
    axes.set_title(conditions, fontsize=9.5, color="#4d5656", pad=10)
    return figure


def timeline_figure(result: Result) -> Figure:
    """Return the swimlane sequence diagram of ``result`` as an Agg-backed figure (for notebooks)."""
    return _timeline_figure(result)


def plot_timeline(result: Result, path: Path) -> Path:
    """Draw ``result`` as a swimlane sequence diagram into the PNG ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _timeline_figure(result).savefig(path, format="png")
    return path
