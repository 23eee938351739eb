"""``fmb report RUN_DIR``: every result JSON of a run directory as PNG figures and a Markdown report.

A result names its shape in its ``"schema"`` string; :data:`RENDERERS` maps each schema to a
:class:`Renderer` (its figures and its Markdown section). Adding a benchmark means writing its
figure functions (``testbed/reporting/plots.py``), a Markdown function
(``testbed/reporting/text.py``) and one :func:`register` call below. Rendering reads the JSON
only; nothing is re-measured. A file whose schema has no renderer, or that cannot be read, is
listed in the report rather than failing the whole run.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from matplotlib.figure import Figure

from testbed.core.errors import TestbedError
from testbed.core.results import LatencyResultV3
from testbed.reporting import plots
from testbed.reporting.scenario import timeline_figure
from testbed.reporting.text import (  # re-exported: the notebooks read them from here
    bottleneck_markdown,
    conditions_markdown,
    crash_markdown,
    latency_markdown,
    markdown_table,
    prioritization_markdown,
    recovery_markdown,
    scale_markdown,
    scenario_markdown,
    soak_markdown,
    ui_markdown,
    wan_markdown,
)

__all__ = [
    "RENDERERS",
    "REPORT_FILE",
    "Renderer",
    "RunReport",
    "bottleneck_markdown",
    "conditions_markdown",
    "crash_markdown",
    "latency_markdown",
    "load_result",
    "markdown_table",
    "prioritization_markdown",
    "recovery_markdown",
    "register",
    "render_run",
    "scale_markdown",
    "scenario_markdown",
    "soak_markdown",
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


# -- what each schema shows ------------------------------------------------------------------

register(Renderer("fmb.scenario-result/1", "Scenario", lambda r: {"timeline": timeline_figure(r)},
                  scenario_markdown))
register(Renderer("fmb.bench-latency/2", "Latency benchmark",
                  lambda r: {"cdf": plots.latency_cdf(r), "steps": plots.latency_steps(r)}, latency_markdown))
register(Renderer[LatencyResultV3]("fmb.bench-latency/3", "Latency benchmark",
                  lambda r: {"cdf": plots.latency_cdf(r), "steps": plots.latency_steps(r),
                             "waterfall": plots.latency_waterfall(r)}, latency_markdown))
register(Renderer("fmb.bench-prioritization/1", "Control-plane prioritisation benchmark",
                  lambda r: {"control": plots.prioritization_control_latency(r),
                             "throughput": plots.prioritization_throughput(r)}, prioritization_markdown))
register(Renderer("fmb.bench-recovery/1", "Recovery benchmark",
                  lambda r: {"times": plots.recovery_times(r), "autosave": plots.recovery_autosave(r)},
                  recovery_markdown))
register(Renderer("fmb.bench-crash/1", "Crash of a persistent broker (kill -9)",
                  lambda r: {"curve": plots.crash_curve(r), "policies": plots.crash_policies(r)}, crash_markdown))
register(Renderer("fmb.bench-wan/1", "WAN link benchmark (control across a constrained bridge)",
                  lambda r: {"control": plots.wan_control_latency(r), "throughput": plots.wan_throughput(r)},
                  wan_markdown))
register(Renderer("fmb.bench-ui/1", "Tablet web UI in a browser",
                  lambda r: {"cdf": plots.ui_cdf(r), "repetitions": plots.ui_repetitions(r)}, ui_markdown))
register(Renderer("fmb.bench-soak/1", "Chaos soak: faults at random times, a ledger of every message",
                  lambda r: {"timeline": plots.soak_timeline(r), "ledger": plots.soak_ledger(r)}, soak_markdown))
register(Renderer("fmb.bench-scale/1", "Utility scale: thousands of meters, each with its own certificate",
                  lambda r: {"ramp": plots.scale_ramp(r), "steady": plots.scale_steady(r),
                             "storm": plots.scale_storm(r)},
                  scale_markdown))
register(Renderer("fmb.bench-bottleneck/1", "Shared against segregated at one bottleneck",
                  lambda r: {"curves": plots.bottleneck_curves(r)}, bottleneck_markdown))


# -- a whole run directory ----------------------------------------------------------------------

@dataclass
class RunReport:
    """What :func:`render_run` wrote and what it could not render (with the reason)."""

    path: Path
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _result_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*.json")
                  if p.name == "result.json" or p.name.startswith(("bench-", "model-")))


def render_run(run_dir: Path) -> RunReport:
    """Render every result JSON under ``run_dir``: PNGs beside each file, ``run_dir/report.md``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TestbedError(f"{run_dir} is not a directory; give the directory a run or benchmark wrote")
    files = _result_files(run_dir)
    if not files:
        raise TestbedError(f"no result JSON (result.json, bench-*.json, model-*.json) under {run_dir}")
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
