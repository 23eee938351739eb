"""``fmb report RUN_DIR``: every result JSON of a run directory as PNG figures and a Markdown report.

A result names its shape in its ``"schema"`` string; :data:`RENDERERS` maps each schema to a
:class:`Renderer` (its figures and its Markdown section). Adding a benchmark means writing its
figure functions (``testbed/reporting/plots.py``), a Markdown function and one :func:`register`
call below. Rendering reads the JSON only; nothing is re-measured. A file whose schema has no
renderer, or that cannot be read, is listed in the report rather than failing the whole run.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from matplotlib.figure import Figure

from testbed.core.errors import TestbedError
from testbed.core.results import (
    LatencyResult,
    PrioritizationResult,
    RecoveryFault,
    RecoveryResult,
    ScenarioResultDoc,
    UiResult,
    WanResult,
)
from testbed.core.stats import percentiles
from testbed.reporting import plots
from testbed.reporting.scenario import summary_table, timeline_figure

__all__ = [
    "RENDERERS",
    "REPORT_FILE",
    "Renderer",
    "RunReport",
    "conditions_markdown",
    "latency_markdown",
    "load_result",
    "markdown_table",
    "prioritization_markdown",
    "recovery_markdown",
    "register",
    "render_run",
    "scenario_markdown",
    "ui_markdown",
    "wan_markdown",
]

Result = Mapping[str, Any]  # any result document; each schema's own type is in testbed.core.results
R = TypeVar("R")
REPORT_FILE = "report.md"


@dataclass(frozen=True)
class Renderer(Generic[R]):
    """How to show one result schema (``R``, its type): a title, named figures and a Markdown section."""

    schema: str
    title: str
    figures: Callable[[R], dict[str, Figure]]
    markdown: Callable[[R], str]


# By schema string: a document loaded from a file is handed to the renderer its "schema" names.
RENDERERS: dict[str, Renderer[Any]] = {}


def register(renderer: Renderer[R]) -> Renderer[R]:
    """Add ``renderer`` to :data:`RENDERERS` under its schema (replacing any earlier one)."""
    RENDERERS[renderer.schema] = renderer
    return renderer


def load_result(path: Path | str) -> dict[str, Any]:
    """Load a result JSON; raises TestbedError naming the file when it is not one."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TestbedError(f"cannot read result {path}: {e}") from None
    if not isinstance(result, dict) or not isinstance(result.get("schema"), str):
        raise TestbedError(f"{path} is not a testbed result: it has no \"schema\" string")
    return result


# -- Markdown helpers ---------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats to 3 decimals (1 from 10 up), None as –."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, ", ".join(map(str, value)) if isinstance(value, list) else value


def conditions_markdown(result: Result) -> str:
    """The result's ``conditions`` and ``environment`` as one key/value table."""
    rows = [*_flatten("", result.get("conditions") or {}), *_flatten("", result.get("environment") or {})]
    if result.get("created"):
        rows.insert(0, ("created", result["created"]))
    return markdown_table(["condition", "value"], rows)


# -- scenario results (fmb.scenario-result/1) ---------------------------------------------------

def scenario_markdown(result: ScenarioResultDoc) -> str:
    """The scenario's step table and verdict, as the terminal prints it."""
    return "```\n" + summary_table(result) + "```\n"


# -- latency (fmb.bench-latency/2) --------------------------------------------------------------

def latency_markdown(result: LatencyResult) -> str:
    """Headline table per QoS, then the per-step table (p50 / p90 / p99 / max, ms)."""
    target = result["target_ratio"]
    out = [markdown_table(
        ["QoS", "e2e p50", "p90", "p99", "max", "one hop p50", "p90", "p99", "max", "traversals",
         "traversals × hop p50", f"ratio (target ≤ {target})", "met"],
        [[q["qos"], *(q["e2e_ms"][k] for k in ("p50", "p90", "p99", "max")),
          *(q["one_hop_ms"][k] for k in ("p50", "p90", "p99", "max")), q["critical_path"]["total"],
          q["critical_path_one_hop_ms"], q["overhead_ratio"], q["meets_target"]] for q in result["by_qos"]])]
    out.append("\nMilliseconds. Ratio = end-to-end p50 ÷ (broker traversals on the critical path × one-hop p50); "
               f"critical path: steps {result['by_qos'][0]['critical_path']['path']}.\n\n"
               "Per step (time from the publish of the step it follows to its own publish; `display` is the "
               "diagram's publish to the tablet showing it), p50 / p99 ms:\n\n")
    levels = result["by_qos"]
    names = [(s["n"], s["name"], s["plane"], s["traversals"]) for s in levels[0]["steps"]]
    rows = []
    for i, (n, name, plane, traversals) in enumerate(names):
        on_path = levels[0]["steps"][i]["on_critical_path"]
        rows.append([n, name, plane, f"{traversals}{'' if on_path else ' (off path)'}",
                     *(f"{q['steps'][i]['hop_ms']['p50']:.2f} / {q['steps'][i]['hop_ms']['p99']:.2f}" for q in levels)])
    rows.append(["–", "display", "–", "–",
                 *(f"{q['display_ms']['p50']:.2f} / {q['display_ms']['p99']:.2f}" for q in levels)])
    out.append(markdown_table(["step", "name", "plane", "traversals", *(f"QoS {q['qos']}" for q in levels)], rows))
    return "".join(out)


# -- prioritisation (fmb.bench-prioritization/1) -----------------------------------------------

def prioritization_markdown(result: PrioritizationResult) -> str:
    """Control p50 / p99 and throughput per flood rate and configuration, then the targets."""
    rows = []
    for name, steps in result["results"].items():
        for s in steps:
            c = s["control_ms"]
            rows.append([name, s["offered_rate"], s["achieved_rate"], c.get("p50"), c.get("p99"), c.get("max"),
                         c.get("lost")])
    out = [markdown_table(["configuration", "flood offered /s", "delivered /s", "control p50 ms", "p99 ms",
                           "max ms", "unacked"], rows)]
    headline = result.get("headline") or {}
    if headline:
        out.append("\nAt the highest flood rate:\n\n" + markdown_table(
            ["configuration", "idle p99 ms", "saturation p99 ms", "saturation ÷ idle", "delivered /s"],
            [[name, h.get("idle_p99_ms"), h.get("saturation_p99_ms"), h.get("saturation_over_idle"),
              h.get("saturation_achieved_rate")] for name, h in headline.items()]))
    targets = result.get("targets")
    if targets:
        out.append("\nTargets:\n\n" + markdown_table(["target", "value"], list(targets.items())))
    return "".join(out)


# -- recovery (fmb.bench-recovery/1, proposed shape) --------------------------------------------

def _met(fault: RecoveryFault) -> bool | None:
    target = fault.get("target")
    if not target:
        return None
    ok = True
    for t in fault["trials"]:
        if "lost" in target and t.get("lost") is not None:
            ok &= t["lost"] <= target["lost"]
        if "whole_s" in target and (whole := t.get("whole_s")) is not None:
            ok &= whole <= target["whole_s"]
    return ok


def recovery_markdown(result: RecoveryResult) -> str:
    """Per fault: median and worst times, messages lost and duplicated over the trials, the target."""
    rows = []
    for f in result["faults"]:
        times = []
        for key, _ in plots.RECOVERY_TIMES:
            values = [v for t in f["trials"] if (v := t.get(key)) is not None]
            times.append(f"{percentiles(values, (50,))['p50']:.3f} / {max(values):.3f}" if values else None)
        name = f"{f['name']} ({f['direction']})" if f.get("direction") else f["name"]
        rows.append([name, f.get("qos"), len(f["trials"]), *times, sum(t.get("lost", 0) for t in f["trials"]),
                     sum(t.get("duplicated", 0) for t in f["trials"]), _met(f)])
    out = [markdown_table(["fault", "QoS", "trials", "detect s (median / worst)", "reconnect s", "whole s",
                           "lost (all trials)", "duplicated", "target met"], rows)]
    sweep = result.get("autosave_sweep")
    if sweep:
        out.append("\nAutosave sweep (data-centre broker `kill -9`):\n\n" + markdown_table(
            ["autosave interval s", "throughput /s", "lost median", "lost max"],
            [[p["autosave_interval_s"], p["throughput_per_s"], percentiles(p["lost"], (50,))["p50"], max(p["lost"])]
             for p in sweep]))
    return "".join(out)


register(Renderer("fmb.scenario-result/1", "Scenario", lambda r: {"timeline": timeline_figure(r)},
                  scenario_markdown))
register(Renderer("fmb.bench-latency/2", "Latency benchmark",
                  lambda r: {"cdf": plots.latency_cdf(r), "steps": plots.latency_steps(r)}, latency_markdown))
register(Renderer("fmb.bench-prioritization/1", "Control-plane prioritisation benchmark",
                  lambda r: {"control": plots.prioritization_control_latency(r),
                             "throughput": plots.prioritization_throughput(r)}, prioritization_markdown))
register(Renderer("fmb.bench-recovery/1", "Recovery benchmark",
                  lambda r: {"times": plots.recovery_times(r), "autosave": plots.recovery_autosave(r)},
                  recovery_markdown))


# -- WAN link (fmb.bench-wan/1) -----------------------------------------------------------------

def wan_markdown(result: WanResult) -> str:
    """Control p50 / p99 and what crossed the link, per configuration and step."""
    rows = []
    for name, steps in result["results"].items():
        for s in steps:
            c = s["control_ms"]
            rows.append([name, s["step"], s["offered_rate"], s["delivered_rate"],
                         round(sum(s["link_bits_per_s"].values()) / 1e3, 1), c.get("p50"), c.get("p99"),
                         c.get("max"), c.get("missing")])
    out = [markdown_table(["configuration", "step", "flood offered /s", "delivered /s", "link kbit/s",
                           "control p50 ms", "p99 ms", "max ms", "missing"], rows)]
    out.append(f"\nNo priority ÷ priority, control p99 under flood: "
               f"{_cell(result.get('no_priority_over_priority_p99'))}. Delay: {result['conditions'].get('delay')}.\n")
    return "".join(out)


register(Renderer("fmb.bench-wan/1", "WAN link benchmark (control across a constrained bridge)",
                  lambda r: {"control": plots.wan_control_latency(r), "throughput": plots.wan_throughput(r)},
                  wan_markdown))


def ui_markdown(result: UiResult) -> str:
    """Percentiles of what the operator saw, the browser, and the screenshot."""
    rows = [[label, *(stats.get(p) for p in ("n", "p50", "p90", "p99", "max"))]
            for stats, label in ((result["closed_ms"], "cap bank shown closed"),
                                 (result["restored_ms"], "meter shown back at 120 V"))]
    return (markdown_table(["after pressing Set voltage (114 V)", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
            + f"\n{result['what']}. {result['conditions']['browser']}; {result['conditions']['page']}. "
              f"Screenshot: `{Path(result['screenshot']).name}`.\n")


register(Renderer("fmb.bench-ui/1", "Tablet web UI in a browser",
                  lambda r: {"cdf": plots.ui_cdf(r), "repetitions": plots.ui_repetitions(r)}, ui_markdown))


# -- a whole run directory ----------------------------------------------------------------------

@dataclass
class RunReport:
    """What :func:`render_run` wrote and what it could not render (with the reason)."""

    path: Path
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _result_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*.json")
                  if p.name == "result.json" or (p.name.startswith("bench-") and p.suffix == ".json"))


def render_run(run_dir: Path) -> RunReport:
    """Render every result JSON under ``run_dir``: PNGs beside each file, ``run_dir/report.md``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TestbedError(f"{run_dir} is not a directory; give the directory a run or benchmark wrote")
    files = _result_files(run_dir)
    if not files:
        raise TestbedError(f"no result JSON (result.json, bench-*.json) under {run_dir}")
    report = RunReport(run_dir / REPORT_FILE)
    sections = [f"# Results in `{run_dir.name}`\n\nRendered {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
                "from the JSON files below by `fmb report`; nothing was re-measured.\n"]
    for path in files:
        relative = path.relative_to(run_dir)
        try:
            result = load_result(path)
            renderer = RENDERERS.get(result["schema"])
            if renderer is None:
                raise TestbedError(f"no renderer for schema {result['schema']!r} "
                                   f"(known: {', '.join(sorted(RENDERERS))})")
            body = renderer.markdown(result)
            pictures = []
            for name, figure in renderer.figures(result).items():
                png = path.with_name(f"{path.stem}-{name}.png")
                figure.savefig(png, format="png")
                report.figures.append(png)
                pictures.append(f"![{renderer.title}: {name}]({png.relative_to(run_dir).as_posix()})\n")
        except (TestbedError, KeyError, TypeError, ValueError) as e:
            reason = str(e) if isinstance(e, TestbedError) else f"{type(e).__name__}: {e} (does it match its schema?)"
            report.skipped.append(f"{relative}: {reason}")
            continue
        sections.append(f"\n## {renderer.title} — `{relative.as_posix()}`\n\n{body}\n" + "\n".join(pictures)
                        + "\n### Conditions\n\n" + conditions_markdown(result))
    if report.skipped:
        sections.append("\n## Not rendered\n\n" + "".join(f"- {s}\n" for s in report.skipped))
    report.path.write_text("".join(sections))
    return report
