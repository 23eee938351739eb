"""``fmb deadletters``: the messages the bus's processes received and could not handle.

Each device and the monitor acknowledges a message it cannot handle (so that no persistent
session wedges on it) and records it as a dead letter beside its ready file
(:mod:`testbed.transport.deadletter`): on the local bus in ``<state>/run/<process>.deadletters.jsonl``,
which this command lists across all processes, newest last; a bus that has stopped keeps them.
On the Compose bus each container keeps its own in ``/run/fmb/`` (a tmpfs):
``docker compose exec dms-1 cat /run/fmb/dms-1.deadletters.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys

from testbed.cli.common import Commands, paths
from testbed.core.errors import TestbedError
from testbed.transport.deadletter import FILE_SUFFIX, read_dead_letters
from testbed.transport.guard import one_line

__all__ = ["add_deadletters"]


def cmd_deadletters(args: argparse.Namespace) -> int:
    if args.last < 1:
        raise TestbedError(f"--last is {args.last}; give how many of the newest dead letters to show (1 or more)")
    _, state = paths(args)
    run_dir = state / "run"
    letters = sorted(read_dead_letters(run_dir), key=lambda r: r.get("time_ns") or 0) if run_dir.is_dir() else []
    if args.receiver:
        letters = [r for r in letters if str(r.get("receiver", "")).startswith(args.receiver)]
    shown = letters[-args.last:]
    for r in shown:
        if args.json:
            print(json.dumps(r))
            continue
        claimed = r.get("source") not in (None, r.get("mrid"))
        sender = str(r.get("mrid", "?")) + (f" (source {r.get('source')!r})" if claimed else "")
        print(f"{r.get('time', '?')}  {str(r.get('receiver', '?')):10} {one_line(str(r.get('topic', '?')), 60)}  "
              f"from {one_line(sender, 60)}  {r.get('size', '?')} B  {one_line(str(r.get('reason', '')), 120)}  "
              f"head {one_line(str(r.get('head', '')), 40)}")
    print(f"{len(shown)} dead letters shown, {len(letters)} in all, from {run_dir}/*{FILE_SUFFIX}; on the Compose "
          f"bus each container keeps its own in /run/fmb/", file=sys.stderr if args.json else sys.stdout)
    return 0


def add_deadletters(commands: Commands) -> None:
    p = commands.add("deadletters", cmd_deadletters,
                     "messages the devices and the monitor could not handle (acknowledged and set aside)")
    p.add_argument("--last", type=int, default=50, help="show the newest N (default 50)")
    p.add_argument("--receiver", help="only those of this process (e.g. dms-1, monitor)")
    p.add_argument("--json", action="store_true", help="one JSON record a line, every field")
