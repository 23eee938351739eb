"""The command line inside the Compose bus's containers (``python -m testbed.cli.containers``).

Each Compose service's ``command`` is one of these: ``init`` fills the volumes, ``device``, ``feeder``,
``fleet`` and ``monitor`` exec a device, feeder model, fleet of meters or the monitor with its environment derived
from the topology, ``ca`` is a CA operation in the one-shot container of the CA's volume, ``operator`` relays the
operator's input to a tablet's socket,
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
    CA_ACTIONS,
    UI_DIR,
    ca_operation,
    container_topology,
    device_env,
    exec_module,
    feeder_socket,
    fleet_env,
    init_volumes,
    monitor_env,
)
from testbed.core.errors import TestbedError
from testbed.harness import service
from testbed.transport.localsock import unix_request

__all__ = ["main"]

USAGE = """usage: python -m testbed.cli.containers COMMAND
  init            create the PKI if missing and fill each container's volume (init service)
  device ID       run device ID with its environment derived from the topology
  feeder ID       run feeder model ID, serving /feeder/ID/feeder.sock
  fleet NAME      run fleet NAME: its meters in one process (devices.fleet)
  ca ACTION NAME...
                  a CA operation (revoke, issue, reissue, rotate, block, unblock) in the one-shot
                  container that mounts the CA, then every volume re-filled (fmb respond/certs)
  operator ID REQUEST TIMEOUT_S
                  relay one operator request (JSON) to tablet ID's socket, print the reply (the host's
                  harness runs it in the tablet's container: no root needed for the socket)
  monitor         run the monitor (Detect): every broker's and reading device's log, read-only
  scenario NAME   run scenario NAME once on the bus, print the timeline, exit 0 if it passed
                  (FMB_SUBSTATION=S: on substation S's devices of a large topology)
  runner          serve run requests from the tablets' run buttons on /ui/runner.sock
  request-run NAME --out DIR
                  ask the runner for scenario NAME into DIR (what a tablet's button starts)"""
COMMANDS = ("init", "ca", "operator", "device", "feeder", "fleet", "monitor", "scenario", "runner", "request-run")


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
        if len(args) >= 3 and args[0] == "ca" and args[1] in CA_ACTIONS:
            for line in ca_operation(container_topology(), args[1], args[2:]):
                print(f"ca: {line}", flush=True)
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
        if len(args) == 4 and args[0] == "operator":
            try:
                reply = unix_request(UI_DIR / f"{args[1]}.sock", json.loads(args[2]), timeout_s=float(args[3]))
            except (ValueError, OSError) as e:  # a malformed request, or no tablet socket
                raise TestbedError(f"operator request to {args[1]}: {e}") from None
            print(json.dumps(reply), flush=True)
            return 0
        if args == ["monitor"]:
            exec_module("testbed.csf.monitor", monitor_env(container_topology()))
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
