"""``fmb``: the testbed's command line. Thin: it parses, calls the library, prints.

One module per command group adds its subcommands: :mod:`~testbed.cli.bus` (up, down, status,
demo, run), :mod:`~testbed.cli.certs` (certs init, revoke, reissue, rotate),
:mod:`~testbed.cli.bench` (bench), :mod:`~testbed.cli.model` (model),
:mod:`~testbed.cli.csf` (inventory, profile, monitor, respond, recover, backup, restore),
:mod:`~testbed.cli.deadletters` (deadletters) and
:mod:`~testbed.cli.report` (report), :mod:`~testbed.cli.compose` (compose), with what they share
in :mod:`~testbed.cli.common`. Every failure the library reports (a :class:`TestbedError`) and
every usage error becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from testbed.cli import bench, bus, certs, compose, csf, deadletters, model, report
from testbed.cli.common import Commands, Parser
from testbed.core.errors import TestbedError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fmb", description="Field Message Bus testbed")
    commands = Commands(parser)
    # In the order `fmb --help` lists them: running scenarios first, the CSF functions last.
    for add in (bus.add_demo, bus.add_run, bench.add_bench, model.add_model, report.add_report, bus.add_up,
                bus.add_down, bus.add_status, csf.add_profile, csf.add_inventory, certs.add_certs, csf.add_recover,
                csf.add_backup, csf.add_restore, csf.add_respond, csf.add_monitor, deadletters.add_deadletters,
                compose.add_compose):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TestbedError as e:
        red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
        print(f"{red}fmb: error: {e}{reset}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fmb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
