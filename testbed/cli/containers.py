"""The command line inside the Compose bus's containers (``python -m testbed.cli.containers``).

Each Compose service's ``command`` is one of these: ``init`` fills the volumes, ``device``, ``feeder`` and
``fleet`` exec a device, feeder model or fleet of meters with its environment derived from the topology,
``scenario`` and ``runner`` are the harness services, ``request-run`` is what a tablet's button
starts. Thin: it parses, calls :mod:`testbed.backends.containers` or
:mod:`testbed.harness.service`, and prints one line on error (an unknown command or name too).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from testbed.backends.containers import (
    container_topology,
    device_env,
    exec_module,
    feeder_socket,
    fleet_env,
    init_volumes,
)
from testbed.core.errors import TestbedError
from testbed.harness import service

__all__ = ["main"]

USAGE = """usage: python -m testbed.cli.containers COMMAND
  init            create the PKI if missing and fill each container's volume (init service)
  device ID       run device ID with its environment derived from the topology
  feeder ID       run feeder model ID, serving /feeder/ID/feeder.sock
  fleet NAME      run fleet NAME: its meters in one process (devices.fleet)
  scenario NAME   run scenario NAME once on the bus, print the timeline, exit 0 if it passed
                  (FMB_SUBSTATION=S: on substation S's devices of a large topology)
  runner          serve run requests from the tablets' run buttons on /ui/runner.sock
  request-run NAME --out DIR
                  ask the runner for scenario NAME into DIR (what a tablet's button starts)"""
COMMANDS = ("init", "device", "feeder", "fleet", "scenario", "runner", "request-run")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        if args == ["init"]:
            created = init_volumes(container_topology())
            print(f"init: PKI {'created: ' + ', '.join(created) if created else 'kept'}; "
                  "volumes filled", flush=True)
            return 0
        if len(args) == 2 and args[0] == "device":
            topology = container_topology()
            exec_module(f"devices.{topology.device(args[1]).role}", device_env(topology, args[1]))
        if len(args) == 2 and args[0] == "feeder":
            spec = container_topology().feeder(args[1])
            exec_module("devices.feeder", {"FMB_FEEDER": json.dumps(asdict(spec)),
                                     "FMB_FEEDER_SOCKET": str(feeder_socket(spec.id))})
        if len(args) == 2 and args[0] == "fleet":
            exec_module("devices.fleet", fleet_env(container_topology(), args[1]))
        if args == ["runner"]:
            service.serve_runner()
        if len(args) == 4 and args[0] == "request-run" and args[2] == "--out":
            return service.request_run(args[1], Path(args[3]))
        if len(args) == 2 and args[0] == "scenario":
            out = os.environ.get("FMB_OUT")
            # FMB_SUBSTATION: one substation of a large topology (the Swarm stack's harness sets it per run)
            return service.run_scenario(args[1], out=Path(out) if out else None,
                                        substation=os.environ.get("FMB_SUBSTATION") or None)
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    problem = ("give a command" if not args else f"wrong arguments for {args[0]}" if args[0] in COMMANDS
               else f"unknown command {args[0]!r}")
    print(f"error: {problem}; `python -m testbed.cli.containers --help` lists the commands and their arguments",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
