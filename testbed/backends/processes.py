"""Processes the testbed starts and stops itself: the local bus's and the benchmarks'.

A process is started in a session of its own with its output appended to a log file, and is
known afterwards by a :class:`ProcessRecord`: its pid and the start time the kernel gives that
pid (``/proc/<pid>/stat``). Another command can read the record back (the local bus keeps them
in ``bus.json``) and still act only on that process: it is signalled by the recorded pid, never
by name, and only while the pid has the recorded start time, so a pid the kernel reused for
someone else's process is left alone. Stopping is SIGTERM, then SIGKILL for whatever has not
exited after a time-out.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from testbed.core.waiting import WaitTimeout, wait_until

__all__ = ["ProcessRecord", "age_s", "alive", "kill", "nofile_limits", "send", "spawn", "start_ticks", "stop"]

_POLL_S = 0.02
_NR_OPEN = Path("/proc/sys/fs/nr_open")  # the kernel's ceiling on any process's open-files limit


@dataclass(frozen=True)
class ProcessRecord:
    """A process we started: enough to find it again and to stop only it."""

    name: str
    kind: str  # broker, feeder, device or monitor on the local bus; bench for a benchmark's
    pid: int
    start_ticks: int  # /proc/<pid>/stat start time: tells our process from a reused pid
    log: str


def start_ticks(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot, or -1 if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def age_s(record: ProcessRecord) -> float:
    """How long the recorded process has been running, in seconds (0 if it is not ours any more)."""
    if start_ticks(record.pid) != record.start_ticks:
        return 0.0
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - record.start_ticks / os.sysconf("SC_CLK_TCK"))


def nofile_limits(wanted: int) -> tuple[int, int]:
    """The (soft, hard) open-files limit a child that needs ``wanted`` descriptors can have: the
    soft limit raised up to the hard one, and as root the hard one too (up to the kernel's
    ``fs.nr_open``); never lowered. Whether it is enough is the caller's to check."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard and os.geteuid() == 0:
        try:
            ceiling = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            ceiling = hard
        hard = max(hard, min(wanted, ceiling))
    return max(soft, min(wanted, hard)), hard


def spawn(name: str, kind: str, argv: list[str], log: Path, env: dict[str, str] | None = None, *,
          cwd: Path | None = None, nice: int = 0, cpus: set[int] | None = None, nofile: int = 0) -> ProcessRecord:
    """Start ``argv`` with stdout and stderr appended to ``log``, in a new session, ``env`` added to
    ours; ``nice`` and ``cpus`` place it (a niceness increment, a CPU affinity); ``nofile`` > 0 raises
    its open-files limit towards that many (:func:`nofile_limits`: a broker's clients need one each)."""
    limits = nofile_limits(nofile) if nofile else None
    if limits == resource.getrlimit(resource.RLIMIT_NOFILE):
        limits = None  # ours already: nothing to set in the child

    def placement() -> None:  # in the child, between fork and exec: system calls only
        if nice:
            os.nice(nice)
        if cpus:
            os.sched_setaffinity(0, cpus)
        if limits:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd,
                                preexec_fn=placement if (nice or cpus or limits) else None)
    return ProcessRecord(name, kind, proc.pid, start_ticks(proc.pid), str(log))


def alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (a zombie does not; one of our children is reaped)."""
    if start_ticks(record.pid) != record.start_ticks:
        return False  # gone, or the pid now belongs to someone else
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False  # it went away between the two reads
    if state == "Z":
        with contextlib.suppress(ChildProcessError):  # reap our own child
            os.waitpid(record.pid, os.WNOHANG)
        return False
    return True


def send(record: ProcessRecord, sig: signal.Signals) -> None:
    """Send ``sig`` to the recorded process if it is still ours and running."""
    if alive(record):
        with contextlib.suppress(ProcessLookupError):  # it exited just now
            os.kill(record.pid, sig)


def stop(records: Iterable[ProcessRecord], timeout_s: float = 10) -> list[ProcessRecord]:
    """SIGTERM each process that still runs, wait up to ``timeout_s`` for all of them to exit, then
    SIGKILL those left; returns those that had to be killed."""
    group = [r for r in records if alive(r)]
    for r in group:
        send(r, signal.SIGCONT)  # a frozen process would not see the SIGTERM
        send(r, signal.SIGTERM)
    with contextlib.suppress(WaitTimeout):  # what is left is killed below
        wait_until(lambda: not any(alive(r) for r in group), timeout_s, interval_s=_POLL_S,
                   what=f"{', '.join(r.name for r in group)} still running {timeout_s:g} s after SIGTERM")
    left = [r for r in group if alive(r)]
    for r in left:
        send(r, signal.SIGKILL)
    return left


def kill(record: ProcessRecord, timeout_s: float = 10) -> None:
    """SIGKILL: a crash, with no chance to save anything; returns once the process is gone."""
    send(record, signal.SIGKILL)
    wait_until(lambda: not alive(record), timeout_s, interval_s=0.005,
               what=f"{record.name} (pid {record.pid}) still running {timeout_s:g} s after SIGKILL")
