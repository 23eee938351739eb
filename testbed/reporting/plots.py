"""Figures of benchmark results, drawn from the result dicts alone (never by measuring).

One function per figure; each takes a loaded result (``bench-*.json``) and returns a matplotlib
:class:`~matplotlib.figure.Figure` on an Agg canvas, touching no pyplot state, so the same
function serves ``fmb report`` (saved as PNG), the notebooks (displayed inline) and the tests.
Sections: latency (``fmb.bench-latency/2``; ``/3`` adds the waterfall), prioritisation
(``fmb.bench-prioritization/1``), recovery (``fmb.bench-recovery/1``), crash (``fmb.bench-crash/1``), soak and scale
(``fmb.bench-scale/1``); the JSON shapes are described in ``testbed/bench/README.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from testbed.core.results import (
    LatencyResult,
    LatencyResultV3,
    Percentiles,
    PrioritizationResult,
    RecoveryResult,
    RecoveryTime,
    RecoveryTrial,
    ScaleResult,
    SoakResult,
    UiResult,
    WanResult,
    WanRow,
)
from testbed.core.stats import percentiles
from testbed.reporting.text import RECOVERY_TIMES

__all__ = [
    "conditions_caption",
    "crash_curve",
    "crash_policies",
    "ecdf",
    "latency_cdf",
    "latency_steps",
    "latency_waterfall",
    "prioritization_control_latency",
    "prioritization_throughput",
    "recovery_autosave",
    "recovery_times",
    "scale_ramp",
    "scale_steady",
    "scale_storm",
    "soak_ledger",
    "soak_timeline",
    "ui_cdf",
    "ui_repetitions",
    "wan_control_latency",
    "wan_throughput",
]

Result = Mapping[str, Any]  # any result document: the conditions caption serves every schema

# One colour *and* marker / hatch per series, so greyscale prints keep them apart.
_QOS_STYLE = {0: ("#1f618d", "o", ""), 1: ("#b03a2e", "s", "//"), 2: ("#1e8449", "^", "..")}
_SERIES = [("#b03a2e", "-", "o"), ("#1f618d", "--", "s"), ("#1e8449", "-.", "^"), ("#7d3c98", ":", "D"),
           ("#ca6f1e", "-", "v"), ("#5d6d7e", "--", "P")]
_GREY = "#5d6d7e"


def ecdf(samples: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF of ``samples``: sorted values and the fraction of samples <= each.

    Raises ``ValueError`` on an empty sequence.
    """
    ordered = sorted(float(v) for v in samples)
    if not ordered:
        raise ValueError("ecdf() needs at least one sample; got an empty sequence")
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def conditions_caption(result: Result) -> str:
    """One line of the conditions a reader needs to judge the figure (machine, versions, TLS)."""
    env = result.get("environment") or {}
    machine = env.get("machine") or {}
    parts = [
        f"{machine.get('cpu') or 'CPU ?'} ({machine.get('cores', '?')} cores)",
        f"mosquitto {env.get('mosquitto') or '?'}",
        f"Python {env.get('python') or '?'}",
        str(env.get("tls_version") or (result.get("conditions") or {}).get("tls_version") or "TLS ?"),
        f"backend {env.get('backend', '?')}",
    ]
    return "   ·   ".join(parts)


def _finish(figure: Figure, title: str, result: Result) -> Figure:
    figure.suptitle(title, fontsize=13, fontweight="bold")
    figure.supxlabel(conditions_caption(result), fontsize=8, color=_GREY)  # constrained layout makes room
    return figure


# -- latency (fmb.bench-latency/2) ---------------------------------------------------------------

def latency_cdf(result: LatencyResult | LatencyResultV3) -> Figure:
    """One panel per QoS: the CDF of Appendix A end to end and of one broker hop (log time axis)."""
    levels = result["by_qos"]
    figure = _figure(max(9.5, 4.6 * len(levels)), 4.4)  # room for the legend under one panel
    axes_row = figure.subplots(1, len(levels), sharex=True, sharey=True, squeeze=False)[0]
    for axes, q in zip(axes_row, levels, strict=True):
        colour, marker, _ = _QOS_STYLE.get(q["qos"], (_GREY, "o", ""))
        key: Literal["one_hop_ms", "e2e_ms"]
        for key, style in (("one_hop_ms", ":"), ("e2e_ms", "-")):
            xs, ys = ecdf(q["samples"][key])
            axes.step(xs, ys, where="post", color=colour if key == "e2e_ms" else _GREY, linestyle=style,
                      linewidth=1.8)
        expected = q["critical_path_one_hop_ms"]
        axes.axvline(expected, color=_GREY, linestyle="--", linewidth=1)
        axes.text(expected, 0.03, f" {q['critical_path']['total']} hops × p50\n = {expected:.2f} ms",
                  fontsize=8, color=_GREY, va="bottom")
        p: Literal["p50", "p99"]
        for p, y in (("p50", 0.5), ("p99", 0.99)):
            axes.plot(q["e2e_ms"][p], y, marker=marker, color=colour, markersize=6)
            axes.annotate(f"{p} {q['e2e_ms'][p]:.2f}", (q["e2e_ms"][p], y), textcoords="offset points",
                          xytext=(6, -10), fontsize=8, color=colour)
        axes.set_xscale("log")
        axes.set_title(f"QoS {q['qos']}: ratio {q['overhead_ratio']:.2f} "
                       f"({'meets' if q['meets_target'] else 'misses'} ≤ {result['target_ratio']})", fontsize=10)
        axes.set_xlabel("latency (ms, log scale)")
        axes.grid(True, which="both", alpha=0.3)
    axes_row[0].set_ylabel("fraction of samples ≤ latency")
    first = levels[0]
    # An axes legend, below the middle panel: constrained layout makes room for it and the caption.
    axes_row[len(levels) // 2].legend(handles=[
        Line2D([], [], color="#17202a", linewidth=1.8, label=f"Appendix A end to end (n={first['e2e_ms']['n']})"),
        Line2D([], [], color=_GREY, linestyle=":", linewidth=1.8,
               label=f"one broker hop (n={first['one_hop_ms']['n']})"),
        Line2D([], [], color=_GREY, linestyle="--", linewidth=1, label="critical-path traversals × one-hop p50"),
    ], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, fontsize=8, frameon=False)
    c = result["conditions"]
    return _finish(figure, f"Latency CDF: {c['scenario']} ×{c['repetitions']} vs one broker hop", result)


def latency_steps(result: LatencyResult | LatencyResultV3) -> Figure:
    """Per step and QoS: a bar at the p50 of the step's time with a whisker to its p99.

    A step's time runs from the publish of the step it follows to its own publish; ``display``
    is the last leg, from the diagram's publish to the tablet showing it. A black tick marks
    what the bus alone would take: the step's broker traversals x the one-hop p50 at that QoS.
    The trigger (step 1, at t = 0 by definition) has no bar.
    """
    levels = result["by_qos"]
    shown = [i for i, s in enumerate(levels[0]["steps"]) if s["hop_ms"]["max"] > 0]
    labels = [f"{levels[0]['steps'][i]['n']}{'*' if levels[0]['steps'][i]['on_critical_path'] else ''}"
              for i in shown] + ["display"]
    figure = _figure(11, 4.8)
    axes: Axes = figure.add_subplot()
    width = 0.8 / len(levels)
    for j, q in enumerate(levels):
        colour, _, hatch = _QOS_STYLE.get(q["qos"], (_GREY, "o", ""))
        stats = [q["steps"][i]["hop_ms"] for i in shown] + [q["display_ms"]]
        p50 = [s["p50"] for s in stats]
        upper = [s["p99"] - s["p50"] for s in stats]
        xs = [x + (j - (len(levels) - 1) / 2) * width for x in range(len(labels))]
        axes.bar(xs, p50, width, color=colour, alpha=0.75, hatch=hatch, edgecolor="white", label=f"QoS {q['qos']}")
        axes.errorbar(xs, p50, yerr=[[0.0] * len(p50), upper], fmt="none", ecolor="#17202a", capsize=3, linewidth=1)
        bus_only = [q["steps"][i]["traversals"] * q["one_hop_ms"]["p50"] for i in shown]
        axes.plot(xs[:-1], bus_only, linestyle="none", marker="_", markersize=14, markeredgewidth=2.5,
                  color="#17202a", label="traversals × one-hop p50" if j == 0 else None)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel("step (* on the critical path; names in report.md)")
    axes.set_ylabel("ms: bar p50, whisker p99")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(levels) + 1, fontsize=9, frameon=False)
    return _finish(figure, "Appendix A per-step latency by QoS", result)


# Bus parts in blues, what our Python adds in warm colours: the split the figure is for.
_KIND_STYLE = {"bus": ("#1f618d", ""), "device": ("#b03a2e", "//"), "feeder": ("#ca6f1e", "xx"),
               "display": ("#7d3c98", "..")}


def latency_waterfall(result: LatencyResultV3) -> Figure:
    """One panel per QoS: the critical path's segments as a waterfall of their p50s, top to bottom.

    Each bar starts where the previous one ended (the p50s' running sum); its colour says what
    spends the time (the bus, or ours: device, feeder model, display). A whisker runs to the
    segment's p99; a tick on a bus bar marks its traversals x the one-hop p50 (the bus alone). The
    bottom bar is the measured end-to-end p50: where the running sum ends against it is the 5 %
    check of the waterfall.
    """
    levels = result["by_qos"]
    segments = levels[0]["waterfall"]["segments"]
    figure = _figure(max(10.0, 5.2 * len(levels)), 0.32 * len(segments) + 2.6)
    axes_row = figure.subplots(1, len(levels), sharey=True, squeeze=False)[0]
    labels = [f"{s['key'].split()[0]}: {s['who']}" for s in segments] + ["end to end"]
    for axes, q in zip(axes_row, levels, strict=True):
        w = q["waterfall"]
        start = 0.0
        for y, s in enumerate(w["segments"]):
            colour, hatch = _KIND_STYLE.get(s["kind"], (_GREY, ""))
            p50 = s["ms"].get("p50", 0.0)
            axes.barh(y, p50, left=start, color=colour, hatch=hatch, edgecolor="white", height=0.7)
            axes.plot([start + p50, start + s["ms"].get("p99", p50)], [y, y], color="#17202a", linewidth=0.8)
            if s["kind"] == "bus":
                axes.plot(start + s["traversals"] * q["one_hop_ms"]["p50"], y, marker="|", markersize=12,
                          markeredgewidth=2, color="#f4d03f")
            start += p50
        y_end = len(w["segments"])
        axes.barh(y_end, w["e2e_p50_ms"], color=_GREY, height=0.7)
        axes.axvline(start, color="#17202a", linestyle="--", linewidth=0.8)
        axes.annotate(f"sum of p50s {start:.2f} ms\ne2e p50 {w['e2e_p50_ms']:.2f} ms ({w['sum_deviation']:+.1%})",
                      (start, y_end), textcoords="offset points", xytext=(6, -4), fontsize=8, va="top")
        k = w["p50_by_kind_ms"]
        axes.set_title(f"QoS {q['qos']}: bus {k['bus']:.2f} ms, ours "
                       f"{k['device'] + k['feeder'] + k['display']:.2f} ms (p50s)", fontsize=10)
        axes.set_xlabel("ms from the trigger (bar: p50, whisker to p99)")
        axes.grid(True, axis="x", alpha=0.3)
    axes_row[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes_row[0].invert_yaxis()
    from matplotlib.patches import Patch  # noqa: PLC0415 - only this figure needs it

    axes_row[len(levels) // 2].legend(
        handles=[Patch(facecolor=c, hatch=h, edgecolor="white", label=k) for k, (c, h) in _KIND_STYLE.items()],
        loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(_KIND_STYLE), fontsize=8, frameon=False)
    c = result["conditions"]
    load = c.get("load_average_before")
    busy = f", load average {load[0]:.1f} before" if load else ""  # a shared machine's figures vary with it
    return _finish(figure, f"Where the time goes: {c['scenario']} critical path, ×{c['repetitions']}{busy}", result)


# -- prioritisation (fmb.bench-prioritization/1) ------------------------------------------------

def _rate_label(rate: float | str) -> str:
    return str(rate) if not isinstance(rate, float) else f"{rate:g}"


def prioritization_control_latency(result: PrioritizationResult) -> Figure:
    """Control round trip (p99 solid, p50 faint) per offered flood rate and configuration.

    Offered rates are categories (the last may be ``"max"``: publishers unthrottled); a step
    where no command was acknowledged has no point.
    """
    figure = _figure(9, 5)
    axes: Axes = figure.add_subplot()
    labels = [_rate_label(r) for r in result["conditions"]["rates"]]
    for (colour, line, marker), (name, rows) in zip(_SERIES, result["results"].items(), strict=False):
        key: Literal["p99", "p50"]
        for key, alpha in (("p99", 1.0), ("p50", 0.35)):
            ys = [row["control_ms"].get(key, float("nan")) for row in rows]
            axes.plot(range(len(rows)), ys, color=colour, linestyle=line, marker=marker, alpha=alpha,
                      markersize=6 if key == "p99" else 4, label=f"{name} {key}")
    segregated = (result.get("headline") or {}).get("segregated")
    idle = segregated.get("idle_p99_ms") if segregated else None
    if idle:
        axes.axhline(2 * idle, color=_GREY, linestyle="--", linewidth=1, label="target: 2 × segregated idle p99")
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yscale("log")
    axes.set_xlabel("offered flood rate on the delivery plane (messages/s)")
    axes.set_ylabel("control command → ack round trip (ms, log)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, ncols=2)
    return _finish(figure, "Control-plane latency under a delivery-plane flood", result)


def prioritization_throughput(result: PrioritizationResult) -> Figure:
    """Delivery-plane throughput achieved per offered flood rate and configuration (grouped bars)."""
    figure = _figure(8, 4.6)
    axes: Axes = figure.add_subplot()
    labels = [_rate_label(r) for r in result["conditions"]["rates"]]
    width = 0.8 / max(1, len(result["results"]))
    for j, ((colour, _, _), (name, rows)) in enumerate(zip(_SERIES, result["results"].items(), strict=False)):
        xs = [x + (j - (len(result["results"]) - 1) / 2) * width for x in range(len(rows))]
        axes.bar(xs, [row["achieved_rate"] for row in rows], width, color=colour, alpha=0.8, label=name)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel("offered flood rate (messages/s)")
    axes.set_ylabel("delivered to the flood subscriber (messages/s)")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _finish(figure, "Delivery-plane throughput achieved", result)


# -- recovery (fmb.bench-recovery/1) -------------------------------------------------------------


def _trial_stats(trials: Sequence[RecoveryTrial], key: RecoveryTime) -> Percentiles | None:
    values = [v for t in trials if (v := t.get(key)) is not None]
    return percentiles(values, (50,)) if values else None


def recovery_times(result: RecoveryResult) -> Figure:
    """Per fault: median time to detect, reconnect and whole delivery, whiskers to the worst trial."""
    faults = result["faults"]
    figure = _figure(9, 1.0 + 0.75 * len(faults))
    axes: Axes = figure.add_subplot()
    height = 0.8 / len(RECOVERY_TIMES)
    for i, ((key, label), (colour, _, _)) in enumerate(zip(RECOVERY_TIMES, _SERIES, strict=False)):
        for row, fault in enumerate(faults):
            stats = _trial_stats(fault["trials"], key)
            if stats is None:
                continue
            y = row + (i - 1) * height
            axes.barh(y, stats["p50"], height, color=colour, alpha=0.8, label=label if row == 0 else None)
            axes.errorbar(stats["p50"], y, xerr=[[0.0], [stats["max"] - stats["p50"]]], fmt="none",
                          ecolor="#17202a", capsize=2, linewidth=1)
    axes.set_yticks(range(len(faults)), [f"{f['name']} (QoS {f.get('qos', '?')}"
                                         + (f", {f['direction']})" if f.get("direction") else ")") for f in faults],
                    fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("seconds after the fault (bar median, whisker worst trial)")
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _finish(figure, "Fault recovery times", result)


def recovery_autosave(result: RecoveryResult) -> Figure:
    """The persistence trade-off: messages lost on ``kill -9`` against throughput, per autosave policy."""
    sweep = result.get("autosave_sweep") or []
    figure = _figure(7, 4.6)
    axes: Axes = figure.add_subplot()
    for point in sweep:
        lost = percentiles(point["lost"], (50,))
        axes.errorbar(point["throughput_per_s"], lost["p50"], yerr=[[lost["p50"] - lost["min"]],
                      [lost["max"] - lost["p50"]]], fmt="o", color=_SERIES[0][0], capsize=3)
        axes.annotate(f"autosave {point['autosave_interval_s']} s", (point["throughput_per_s"], lost["p50"]),
                      textcoords="offset points", xytext=(6, 4), fontsize=8)
    if not sweep:
        axes.text(0.5, 0.5, "no autosave sweep in this result", ha="center", transform=axes.transAxes)
    axes.set_xlabel("throughput with the policy (messages/s)")
    axes.set_ylabel("messages lost per kill -9 (median, range)")
    axes.grid(True, alpha=0.3)
    return _finish(figure, "Data-centre broker kill -9: loss window vs save cost", result)


# -- WAN link (fmb.bench-wan/1) ------------------------------------------------------------------

def _wan_rows(result: WanResult) -> tuple[list[str], list[tuple[str, list[WanRow]]]]:
    series = list(result["results"].items())
    steps = [row["step"] for row in series[0][1]] if series else []
    return steps, series


def wan_control_latency(result: WanResult) -> Figure:
    """Control one-way latency across the constrained bridge: p50 and p99 per step, with and
    without the priority class (grouped bars, log scale)."""
    figure = _figure(8, 4.6)
    axes: Axes = figure.add_subplot()
    steps, series = _wan_rows(result)
    width = 0.8 / max(1, 2 * len(series))
    bars: tuple[tuple[Literal["p50", "p99"], float, str], ...] = (("p50", 0.45, ""), ("p99", 0.9, "//"))
    for j, ((colour, _, _), (name, rows)) in enumerate(zip(_SERIES, series, strict=False)):
        for k, (key, alpha, hatch) in enumerate(bars):
            offset = (2 * j + k - (2 * len(series) - 1) / 2) * width
            axes.bar([x + offset for x in range(len(rows))], [r["control_ms"].get(key, float("nan")) for r in rows],
                     width, color=colour, alpha=alpha, hatch=hatch, label=f"{name} {key}")
    axes.set_xticks(range(len(steps)), steps)
    axes.set_yscale("log")
    axes.set_xlabel(f"delivery-plane load on the link (delay: {result['conditions']['delay']})")
    axes.set_ylabel("command publish (DC) → received in the field (ms, log)")
    axes.grid(True, which="both", axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncols=2)
    rate = result["conditions"]["link_rate_bits_per_s"] / 1e6
    return _finish(figure, f"Control across a {rate:g} Mbit/s bridge link", result)


def wan_throughput(result: WanResult) -> Figure:
    """What crossed the link per step: delivered flood messages/s and the link's bits/s by class."""
    figure = _figure(8, 4.6)
    axes: Axes = figure.add_subplot()
    steps, series = _wan_rows(result)
    width = 0.8 / max(1, len(series))
    for j, ((colour, _, _), (name, rows)) in enumerate(zip(_SERIES, series, strict=False)):
        xs = [x + (j - (len(series) - 1) / 2) * width for x in range(len(rows))]
        axes.bar(xs, [sum(r["link_bits_per_s"].values()) / 1e3 for r in rows], width, color=colour, alpha=0.8,
                 label=f"{name}: link kbit/s")
        for x, r in zip(xs, rows, strict=True):
            axes.annotate(f"{r['delivered_rate']:.0f} msg/s", (x, sum(r["link_bits_per_s"].values()) / 1e3),
                          textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    axes.axhline(result["conditions"]["link_rate_bits_per_s"] / 1e3, color=_GREY, linestyle="--", linewidth=1,
                 label="link rate")
    axes.set_xticks(range(len(steps)), steps)
    axes.set_ylabel("sent on the link (kbit/s); labels: flood messages delivered/s")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _finish(figure, "Delivery-plane throughput across the constrained link", result)


# -- the operator's view in a browser (fmb.bench-ui/1) ------------------------------------------

def ui_cdf(result: UiResult) -> Figure:
    """The CDF of press -> cap bank shown closed, and press -> meter shown back at 120 V."""
    figure = _figure(7.5, 4.2)
    axes = figure.subplots()
    key: Literal["closed_ms", "restored_ms"]
    for key, label, colour in (("closed_ms", "cap bank shown closed", "#1f5fa8"),
                               ("restored_ms", "meter shown back at 120 V", "#2e7d32")):
        xs, ys = ecdf([s[key] for s in result["samples"]])
        stats = result[key]
        # The two curves sit a few ms apart: percentiles go in the legend, not next to the points.
        axes.step(xs, ys, where="post", color=colour, linewidth=1.8,
                  label=f"{label}: p50 {stats['p50']:.1f}, p99 {stats['p99']:.1f} ms (n={len(xs)})")
        axes.plot([stats["p50"], stats["p99"]], [0.5, 0.99], linestyle="none", marker="o", color=colour, markersize=5)
    axes.set_xlabel("ms after Set voltage was pressed (page clock)")
    axes.set_ylabel("fraction of presses ≤ time")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _finish(figure, f"Operator's view in Chromium: {result['repetitions']} presses of 114 V", result)


def ui_repetitions(result: UiResult) -> Figure:
    """Each press in order: a drift or an outlier shows here, not in the CDF."""
    figure = _figure(7.5, 3.6)
    axes = figure.subplots()
    reps = [s["rep"] for s in result["samples"]]
    key: Literal["closed_ms", "restored_ms"]
    for key, label, colour in (("closed_ms", "cap bank shown closed", "#1f5fa8"),
                               ("restored_ms", "meter shown back at 120 V", "#2e7d32")):
        axes.plot(reps, [s[key] for s in result["samples"]], marker="o", markersize=3, color=colour, label=label)
    axes.set_xlabel("press")
    axes.set_ylabel("ms after the press")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _finish(figure, "Operator's view in Chromium, press by press", result)


# -- crash of a persistent broker (fmb.bench-crash/1) ----------------------------------------------

def _crash_style(policy: Mapping[str, Any]) -> tuple[str, str]:
    """Colour by build, marker by persistence kind (greyscale keeps them apart)."""
    colour = _SERIES[0][0] if policy["mosquitto"] == "2.0" else _SERIES[1][0]
    return colour, {"none": "x", "snapshot": "o", "sqlite": "s"}.get(policy["persistence"], "D")


def crash_curve(result: Result) -> Figure:
    """The trade-off: worst loss window of a kill -9 against the throughput cost, one point per
    policy, the target's box shaded; an arrow marks a window that is only a lower bound."""
    target = result["conditions"]["target"]
    figure = _figure(10, 5.2)
    axes: Axes = figure.add_subplot()
    axes.fill_between([-5, target["cost"] * 100], 0, target["window_s"], color="#1e8449", alpha=0.12,
                      label=f"target: <= {target['window_s']:g} s at <= {target['cost'] * 100:.0f} % cost")
    plotted, top = 0, target["window_s"] * 1.2
    for p in result["policies"]:
        w = p.get("window_s")
        if not w or p.get("cost") is None:
            continue
        top = max(top, w["max"] * 1.3 + 0.15)
        colour, marker = _crash_style(p)
        x = p["cost"] * 100
        axes.errorbar(x, w["max"], yerr=[[w["max"] - w["p50"]], [0]], fmt=marker, color=colour, capsize=3)
        if any(t.get("all_lost") for t in p.get("kills", [])):
            axes.annotate("", (x, w["max"] * 1.25 + 0.1), (x, w["max"]),
                          arrowprops={"arrowstyle": "->", "color": colour})
        # Alternate above / below: policies of one family sit close together.
        axes.annotate(p["policy"], (x, w["max"]), textcoords="offset points", xytext=(6, 4 if plotted % 2 else -10),
                      fontsize=7)
        plotted += 1
    if not plotted:
        axes.text(0.5, 0.5, "no policy with both kill trials and a baseline", ha="center", transform=axes.transAxes)
    axes.set_xlabel("throughput cost against no persistence, same build (%)")
    axes.set_ylabel("traffic lost per kill -9 (s; point worst, whisker to median)")
    axes.set_ylim(-0.05 * top, top)
    axes.grid(True, alpha=0.3)
    axes.legend(handles=[Line2D([], [], color=_SERIES[0][0], marker="o", ls="", label="Mosquitto 2.0"),
                         Line2D([], [], color=_SERIES[1][0], marker="s", ls="", label="Mosquitto 2.1"),
                         *axes.get_legend_handles_labels()[0]], fontsize=8, loc="upper left",
                bbox_to_anchor=(1.01, 1.0))
    return _finish(figure, "Persistent broker kill -9: loss window vs throughput cost", result)


def crash_policies(result: Result) -> Figure:
    """Per policy: the loss window (median, whisker to worst) and the QoS 1 throughput (median, range)."""
    policies = result["policies"]
    figure = _figure(10, 1.2 + 0.42 * len(policies))
    left, right = figure.subplots(1, 2, sharey=True)
    for row, p in enumerate(policies):
        colour, _ = _crash_style(p)
        w, t = p.get("window_s"), p.get("throughput")
        if w:
            left.barh(row, w["p50"], color=colour, alpha=0.8)
            left.errorbar(w["p50"], row, xerr=[[0], [w["max"] - w["p50"]]], fmt="none", ecolor="#17202a", capsize=2)
        else:
            left.text(0, row, " everything (no persistence)", va="center", fontsize=7, color=_GREY)
        if t:
            right.barh(row, t["p50"], color=colour, alpha=0.8)
            right.errorbar(t["p50"], row, xerr=[[t["p50"] - t["min"]], [t["max"] - t["p50"]]], fmt="none",
                           ecolor="#17202a", capsize=2)
    target = result["conditions"]["target"]["window_s"]
    left.axvline(target, color="#1e8449", ls="--", lw=1, label=f"target {target:g} s")
    left.set_yticks(range(len(policies)), [p["policy"] for p in policies], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("traffic lost per kill -9 (s)")
    left.legend(fontsize=8, loc="lower right")
    right.set_xlabel("QoS 1 msg/s acknowledged (queuing for an offline consumer)")
    right.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}k")
    for axes in (left, right):
        axes.grid(True, axis="x", alpha=0.3)
    return _finish(figure, "Loss window and throughput per persistence policy", result)


# -- soak (fmb.bench-soak/1) ---------------------------------------------------------------------

_SOAK_KINDS = {"broker-sigterm": "SIGTERM", "broker-kill9": "kill -9", "device-crash": "crash", "partition": "cut",
               "link-loss": "link loss", "poison": "poison"}


def soak_timeline(result: SoakResult) -> Figure:
    """The whole soak in time: each stream's worst delivery delay per second (log) under the fault windows,
    then per stream what went wrong (at its publish time), and every Appendix A run (pass / fail)."""
    figure = _figure(11, 6.8)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.6))
    streams = result["streams"]
    for (colour, line, _), s in zip(_SERIES, streams, strict=False):
        points = s["delay_ms_by_second"]
        top.plot([p[0] for p in points], [max(p[1], 0.1) for p in points], color=colour, linestyle=line,
                 linewidth=1.2, label=f"{s['name']} ({s['source_broker']} → {s['consumer_broker']})")
    lookback = result["conditions"]["lookback_s"]
    for f in result["faults"]:
        for axes in (top, bottom):  # the window the ledger attributes messages to: from lookback_s before the fault
            axes.axvspan(f["start_s"] - lookback, f["end_s"], color=_GREY, alpha=0.15, linewidth=0)
        # Vertical, at the window's start: many faults in a long soak, and each label still readable.
        target = f["target"].split(" as ")[0].split("/")[-2] if f["kind"] == "poison" else f["target"]
        top.annotate(f"{f['n']} {_SOAK_KINDS.get(f['kind'], f['kind'])} {target}", (f["start_s"], 1.0),
                     xycoords=("data", "axes fraction"), xytext=(1, -3), textcoords="offset points", fontsize=6,
                     rotation=90, va="top", ha="left", color="#17202a",
                     bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.6, "linewidth": 0})
    top.set_yscale("log")
    top.set_ylabel("worst publish → received per second (ms, log)")
    top.grid(True, which="both", alpha=0.3)
    top.legend(fontsize=7, loc="lower left", ncols=2)
    rows = [s["name"] for s in streams] + ["Appendix A"]
    seen: set[str] = set()
    for i, s in enumerate(streams):
        for at, label, marker, colour in ((s["lost_at"], "lost", "x", "#b03a2e"),
                                          (s["unacknowledged_at"], "unacknowledged", "+", "#7d3c98"),
                                          (s["duplicated_at"], "duplicated", "o", "#ca6f1e"),
                                          (s["reordered_at"], "reordered", "^", "#1f618d")):
            if at:
                bottom.plot([a[1] for a in at], [i] * len(at), linestyle="none", marker=marker, color=colour,
                            markersize=5, label=label if label not in seen else None)
                seen.add(label)
    runs = result["appendix_a"]
    for passed, colour, label in ((True, "#1e8449", "Appendix A passed"), (False, "#b03a2e", "Appendix A failed")):
        xs = [r["t_s"] for r in runs if r["passed"] is passed]
        if xs:
            bottom.plot(xs, [len(streams)] * len(xs), linestyle="none", marker="|", markersize=9, color=colour,
                        label=label)
    bottom.set_yticks(range(len(rows)), rows, fontsize=8)
    bottom.set_ylim(-0.6, len(rows) - 0.4)
    bottom.invert_yaxis()
    bottom.set_xlabel("seconds since the streams started (grey: fault windows)")
    bottom.grid(True, axis="x", alpha=0.3)
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    c = result["conditions"]
    return _finish(figure, f"Soak: {c['minutes']:g} min on the {c['backend']} bus, {len(result['faults'])} faults, "
                           f"{result['violations']} invariant violation{'' if result['violations'] == 1 else 's'}",
                   result)


def soak_ledger(result: SoakResult) -> Figure:
    """Per window kind and stream: messages not delivered (lost or unacknowledged), and duplicated or reordered."""
    names = [s["name"] for s in result["streams"]]
    kinds = sorted({r["kind"] for r in result["ledger"]}, key=lambda k: (k != "no fault", k))
    totals: dict[tuple[str, str], list[int]] = {}
    for r in result["ledger"]:
        t = totals.setdefault((r["kind"], r["stream"]), [0, 0, 0])
        t[0] += r["lost"] + r["unacknowledged"]
        t[1] += r["duplicated"]
        t[2] += r["reordered"]
    published: dict[str, int] = {}
    windows: dict[str, set[int | None]] = {}
    for r in result["ledger"]:
        published[r["kind"]] = published.get(r["kind"], 0) + r["published"]
        windows.setdefault(r["kind"], set()).add(r["fault"])
    labels = [f"{k}\n{len(windows[k])} window{'s' if len(windows[k]) > 1 else ''}, {published[k]} msgs"
              if k != "no fault" else f"{k}\n{published[k]} msgs" for k in kinds]
    figure = _figure(11, 4.8)
    panels = figure.subplots(1, 2, sharey=True)
    width = 0.8 / max(1, len(names))
    highest = max([sum(t[:2]) + t[2] for t in totals.values()] or [0])
    for axes, index, title in ((panels[0], 0, "not delivered (lost or unacknowledged)"),
                               (panels[1], 1, "duplicated (solid) and reordered (hatched)")):
        for j, ((colour, _, _), name) in enumerate(zip(_SERIES, names, strict=False)):
            xs = [x + (j - (len(names) - 1) / 2) * width for x in range(len(kinds))]
            counts = [totals.get((k, name), [0, 0, 0]) for k in kinds]
            heights = [c[index] for c in counts]
            axes.bar(xs, heights, width, color=colour, alpha=0.85, label=name)
            if index == 1:
                axes.bar(xs, [c[2] for c in counts], width * 0.5, color="white", edgecolor=colour, hatch="///",
                         bottom=heights)
            for x, c in zip(xs, counts, strict=True):  # every count written out: a zero is a result too
                shown = c[0] if index == 0 else c[1] + c[2]
                axes.annotate(str(c[0]) if index == 0 else f"{c[1]}+{c[2]}", (x, shown), textcoords="offset points",
                              xytext=(0, 2), ha="center", fontsize=6.5, color=colour)
        axes.set_xticks(range(len(kinds)), labels, fontsize=7.5)
        axes.set_yscale("symlog", linthresh=1)
        axes.set_ylim(0, max(10, highest * 3))
        axes.set_title(title, fontsize=10)
        axes.grid(True, axis="y", alpha=0.3)
    panels[0].set_ylabel("messages (all windows of the kind)")
    panels[0].legend(fontsize=8)
    return _finish(figure, "Soak ledger per fault kind", result)


# -- scale (fmb.bench-scale/1) ----------------------------------------------------------------------

def scale_ramp(result: ScaleResult) -> Figure:
    """Meters connected over time as every fleet starts at once, and memory per connection per substation."""
    ramp = result["ramp"]
    figure = _figure(11, 4.5)
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    xs = [p[0] for p in ramp["connected_by_time"]]
    left.plot(xs, [p[1] for p in ramp["connected_by_time"]], color=_SERIES[0][0], linewidth=1.8,
              label=f"connected ({ramp['meters']:,} meters, {ramp['substations']} substations)")
    left.axhline(ramp["meters"], color=_GREY, linestyle=":", linewidth=1, label="every meter")
    target = result["targets"]["meters_min"]
    if target <= 1.5 * ramp["meters"]:
        left.axhline(target, color=_GREY, linestyle="--", linewidth=1, label=f"target: {target:,} meters")
    if ramp["seconds_to_all"] is not None:
        left.axvline(ramp["seconds_to_all"], color=_SERIES[1][0], linestyle="--", linewidth=1,
                     label=f"all connected: {ramp['seconds_to_all']:.1f} s ({ramp['handshakes_per_s'] or 0:,.0f}/s)")
    left.set_xlabel("seconds since the fleets started")
    left.set_ylabel("meters connected (fleets' heartbeats)")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    rows = ramp["brokers"]
    positions = range(len(rows))
    for offset, key, label, (colour, _, _) in ((-0.2, "broker_kb_per_connection", "broker", _SERIES[1]),
                                              (0.2, "fleet_kb_per_connection", "fleet process", _SERIES[2])):
        values = [r[key] or 0.0 for r in rows]  # type: ignore[literal-required]
        right.bar([p + offset for p in positions], values, width=0.4, color=colour, label=label)
    right.set_xticks(list(positions), [r["broker"].removesuffix("-delivery") for r in rows], rotation=45,
                     ha="right", fontsize=7)
    right.set_yscale("log")
    right.set_ylabel("KiB per connection (RSS, log)")
    right.grid(True, axis="y", which="both", alpha=0.3)
    right.legend(fontsize=8)
    return _finish(figure, "Connection ramp: every meter with its own certificate", result)


def scale_steady(result: ScaleResult) -> Figure:
    """Meter -> DMS latency (p50, p99) against the readings offered per second, with the targets."""
    figure = _figure(8, 4.8)
    axes: Axes = figure.add_subplot()
    points = sorted(result["steady"], key=lambda p: p["offered_per_s"])
    xs = [p["delivered_per_s"] for p in points]
    key: Literal["p50", "p99"]
    for key, (colour, line, marker) in (("p99", _SERIES[0]), ("p50", _SERIES[1])):
        axes.plot(xs, [p["latency_ms"].get(key, float("nan")) for p in points], color=colour, linestyle=line,
                  marker=marker, label=f"meter → DMS {key}")
    for p in points:
        axes.annotate(f"{p['meters']:,} meters / {p['interval_s']:g} s", (p["delivered_per_s"],
                      p["latency_ms"].get("p99", float("nan"))), textcoords="offset points", xytext=(5, 5), fontsize=7)
    t = result["targets"]
    axes.axhline(t["latency_p99_max_ms"], color=_GREY, linestyle="--", linewidth=1,
                 label=f"target p99 ≤ {t['latency_p99_max_ms']:g} ms")
    axes.axvline(t["readings_per_s_min"], color=_GREY, linestyle=":", linewidth=1,
                 label=f"target {t['readings_per_s_min']:,.0f} readings/s")
    axes.set_yscale("log")
    axes.set_xlabel("readings delivered to the DMS side per second")
    axes.set_ylabel("reading timestamp → DMS side (ms, log)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return _finish(figure, "Steady state: meter → substation → bridge → data centre", result)


def scale_storm(result: ScaleResult) -> Figure:
    """Meters heard from again after their broker's restart, and control round trips before and during it."""
    figure = _figure(11, 4.5)
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    storms = result["storm"]
    for (colour, line, _), storm in zip(_SERIES, storms, strict=False):
        curve = storm["reported_by_time"]
        left.step([0.0, *(p[0] for p in curve)], [0, *(p[1] for p in curve)], where="post", color=colour,
                  linestyle=line, label=f"{storm['config']}: {storm['reported']:,}/{storm['meters']:,} "
                  f"in {storm['reported_s']:.1f} s" if storm["reported_s"] is not None else
                  f"{storm['config']}: {storm['reported']:,}/{storm['meters']:,} (not all)")
    t = result["targets"]
    left.axvline(t["storm_back_max_s"], color=_GREY, linestyle="--", linewidth=1,
                 label=f"target ≤ {t['storm_back_max_s']:g} s")
    left.set_xlabel("seconds since the delivery broker accepted connections again")
    left.set_ylabel("meters reported again (DMS side)")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    labels = [s["config"] for s in storms]
    positions = range(len(storms))
    for offset, key, label, (colour, _, _) in ((-0.2, "control_idle_ms", "before the storm", _SERIES[1]),
                                              (0.2, "control_ms", "during the storm", _SERIES[0])):
        values = [s[key].get("p99", float("nan")) for s in storms]  # type: ignore[literal-required]
        right.bar([p + offset for p in positions], values, width=0.4, color=colour, label=f"p99 {label}")
    right.axhline(t["storm_control_p99_max_ms"], color=_GREY, linestyle="--", linewidth=1,
                  label=f"target ≤ {t['storm_control_p99_max_ms']:g} ms (segregated)")
    right.set_xticks(list(positions), [f"control plane\n{name}" for name in labels])
    right.set_yscale("log")
    right.set_ylabel("command → ack round trip (ms, log)")
    right.grid(True, axis="y", which="both", alpha=0.3)
    right.legend(fontsize=8)
    meters = storms[0]["meters"] if storms else 0
    return _finish(figure, f"Reconnect storm: {meters:,} meters' broker restarted", result)
