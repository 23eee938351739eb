"""What the ``fmb`` command groups share: where generated material lives, the options every
command takes (``--topology``, ``--certs``, ``--state``), a parser whose usage errors are one line
like every other error, and the running bus. Each group module adds its commands through
:class:`Commands`; :func:`testbed.cli.fmb.build_parser` calls them in the order ``fmb --help`` lists.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from testbed.backends.compose import compose_bus
from testbed.backends.local import LocalBus
from testbed.core.errors import TestbedError

__all__ = ["DEFAULT_UI_PORT", "ROOT", "Commands", "Parser", "add_backend", "paths", "running", "running_bus",
           "stamp"]

_SOURCE_ROOT = Path(__file__).resolve().parents[2]
# In a source checkout, generated material lives beside the code (and is git-ignored);
# an installed package uses the current directory.
ROOT = _SOURCE_ROOT if (_SOURCE_ROOT / "pyproject.toml").exists() else Path.cwd()
DEFAULT_UI_PORT = 8443


class Parser(argparse.ArgumentParser):
    """argparse's parser, except that a usage error is one line, like every other error of ``fmb``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` shows the usage)\n")


class Commands:
    """The subcommands of ``fmb`` being assembled; every group module adds its own."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument("--topology", help="topology file (default: the Appendix A topology)")
        self.common.add_argument("--certs", help="PKI directory (default ./certs, or FMB_CERTS_DIR)")
        self.common.add_argument("--state", help="runtime state directory (default ./var, or FMB_STATE_DIR)")
        self.sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(self, name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        """A subcommand that takes the common options and runs ``func``."""
        p = self.sub.add_parser(name, parents=[self.common], help=help, description=help)
        p.set_defaults(func=func)
        return p


def paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The PKI and state directories: the option, else the environment, else beside the code."""
    certs = Path(args.certs or os.environ.get("FMB_CERTS_DIR") or ROOT / "certs")
    state = Path(args.state or os.environ.get("FMB_STATE_DIR") or ROOT / "var")
    return certs, state


def running(args: argparse.Namespace) -> LocalBus:
    """The bus running from the state directory, for commands that act on one."""
    _, state = paths(args)
    bus = LocalBus.attach(state)
    if bus is None:
        raise TestbedError(f"no bus running from {state}; start one with `fmb up`")
    return bus


def add_backend(parser: argparse.ArgumentParser) -> None:
    """``--backend local|docker`` for a command that acts on a running bus."""
    parser.add_argument("--backend", choices=["local", "docker"], default="local",
                        help="the running bus: local processes (default), or the Compose bus (the project "
                             "$COMPOSE_PROJECT_NAME or fmb, which must be up)")


@contextlib.contextmanager
def running_bus(args: argparse.Namespace) -> Iterator[Any]:
    """The running bus of ``--backend``: the local one of the state directory, or the Compose project."""
    if getattr(args, "backend", "local") == "docker":
        with compose_bus(topology_path=args.topology, start=False) as bus:
            yield bus
    else:
        yield running(args)


def stamp() -> str:
    """Now, as the default result directories are named."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")
