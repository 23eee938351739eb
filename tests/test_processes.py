"""Tests of testbed.backends.processes on real child processes: stop by recorded pid only."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from testbed.backends import processes
from testbed.backends.processes import ProcessRecord
from testbed.core.waiting import wait_until

# Says it is ready, then ignores SIGTERM: only SIGKILL ends it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_spawn_logs_to_the_file_and_stop_ends_the_process(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    record = processes.spawn("p", "bench", _python("import sys, time; print('hello'); sys.stderr.write('oops\\n');"
                                                   " sys.stdout.flush(); time.sleep(60)"), log, {"FMB_X": "1"})
    assert record.name == "p" and record.start_ticks == processes.start_ticks(record.pid) > 0
    assert processes.alive(record)
    assert os.getsid(record.pid) == record.pid  # a session of its own: a ^C to us is not sent to it
    wait_until(lambda: "oops" in log.read_text(), 10, what=f"no output in {log}")
    assert "hello" in log.read_text()  # stdout and stderr both in the log
    start = time.monotonic()
    assert processes.stop([record], timeout_s=10) == []  # it exited on SIGTERM, nothing was killed
    assert time.monotonic() - start < 5
    assert not processes.alive(record)
    assert not Path(f"/proc/{record.pid}").exists() or processes.start_ticks(record.pid) != record.start_ticks


def test_a_process_that_ignores_sigterm_is_killed_after_the_time_out(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    record = processes.spawn("stubborn", "bench", _python(STUBBORN), log)
    wait_until(lambda: "up" in log.read_text(), 10, what=f"the stubborn process did not start: {log}")
    start = time.monotonic()
    assert processes.stop([record], timeout_s=0.5) == [record]
    assert 0.5 <= time.monotonic() - start < 5
    wait_until(lambda: not processes.alive(record), 5, what="SIGKILL did not end it")


def test_a_frozen_process_still_stops_on_sigterm(tmp_path: Path) -> None:
    record = processes.spawn("frozen", "bench", _python("import time; time.sleep(60)"), tmp_path / "f.log")
    processes.send(record, signal.SIGSTOP)
    assert processes.stop([record], timeout_s=10) == []  # SIGCONT first, so the SIGTERM is seen at once


def test_a_reused_pid_is_not_ours_and_is_left_alone(tmp_path: Path) -> None:
    """A record whose start time does not match the pid's is someone else's process now."""
    record = processes.spawn("victim", "bench", _python("import time; time.sleep(60)"), tmp_path / "v.log")
    try:
        stale = dataclasses.replace(record, start_ticks=record.start_ticks - 1)
        assert not processes.alive(stale)
        processes.send(stale, signal.SIGKILL)
        assert processes.stop([stale], timeout_s=0.2) == []
        processes.kill(stale)  # returns at once: nothing of ours to kill
        assert processes.alive(record)  # the process with that pid was not touched
    finally:
        processes.stop([record])


def test_kill_returns_once_the_process_is_gone_and_records_round_trip(tmp_path: Path) -> None:
    record = processes.spawn("k", "broker", _python(STUBBORN), tmp_path / "k.log")
    again = ProcessRecord(**dataclasses.asdict(record))  # as LocalBus reads bus.json back
    processes.kill(again)
    assert not processes.alive(record)
