"""The capacity model's figures and its validation table, drawn from its JSON documents alone.

Each function returns a matplotlib Figure on an Agg canvas (no pyplot state), as
``testbed/reporting/plots.py`` does, so ``fmb model`` saves them and the notebook shows them.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from testbed.core.results import ModelAnswers, ModelCalibration, ModelValidation
from testbed.reporting.render import Renderer, markdown_table, register

__all__ = [
    "answer_plots",
    "answers_markdown",
    "calibration_markdown",
    "storm_figure",
    "sweep_figure",
    "validation_figure",
    "validation_plot",
    "validation_table",
]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def validation_table(doc: ModelValidation) -> str:
    """The table of the closing note: predicted, measured, error, target, per point and metric."""
    lines = [f"{'benchmark':15}{'point':48}{'metric':18}{'measured':>10}{'predicted':>11}{'error':>9}  target",
             "-" * 120]
    for r in doc["rows"]:
        lines.append(f"{r['benchmark']:15}{r['point']:48}{r['metric']:18}{r['measured']:>10.3f}{r['predicted']:>11.3f}"
                     f"{r['error']:>+9.1%}  <= {r['target']:.0%} {'met' if r['met'] else 'NOT met'}")
    lines.append(f"{doc['met']} of {doc['total']} within target; contention: {doc['contention']}")
    return "\n".join(lines)


def validation_figure(doc: ModelValidation) -> Figure:
    """Predicted against measured on log axes, one marker per metric, the ±target band around y = x."""
    figure = _figure(10, 3.6)
    metrics = ("throughput_per_s", "p50_ms", "p99_ms")
    for ax, metric in zip(figure.subplots(1, 3), metrics, strict=True):
        rows = [r for r in doc["rows"] if r["metric"] == metric]
        for bench, marker in (("scale", "o"), ("prioritization", "s")):
            mine = [r for r in rows if r["benchmark"] == bench]
            ax.scatter([r["measured"] for r in mine], [r["predicted"] for r in mine], marker=marker, label=bench,
                       c=["tab:green" if r["met"] else "tab:red" for r in mine])
        values = [v for r in rows for v in (r["measured"], r["predicted"]) if v > 0]
        if values:
            low, high = min(values) / 1.5, max(values) * 1.5
            target = rows[0]["target"]
            ax.plot([low, high], [low, high], color="black", lw=0.8)
            ax.fill_between([low, high], [low * (1 - target), high * (1 - target)],
                            [low * (1 + target), high * (1 + target)], color="grey", alpha=0.2)
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_title(metric)
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
        ax.legend(fontsize="small")
    figure.suptitle(f"Model against measurements: {doc['met']} of {doc['total']} within target (green)",
                    fontsize="medium")
    return figure


def validation_plot(doc: ModelValidation, out: Path) -> Path:
    path = out / "model-validation.png"
    validation_figure(doc).savefig(path, dpi=110)
    return path


def sweep_figure(doc: ModelAnswers) -> Figure:
    """Over the substations: the data centre's delivery broker's utilisation, and control p99 both ways."""
    figure = _figure(10, 3.8)
    left, right = figure.subplots(1, 2)
    n = [p["substations"] for p in doc["sweep"]]
    left.plot(n, [p.get("segregated_dc_delivery_offered_load") for p in doc["sweep"]], "o-")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set_xlabel("substations (2,000 meters each, every 60 s)")
    left.set_ylabel("dc-delivery offered load (1 = saturated)")
    for control in ("segregated", "shared"):
        right.plot(n, [p[f"{control}_control_p99_ms"] for p in doc["sweep"]], "o-", label=control)
    right.axhline(100, color="grey", lw=0.8, ls="--", label="IEC 61850-5 medium (100 ms)")
    right.set_yscale("log")
    right.set_xlabel("substations")
    right.set_ylabel("control round trip p99 (ms)")
    right.legend(fontsize="small")
    figure.suptitle(f"Model: control plane segregated vs shared (calibration {Path(doc['calibration']).name})",
                    fontsize="medium")
    return figure


def storm_figure(doc: ModelAnswers) -> Figure:
    """The reconnection storm: time until every client is back, with and without jitter."""
    figure = _figure(6, 3.4)
    ax = figure.subplots()
    labels = [str(s.get("backoff")) for s in doc["storm"]]
    values = [float(v) if isinstance(v := s.get("recovery_s"), int | float) else 0.0 for s in doc["storm"]]
    ax.bar(labels, values, color=["tab:blue", "tab:orange"][: len(values)])
    for i, s in enumerate(doc["storm"]):
        ax.annotate(f"{s.get('attempts')} attempts\n{s.get('abandoned')} abandoned", (i, values[i]),
                    ha="center", va="bottom", fontsize="small")
    clients = doc["storm"][0].get("clients") if doc["storm"] else "?"
    ax.set_ylabel("seconds until every client is back")
    ax.set_title(f"Model: dc-delivery restart, {clients} reconnections", fontsize="medium")
    return figure


def answer_plots(doc: ModelAnswers, out: Path) -> list[Path]:
    paths = [out / "model-sweep.png", out / "model-storm.png"]
    sweep_figure(doc).savefig(paths[0], dpi=110)
    storm_figure(doc).savefig(paths[1], dpi=110)
    return paths


# -- fmb report: the model's documents beside the benchmarks' ------------------------------------

def calibration_markdown(doc: ModelCalibration) -> str:
    """The measured service times the model runs on, with the load they were measured at."""
    fit, c = doc["broker_fit"], doc["conditions"]
    rows = [[q, fit["base_us"][q], fit["per_subscriber_us"][q], fit["per_kib_us"][q]] for q in sorted(fit["base_us"])]
    rt = doc["round_trip_ms"]
    return (markdown_table(["QoS", "broker CPU µs per message", "per extra subscriber µs", "per KiB µs"], rows)
            + f"\n\nTLS handshake: {doc['handshake_us']:g} µs of broker CPU per connection; idle command round trip "
            f"p50 {rt.get('p50', float('nan')):g} ms, p99 {rt.get('p99', float('nan')):g} ms. Measured with "
            f"{c['messages_per_point']} messages per point, load average {c['load_average_before']} → "
            f"{c['load_average_after']}.\n")


def answers_markdown(doc: ModelAnswers) -> str:
    base = doc["baseline"]
    return ("Baseline (300 substations x 2,000 meters every 60 s): "
            + ", ".join(f"{k} {v}" for k, v in base.items())
            + f".\n\nData-centre delivery broker saturates at {doc['saturation_substations']} substations. "
            f"WAN per substation: " + ", ".join(f"{k} {v:g}" for k, v in doc["wan_per_substation"].items()) + ".\n")


register(Renderer("fmb.model-calibration/1", "Capacity model: calibration", lambda r: {}, calibration_markdown))
register(Renderer("fmb.model-validation/1", "Capacity model: validation against the benchmarks",
                  lambda r: {"validation": validation_figure(r)},
                  lambda r: "```\n" + validation_table(r) + "\n```\n"))
register(Renderer("fmb.model-answers/1", "Capacity model: the utility-scale questions",
                  lambda r: {"sweep": sweep_figure(r), "storm": storm_figure(r)}, answers_markdown))
