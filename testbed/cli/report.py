"""``fmb report RUN_DIR``: render the result files a run or benchmark wrote, without measuring again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.cli.common import Commands

__all__ = ["add_report"]


def cmd_report(args: argparse.Namespace) -> int:
    # Deliberately here: rendering loads matplotlib, which only this command and the benchmarks need.
    import testbed.model.plots  # noqa: F401  (registers the capacity model's renderers)
    from testbed.bench import segregation
    from testbed.reporting.render import render_run

    run_dir = Path(args.run_dir)
    # Bottleneck documents (fmb.bench-bottleneck/1) together make the report "when does segregation matter";
    # they are checked before anything is drawn, so a bad one costs a line, not a minute of figures.
    documents = segregation.find_documents([run_dir]) if run_dir.is_dir() else []
    bottlenecks = segregation.load_documents(documents) if documents else []
    report = render_run(run_dir)
    for skipped in report.skipped:
        print(f"fmb: not rendered: {skipped}", file=sys.stderr)
    print(f"report: {report.path} ({len(report.figures)} figures beside the result files)")
    if bottlenecks:
        path = segregation.write_report(bottlenecks, run_dir)
        print(f"report: {path} (when does segregation matter, from {len(documents)} bottleneck documents)")
    return 0 if report.figures or not report.skipped else 1


def add_report(commands: Commands) -> None:
    report = commands.sub.add_parser("report", help="render every result JSON of a run directory to PNG and report.md",
                                     description="Render every result JSON in RUN_DIR (scenario result.json, "
                                                 "bench-*.json) to PNG figures and a Markdown summary, report.md; "
                                                 "with bottleneck documents (fmb.bench-bottleneck/1) among them, "
                                                 "also segregation.md: when does segregation matter. "
                                                 "Nothing is re-measured.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="directory holding result JSON files")
    report.set_defaults(func=cmd_report)
