"""``fmb swarm``: the bus as a Docker Swarm stack: write it, deploy it, run Appendix A on it, remove it.

``fmb swarm stack -o DIR`` writes ``DIR/stack.yml`` and the broker configurations it names, and
makes the stack's PKI (``DIR/pki`` unless ``--certs``: the brokers' certificates must name the
service names, which a local bus's PKI does not). ``deploy NAME -o DIR`` does the same, then
``docker stack deploy`` and waits until every service is healthy; ``run NAME [--substation S]``
runs the one-shot harness service and exits with Appendix A's verdict; ``rm NAME`` removes the
stack with its networks, secrets and configs. Thin: :mod:`testbed.backends.swarm` renders,
:mod:`testbed.backends.swarmstack` drives the engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.backends.swarm import StackImages, ensure_pki, site_label, write_stack
from testbed.backends.swarmstack import SwarmStack, check_stack_name
from testbed.cli.common import Commands
from testbed.core.errors import TestbedError
from testbed.core.topology import load_topology

__all__ = ["add_swarm"]


def _write(args: argparse.Namespace) -> Path:
    topology = load_topology(args.topology)
    out = Path(args.output)
    certs = Path(args.certs) if args.certs else out / "pki"
    for directory, option in ((out, "-o"), (certs, "--certs")):
        if directory.exists() and not directory.is_dir():
            raise TestbedError(f"{option} {directory} is a file: give a directory")
    try:
        certs.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = ensure_pki(topology, certs)
        images = StackImages(device=args.device_image, broker=args.broker_image)
        path = write_stack(topology, certs, out, images)
    except OSError as e:
        raise TestbedError(f"cannot write the stack into {out} (PKI {certs}): {e.strerror or e}") from None
    labels = " ".join(f"--label-add {site_label(s.name)}=true" for s in topology.sites)
    print(f"swarm: wrote {path} for topology {topology.name} (PKI {certs}: "
          f"{len(created)} created); label the nodes: docker node update {labels} NODE", file=sys.stderr)
    return path


def cmd_stack(args: argparse.Namespace) -> int:
    _write(args)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    check_stack_name(args.name)
    path = _write(args)
    stack = SwarmStack(args.name)
    stack.deploy(path)
    took = stack.wait_healthy(args.timeout)
    print(f"swarm: stack {args.name} healthy in {took:.0f} s; `fmb swarm run {args.name}` runs Appendix A on it",
          file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    run = SwarmStack(args.name).run(args.substation, args.timeout)
    sys.stdout.write(run.log)
    if run.exit_code is None:
        raise TestbedError(f"the harness of stack {args.name} did not end in {args.timeout:g} s "
                           f"(`docker service ps {args.name}_scenario --no-trunc`)")
    return 0 if run.exit_code == 0 else 1


def cmd_rm(args: argparse.Namespace) -> int:
    stack = SwarmStack(args.name)
    stack.remove()
    left = stack.leftovers()
    if left:
        raise TestbedError(f"stack {args.name}: still there after removal: {', '.join(left[:5])}")
    return 0


def add_swarm(commands: Commands) -> None:
    swarm = commands.sub.add_parser(
        "swarm", help="the bus as a Docker Swarm stack: write, deploy, run Appendix A, remove",
        description="The topology as a Docker Swarm stack (docker stack deploy): one service per broker, device, "
                    "fleet and feeder model, placed by node labels fmb.site.<site>=true; keys as secrets.")
    sub = swarm.add_subparsers(dest="swarm_command", required=True, metavar="ACTION")

    def writer(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[commands.common], help=help, description=help)
        p.add_argument("-o", "--output", metavar="DIR", required=True,
                       help="directory for stack.yml, the broker configurations and (without --certs) the PKI")
        p.add_argument("--device-image", default="fmb-device:latest", metavar="IMAGE", help="the devices' image")
        p.add_argument("--broker-image", metavar="IMAGE", help="every broker's image (default: per the topology)")
        return p

    writer("stack", "write the stack file of the topology").set_defaults(func=cmd_stack)
    deploy = writer("deploy", "write the stack file, docker stack deploy it and wait until it is healthy")
    deploy.add_argument("name", metavar="NAME", help="the stack's name")
    deploy.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds to wait (default 600)")
    deploy.set_defaults(func=cmd_deploy)
    run = sub.add_parser("run", help="run Appendix A once on a deployed stack (its scenario service)")
    run.add_argument("name", metavar="NAME", help="the stack's name")
    run.add_argument("--substation", metavar="S", help="one substation of a large topology")
    run.add_argument("--timeout", type=float, default=180.0, metavar="S", help="seconds to wait (default 180)")
    run.set_defaults(func=cmd_run)
    rm = sub.add_parser("rm", help="remove a stack: services, networks, secrets, configs, and its volumes on this "
                        "node (the data centre's persistence too)")
    rm.add_argument("name", metavar="NAME", help="the stack's name")
    rm.set_defaults(func=cmd_rm)
