"""Heartbeats: whether a process's MQTT clients still work, in a small file rewritten every tick.

A device, the monitor or a harness process whose paho network thread has died (an exception that
escaped a callback ends it), or that has been disconnected from a broker for longer than its
reconnect backoff explains, still runs and its pid still answers: only what the process says
about itself shows that it no longer works. :class:`Heartbeat` says it, atomically, every tick,
in the process's ready file (``FMB_READY_FILE``): a JSON object with the pid, the time, for each
client whether it is connected, whether its network thread is alive, since when and how often
it was disconnected, and the process's counters, with the writer's verdict. :func:`read_health`
is the one check that ``fmb status`` and the containers' health checks (``python -m
testbed.transport.health FILE``, exit 0 when healthy) share: unhealthy when the writer said so,
or when the file was not rewritten for :data:`STALE_S` (a frozen process, a stuck main loop).

This module imports nothing but the standard library at load time, so that the health check a
container runs every 2 s starts in a few tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["HEALTH_SCHEMA", "STALE_S", "TICK_S", "Health", "Heartbeat", "current", "install", "main",
           "read_health"]

HEALTH_SCHEMA = "fmb.health/1"
TICK_S = 0.5  # how often the devices' and the monitor's main loops tick, and write their heartbeat
STALE_S = 3.0  # six ticks without a heartbeat: the process is frozen or its main loop is stuck
# Disconnected for longer than paho's longest reconnect wait (RECONNECT_MAX_S) plus this, a client
# is not between two attempts any more: its broker is gone, or it is refused.
DISCONNECT_MARGIN_S = 2.0


@dataclass
class _Link:
    """What a heartbeat remembers of one client between two beats."""

    client: paho.Client
    disconnected_since: float | None = None
    last_disconnect: float | None = None
    disconnects: int = 0


def _loop_alive(client: paho.Client) -> bool:
    # paho 2.x keeps the thread of loop_start() in `_thread` and clears it when loop_forever()
    # returns, which is what an exception escaping a callback makes it do (tests/test_health.py
    # checks this against the installed paho).
    thread = getattr(client, "_thread", None)
    return thread is not None and thread.is_alive()


class Heartbeat:
    """Writes one process's health file; call :meth:`beat` every tick, or :meth:`start` a thread."""

    def __init__(self, path: Path | None, process: str, *, disconnected_limit_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if disconnected_limit_s is None:
            # Imported here, not at the top: the health check itself must not load paho and ssl.
            from testbed.transport.mqtt import RECONNECT_MAX_S

            disconnected_limit_s = RECONNECT_MAX_S + DISCONNECT_MARGIN_S
        self.path = path
        self.process = process
        self.disconnected_limit_s = disconnected_limit_s
        self.clock = clock
        self.counters: dict[str, int] = {}
        self._links: dict[str, _Link] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is watched --------------------------------------------------------------------------

    def watch(self, name: str, client: paho.Client) -> None:
        """Watch ``client`` under ``name`` (a plane, a broker) from now on."""
        with self._lock:
            self._links[name] = _Link(client)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._links.pop(name, None)

    # -- one beat -------------------------------------------------------------------------------

    def report(self, problems: Iterable[str] = ()) -> dict[str, Any]:
        """The process's health now (also updates the disconnection bookkeeping)."""
        now = self.clock()
        why = list(problems)
        clients: dict[str, dict[str, Any]] = {}
        with self._lock:
            links = dict(self._links)
        for name, link in sorted(links.items()):
            connected = link.client.is_connected()
            alive = _loop_alive(link.client)
            if connected:
                link.disconnected_since = None
            elif link.disconnected_since is None:
                link.disconnected_since = link.last_disconnect = now
                link.disconnects += 1
            down_s = None if link.disconnected_since is None else now - link.disconnected_since
            clients[name] = {"connected": connected, "loop_alive": alive,
                             "disconnected_s": None if down_s is None else round(down_s, 1),
                             "last_disconnect": link.last_disconnect, "disconnects": link.disconnects}
            if not alive:
                why.append(f"{name}: MQTT network thread dead")
            elif down_s is not None and down_s > self.disconnected_limit_s:
                why.append(f"{name}: disconnected for {down_s:.0f} s")
        return {"schema": HEALTH_SCHEMA, "process": self.process, "pid": os.getpid(), "time": now,
                "healthy": not why, "why": "; ".join(why), "clients": clients, "counters": dict(self.counters)}

    def beat(self, problems: Iterable[str] = ()) -> dict[str, Any]:
        """Compute the health and write it (atomically: a reader never sees half a file)."""
        report = self.report(problems)
        if self.path is not None:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(report) + "\n")
            tmp.replace(self.path)
        return report

    # -- for processes without a main loop that ticks ---------------------------------------------

    def start(self, problems: Callable[[], Iterable[str]] = tuple, interval_s: float = TICK_S) -> None:
        """Beat every ``interval_s`` from a daemon thread until :meth:`stop`."""
        def run() -> None:
            while not self._stop.wait(interval_s):
                self.beat(problems())

        self.beat(problems())
        self._thread = threading.Thread(target=run, name=f"heartbeat-{self.process}", daemon=True)
        self._thread.start()

    def stop(self, remove: bool = True) -> None:
        """Stop beating; with ``remove`` the file goes too (a stopped process is not up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)


_current: Heartbeat | None = None


def install(heartbeat: Heartbeat | None) -> None:
    """Make ``heartbeat`` this process's: clients made deeper in the process (a recorder) add
    themselves to it through :func:`current`."""
    global _current
    _current = heartbeat


def current() -> Heartbeat | None:
    """This process's heartbeat, if it has one."""
    return _current


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """The verdict on one process from its health file."""

    healthy: bool
    why: str  # empty when healthy
    report: dict[str, Any] | None = None


def read_health(path: Path, now: float | None = None, stale_s: float = STALE_S, pid: int | None = None) -> Health:
    """The health a process last wrote to ``path``; with ``pid``, a file written by another
    process (an earlier one of the same name) does not count."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return Health(False, "no heartbeat yet (starting, or stopped)")
    except (OSError, ValueError) as e:
        return Health(False, f"unreadable heartbeat {path} ({e})")
    if not isinstance(report, dict) or not isinstance(report.get("time"), int | float):
        # A ready file from before heartbeats (the pid alone): the process cannot say how it is.
        return Health(False, f"{path} holds no heartbeat")
    if pid is not None and report.get("pid") != pid:
        return Health(False, f"the heartbeat is from pid {report.get('pid')}, not {pid}", report)
    age = (time.time() if now is None else now) - report["time"]
    if age > stale_s:
        return Health(False, f"no heartbeat for {age:.0f} s (frozen or stuck)", report)
    if not report.get("healthy"):
        return Health(False, str(report.get("why") or "unhealthy"), report)
    return Health(True, "", report)


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.transport.health FILE``: exit 0 if healthy, else 1 and why (one line)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m testbed.transport.health FILE (a process's heartbeat, e.g. /run/fmb/ready)",
              file=sys.stderr)
        return 2
    health = read_health(Path(args[0]))
    print("healthy" if health.healthy else f"unhealthy: {health.why}")
    return 0 if health.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
