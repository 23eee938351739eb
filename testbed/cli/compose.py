"""``fmb compose [--topology T] [-o FILE]``: the Compose file of a topology, on stdout or into FILE.

``compose/docker-compose.yml`` is exactly ``fmb compose`` of the default topology
(tests/test_compose_file.py fails when it is stale). Another topology is mounted into the
containers from its path, written relative to FILE's folder (Compose resolves it from there) or
absolute on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from testbed.backends.composefile import is_default, render_compose
from testbed.cli.common import Commands
from testbed.core.errors import TestbedError
from testbed.core.topology import load_topology

__all__ = ["add_compose", "topology_reference"]


def topology_reference(topology_path: Path, output: Path | None) -> str:
    """How the Compose file names the topology to mount: relative to ``output``'s folder, else absolute."""
    source = topology_path.resolve()
    if output is None:
        text = str(source)
    else:
        text = os.path.relpath(source, output.resolve().parent)
        text = text if text.startswith(".") else f"./{text}"  # else Compose reads a volume name
    if ":" in text or "," in text:
        raise TestbedError(f"the topology's path {text!r} holds ':' or ',', which a Compose volume cannot mount: "
                           "move or rename the topology file")
    return text


def cmd_compose(args: argparse.Namespace) -> int:
    topology = load_topology(args.topology)
    output = Path(args.output) if args.output else None
    reference = None if is_default(topology) else topology_reference(Path(topology.path), output)
    text = render_compose(topology, reference)
    if output is None:
        sys.stdout.write(text)
        return 0
    if output.is_dir():
        raise TestbedError(f"-o {output} is a directory: give the path of the Compose file to write")
    if not output.parent.is_dir():
        raise TestbedError(f"-o {output}: no directory {output.parent}; create it first")
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TestbedError(f"cannot write {output}: {e.strerror}") from None
    print(f"compose: wrote {output} for topology {topology.name} ({topology.path})", file=sys.stderr)
    return 0


def add_compose(commands: Commands) -> None:
    compose = commands.sub.add_parser(
        "compose", parents=[commands.common], help="write the Compose file of a topology",
        description="Generate the Compose file of the topology (one service per broker, device, fleet of meters "
                    "and feeder model; init, scenario and runner). compose/docker-compose.yml is this command's "
                    "output for the default topology.")
    compose.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (default: standard output)")
    compose.set_defaults(func=cmd_compose)
