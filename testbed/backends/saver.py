"""Mosquitto with a snapshot every N milliseconds: ``python -m testbed.backends.saver MS MOSQUITTO ARGS...``.

Mosquitto 2.0's own timer saves its snapshot every ``autosave_interval`` whole seconds plus one
(``last + interval < now``), so a ``kill -9`` loses up to two seconds at best; it also writes the
snapshot whenever it gets SIGUSR1. This launcher forks a ticker that sends SIGUSR1 every ``MS``
and then *becomes* Mosquitto (exec): the broker keeps this process's pid, so the backend's pid
record, ``kill -9``, SIGHUP and SIGTERM reach the broker itself, exactly as without the launcher.
The ticker signals only once Mosquitto catches SIGUSR1 (before that the signal would kill it),
and dies with the broker (``PR_SET_PDEATHSIG``). ``fmb bench crash`` measures the window and the
cost; the broker images do the same with a shell launcher (``compose/images/broker/mosquitto-saver``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["broker_argv", "catches", "main"]

PR_SET_PDEATHSIG = 1  # prctl(2)


def broker_argv(mosquitto: str, conf: Path, snapshot_every_ms: int) -> list[str]:
    """The command that runs a broker: Mosquitto itself, or through this launcher when the policy
    asks for a snapshot every so many milliseconds."""
    if not snapshot_every_ms:
        return [mosquitto, "-c", str(conf)]
    return [sys.executable, "-m", "testbed.backends.saver", str(snapshot_every_ms), mosquitto, "-c", str(conf)]


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask); False if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _tick(broker: int, period_s: float) -> None:
    """The ticker's life: SIGUSR1 to ``broker`` every ``period_s`` until the broker is gone."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the liveness check below suffices
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != broker:  # the broker died before prctl took effect
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(period_s)
        if os.getppid() != broker:
            os._exit(0)
        if catches(broker, signal.SIGUSR1):
            try:
                os.kill(broker, signal.SIGUSR1)
            except ProcessLookupError:
                os._exit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or not args[0].isdigit() or int(args[0]) <= 0:
        sys.exit("usage: python -m testbed.backends.saver MILLISECONDS MOSQUITTO [ARGS...]")
    period_s, command = int(args[0]) / 1000, args[1:]
    broker = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        try:
            _tick(broker, period_s)
        finally:
            os._exit(0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
