"""Health is real: a process whose MQTT loop died, or that is cut off from a broker past its
backoff, or that is frozen, is unhealthy in ``fmb status`` (exit 1), never ``up``; healthy again
after recovery.

The bus here is the module's own (its processes are killed, frozen and restarted), started with
``FMB_TEST_HOOKS=kill-loop``, under which a device ends its own MQTT network threads on SIGUSR2,
as an exception escaping a message callback used to. Appendix A passes on it at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.harness.recorder import Recorder
from testbed.pytest_plugin import assert_scenario_passed, settings
from testbed.transport.health import STALE_S, Heartbeat, install, read_health
from testbed.transport.mqtt import RECONNECT_MAX_S, connect

FIELD = ("tablet-1", "supply-1", "meter-1", "capbank-1")  # the devices of the field site


@pytest.fixture(scope="module")
def fmb_bus(request: pytest.FixtureRequest, fmb_bus_factory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """This module's own bus; its processes honour the kill-loop test hook."""
    if settings(request.config).backend != "local":
        pytest.skip("drives the bus's local processes; runs with --fmb-backend local")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FMB_TEST_HOOKS", "kill-loop")  # read by the processes the bus starts (and restarts)
        with fmb_bus_factory() as bus:
            yield bus


def _status(bus: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", "status", "--state", str(bus.state_dir),
                           "--certs", str(bus.pki.directory)], capture_output=True, text=True, timeout=60)


def _lines(status: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Process name -> what status says of it (``up``, ``DOWN``, ``unhealthy (why)``)."""
    out = {}
    for line in status.stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[2] == "pid":
            out[parts[1]] = parts[4].rsplit("  ", 1)[0]
    return out


def _until(bus: Any, wanted: Callable[[dict[str, str]], bool], timeout_s: float) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = _status(bus)
        if wanted(_lines(status)) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _all_up(status: subprocess.CompletedProcess[str]) -> bool:
    lines = _lines(status)
    return status.returncode == 0 and len(lines) == 11 and set(lines.values()) == {"up"}


# -- the file and its verdict ---------------------------------------------------------------------


def test_read_health_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "x.ready"
    assert read_health(path).why.startswith("no heartbeat yet")
    path.write_text("4242")  # a ready file from before heartbeats: it cannot say how the process is
    assert not read_health(path).healthy and "holds no heartbeat" in read_health(path).why
    now = [1000.0]
    beat = Heartbeat(path, "x", disconnected_limit_s=7, clock=lambda: now[0])
    beat.counters["rejected"] = 3
    report = beat.beat()
    assert report["healthy"] and report["counters"] == {"rejected": 3} and report["pid"] == os.getpid()
    assert read_health(path, now=1000.5).healthy and read_health(path, now=1000 + STALE_S).healthy
    stale = read_health(path, now=1000 + STALE_S + 1)
    assert not stale.healthy and "no heartbeat for 4 s" in stale.why
    assert "not 1" in read_health(path, now=1000.5, pid=1).why  # an earlier process's file
    beat.beat(["2 of 3 log readers stopped"])
    assert read_health(path, now=1000.5).why == "2 of 3 log readers stopped"
    beat.stop()
    assert not path.exists()


def test_the_health_check_command_exits_0_only_when_healthy(tmp_path: Path) -> None:
    path = tmp_path / "ready"

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "testbed.transport.health", *args], capture_output=True,
                              text=True, timeout=30)

    Heartbeat(path, "x", disconnected_limit_s=7).beat()
    ok = check(str(path))
    assert ok.returncode == 0 and ok.stdout.strip() == "healthy"
    Heartbeat(path, "x", disconnected_limit_s=7).beat(["control: MQTT network thread dead"])
    bad = check(str(path))
    assert bad.returncode == 1 and bad.stdout.strip() == "unhealthy: control: MQTT network thread dead"
    assert check(str(tmp_path / "none")).returncode == 1
    usage = check()
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_an_exception_escaping_a_callback_kills_the_loop_and_the_heartbeat_says_so(
        fmb_bus, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """What the heartbeat relies on, against the installed paho and a real broker."""
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    beat = Heartbeat(None, "test")
    client = connect(f"health-test-{os.getpid()}", fmb_bus.identity("bench"), fmb_bus.endpoint("field-delivery"))
    try:
        beat.watch("delivery", client)
        assert beat.report()["healthy"]
        subscribed = threading.Event()

        def boom(*args: Any) -> None:
            subscribed.set()
            raise RuntimeError("a bug in a callback")

        client.on_subscribe = boom
        client.subscribe("fmb/benchmodule/BenchFloodProfile/health", 1)
        assert subscribed.wait(10)
        deadline = time.monotonic() + 5
        while beat.report()["healthy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        report = beat.report()
        # The socket is still open and paho still says connected: only the thread tells.
        assert report["why"] == "delivery: MQTT network thread dead" and report["clients"]["delivery"]["connected"]
        assert [str(e) for e in escaped] == ["a bug in a callback"]  # it ended paho's network thread
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_recorder_reports_its_clients_to_the_process_heartbeat(fmb_bus) -> None:  # type: ignore[no-untyped-def]
    beat = Heartbeat(None, "runner")
    install(beat)
    try:
        endpoints = {b.name: fmb_bus.endpoint(b.name) for b in fmb_bus.topology.brokers}
        recorder = Recorder(fmb_bus.topology, fmb_bus.identity("recorder"), endpoints)
        recorder.start()
        report = beat.report()
        assert sorted(report["clients"]) == sorted(f"recorder {b.name}" for b in fmb_bus.topology.brokers)
        assert report["healthy"] and all(c["connected"] and c["loop_alive"] for c in report["clients"].values())
        recorder.stop()
        assert beat.report()["clients"] == {}
    finally:
        install(None)


# -- on the running bus -----------------------------------------------------------------------------


def test_status_is_up_and_every_heartbeat_names_its_clients(fmb_bus) -> None:  # type: ignore[no-untyped-def]
    status = _until(fmb_bus, lambda lines: set(lines.values()) == {"up"}, 30)
    assert _all_up(status), status.stdout + status.stderr
    dms = read_health(fmb_bus.run_dir / "dms-1.ready").report
    assert dms is not None and sorted(dms["clients"]) == ["control", "delivery"]
    assert dms["counters"]["rejected"] == 0
    monitor = read_health(fmb_bus.run_dir / "monitor.ready").report
    assert monitor is not None and sorted(monitor["clients"]) == sorted(b.name for b in fmb_bus.topology.brokers)


def test_a_dead_network_thread_is_unhealthy_not_up_until_the_device_restarts(fmb_bus) -> None:  # type: ignore[no-untyped-def]
    fmb_bus.signal("meter-1", signal.SIGUSR2)  # the test hook: the meter's loops end, the process stays
    status = _until(fmb_bus, lambda lines: lines.get("meter-1", "").startswith("unhealthy"), 15)
    lines = _lines(status)
    assert lines["meter-1"] == "unhealthy (control: MQTT network thread dead; delivery: MQTT network thread dead)"
    assert status.returncode == 1 and "1 of 11 processes are not up" in status.stderr
    assert fmb_bus.alive("meter-1")  # what `fmb status` used to look at, and why it said up
    assert [name for name, shown in lines.items() if shown != "up"] == ["meter-1"]
    fmb_bus.restart("meter-1")
    assert _all_up(_until(fmb_bus, lambda lines: set(lines.values()) == {"up"}, 30))


def test_a_frozen_device_is_unhealthy_while_frozen(fmb_bus) -> None:  # type: ignore[no-untyped-def]
    fmb_bus.signal("supply-1", signal.SIGSTOP)
    try:
        status = _until(fmb_bus, lambda lines: lines.get("supply-1", "").startswith("unhealthy"), STALE_S + 10)
        assert "(frozen or stuck)" in _lines(status)["supply-1"] and status.returncode == 1
    finally:
        fmb_bus.signal("supply-1", signal.SIGCONT)
    assert _all_up(_until(fmb_bus, lambda lines: set(lines.values()) == {"up"}, 15))


def test_clients_cut_off_past_their_backoff_are_unhealthy_until_the_broker_is_back(fmb_bus) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    fmb_bus.signal("field-control", signal.SIGKILL)
    cut_off = {*FIELD, "monitor"}
    status = _until(fmb_bus, lambda lines: all(lines.get(n, "").startswith("unhealthy") for n in cut_off),
                    RECONNECT_MAX_S + 15)
    took = time.monotonic() - t0
    lines = _lines(status)
    assert lines["field-control"] == "DOWN" and status.returncode == 1, status.stdout
    for name in FIELD:
        assert lines[name].startswith("unhealthy (control: disconnected for "), lines
    assert lines["monitor"].startswith("unhealthy (field-control: disconnected for "), lines
    assert lines["dms-1"] == "up"  # on the data centre's brokers: not cut off
    assert took > RECONNECT_MAX_S  # not before the backoff has had its chance
    fmb_bus.restart("field-control")
    assert _all_up(_until(fmb_bus, lambda lines: set(lines.values()) == {"up"}, RECONNECT_MAX_S + 15))
    report = read_health(fmb_bus.run_dir / "meter-1.ready").report
    assert report is not None and report["clients"]["control"]["disconnects"] == 1
    print(json.dumps({"unhealthy_after_s": round(took, 1)}))


def test_appendix_a_passes_after_all_that(fmb_run) -> None:  # type: ignore[no-untyped-def]
    assert_scenario_passed(fmb_run("appendix-a"))
