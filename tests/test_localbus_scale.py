"""The local backend at scale (issue 12): brokers sized for their clients, fleets as processes,
``fmb status`` per fleet and substation, and Appendix A on one substation of utility-small."""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.mosquitto import connection_budget, expected_clients
from testbed.backends import processes
from testbed.backends.fleets import FLEET_GRACE_S, fleet_state
from testbed.backends.local import BROKER_FD_MARGIN, LocalBus
from testbed.cli.bus import status_lines
from testbed.core.errors import ScenarioError
from testbed.core.scenario import load_scenario
from testbed.core.topology import DEFAULT_TOPOLOGY, Topology, load_topology
from testbed.harness.cast import Cast
from testbed.harness.runner import ScenarioRunner
from testbed.security.provision import ensure_pki
from testbed.transport.health import Heartbeat

SMALL = DEFAULT_TOPOLOGY.parent / "utility-small.toml"


def _open_files_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) ``Max open files`` of a running process, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def test_spawn_raises_a_childs_open_files_limit_past_a_low_one_of_ours(tmp_path: Path) -> None:
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, ours[1]))  # the usual 1024, lower still
    try:
        wanted = min(3000, ours[1])
        record = processes.spawn("sleeper", "test", ["sleep", "30"], tmp_path / "sleeper.log", nofile=wanted)
        try:
            soft, hard = _open_files_limit(record.pid)
        finally:
            processes.stop([record], timeout_s=5)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, ours)
    assert soft >= wanted and hard >= soft
    assert processes.nofile_limits(10) == ours  # never lowered


def test_a_brokers_connection_budget_covers_its_substations_meters() -> None:
    t = load_topology(DEFAULT_TOPOLOGY.parent / "utility.toml")
    delivery, control = t.broker("sub-004-delivery"), t.broker("sub-004-control")
    # 1,000 meters, a tablet, a supply and a cap bank on the delivery plane; the fleet's meters
    # never connect to the control plane.
    assert expected_clients(t, delivery) >= 1003 > expected_clients(t, control)
    assert connection_budget(t, delivery) >= 2 * 1003  # room for a storm's lingering connections
    assert connection_budget(t, control) == 1024


def _heartbeat(path: Path, connected: int, expected: int, **extra: int) -> int:
    beat = Heartbeat(path, "sub-001-fleet", disconnected_limit_s=5)
    beat.counters = {"expected": expected, "connected": connected, **extra}
    return int(beat.beat()["pid"])


def test_a_fleet_short_of_meters_is_unhealthy_only_past_the_grace_period(tmp_path: Path) -> None:
    ready = tmp_path / "sub-001-fleet.ready"
    pid = _heartbeat(ready, 50, 50)
    assert fleet_state(ready, pid, running_s=1000).verdict == "up"
    pid = _heartbeat(ready, 40, 50)
    assert fleet_state(ready, pid, running_s=5).verdict == "up"  # still starting: within the grace
    state = fleet_state(ready, pid, running_s=FLEET_GRACE_S + 5)
    assert (state.verdict, state.connected, state.expected) == ("unhealthy", 40, 50)
    assert "40/50 meters connected" in state.why
    pid = _heartbeat(ready, 40, 50, short_s=3)  # the fleet says since when: that wins over its age
    assert fleet_state(ready, pid, running_s=1000).verdict == "up"
    pid = _heartbeat(ready, 40, 50, short_s=int(FLEET_GRACE_S) + 1)
    assert fleet_state(ready, pid, running_s=1).verdict == "unhealthy"
    assert fleet_state(ready, pid + 1, running_s=1).verdict == "unhealthy"  # another process's heartbeat
    pid = _heartbeat(ready, 0, 0)
    ready.write_text(json.dumps({"time": time.time(), "healthy": True, "pid": pid, "counters": {"connected": "all"}}))
    assert "no connected/expected counters" in fleet_state(ready, pid, running_s=1).why


def test_the_cast_of_one_substation() -> None:
    t = load_topology(SMALL)
    cast = Cast.of(t, "sub-002")
    assert sorted(d.id for d in cast.devices) == ["dms-1", "sub-002-f1-capbank", "sub-002-f1-m0001",
                                                  "sub-002-f1-supply", "sub-002-tablet"]
    assert cast.sites == {"dc", "sub-002"}
    assert [d.id for d in cast.matching("meter")] == ["sub-002-f1-m0001"]  # the regulating meter only
    assert cast.stand_in(t, "supply-1", "SupplyControlProfile") == "sub-002-f1-supply"
    assert cast.stand_in(t, "sub-001-f1-capbank", "CapBankControlProfile") == "sub-002-f1-capbank"
    assert cast.stand_in(t, "operator", "SupplyControlProfile") == "operator"
    assert Cast.of(t).stand_in(t, "supply-1", "SupplyControlProfile") == "supply-1"  # the whole bus: as written
    assert len(Cast.of(t).devices) == len(t.devices)
    assert cast.topics_of(t) == ["dms-1", "sub-002-f1", "sub-002-f1-capbank", "sub-002-f1-m0001",
                                 "sub-002-f1-supply", "sub-002-tablet"]  # the DMS's diagrams: the feeder's topic
    for bad in ("dc", "sub-9", ""):
        with pytest.raises(ScenarioError, match="no substation of .*use one of: sub-001, sub-002, sub-003"):
            Cast.of(t, bad)


# -- utility-small on the local backend --------------------------------------------------------


@pytest.fixture(scope="module")
def small_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBus, float]]:
    """utility-small (3 substations x 50 meters, fleets) as local processes; with its start time."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("needs Debian's mosquitto")
    topology = load_topology(SMALL).with_free_ports()
    pki = ensure_pki(topology, tmp_path_factory.mktemp("certs"))
    state = Path(tempfile.mkdtemp(prefix="fmb-scale-"))  # short: the Unix sockets' paths live in it
    bus = LocalBus(topology, pki, state, ui_port=None)
    t0 = time.monotonic()
    bus.start()
    try:
        yield bus, time.monotonic() - t0
    finally:
        bus.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_fleets_start_as_one_process_per_substation_with_every_meter_connected(
        small_bus: tuple[LocalBus, float]) -> None:
    bus, started_s = small_bus
    kinds = [p.kind for p in bus.processes]
    assert kinds.count("fleet") == 3 and not any(p.name.startswith("sub-001-f1-m") for p in bus.processes)
    assert kinds.count("device") == 1 + 3 * 3  # the DMS; per substation a tablet, a supply, a cap bank
    for fleet in bus.topology.fleets:
        state = bus.fleet_state(fleet)
        assert (state.verdict, state.connected, state.expected) == ("up", 50, 50)
    fleet_file = bus.run_dir / "sub-002-fleet.json"
    assert fleet_file.stat().st_mode & 0o777 == 0o600
    print(f"utility-small up in {started_s:.1f} s")


def test_a_monitor_shard_per_site_each_watching_only_its_sites_brokers(small_bus: tuple[LocalBus, float]) -> None:
    bus, _ = small_bus
    shards = [p.name for p in bus.processes if p.kind == "monitor"]
    assert shards == [f"monitor-{s.name}" for s in bus.topology.sites]
    for name in shards:
        assert bus.health(name) == ("up", ""), name
    log = next(Path(p.log) for p in bus.processes if p.name == "monitor-sub-002").read_text()
    assert "watching 2 brokers (sub-002)" in log


def test_brokers_run_with_the_connections_and_open_files_their_clients_need(small_bus: tuple[LocalBus, float]) -> None:
    bus, _ = small_bus
    for p in bus.processes:
        if p.kind != "broker":
            continue
        budget = connection_budget(bus.topology, bus.topology.broker(p.name))
        conf = (bus.state_dir / "brokers" / p.name / "mosquitto.conf").read_text()
        assert f"\nmax_connections {budget}\n" in conf
        soft, _ = _open_files_limit(p.pid)
        assert soft >= budget + BROKER_FD_MARGIN


def test_status_has_a_line_per_fleet_and_totals_per_substation(small_bus: tuple[LocalBus, float]) -> None:
    bus, _ = small_bus
    lines, bad = status_lines(bus)
    assert bad == 0, "\n".join(lines)
    fleet_lines = [ln for ln in lines if ln.startswith("fleet ")]
    assert len(fleet_lines) == 3 and all(" up  50/50 connected" in ln for ln in fleet_lines)
    subs = [ln for ln in lines if ln.startswith("substation")]
    assert [ln.split()[1] for ln in subs] == ["sub-001", "sub-002", "sub-003"]
    # Per substation: 2 brokers, a feeder, a tablet, a supply, a cap bank and the fleet.
    assert all("7/7 processes up, 50/50 meters connected" in ln for ln in subs), subs
    assert lines[-1].split()[0] == "total" and "150/150 meters connected in 3 fleets" in lines[-1]


def test_appendix_a_runs_on_one_substation(small_bus: tuple[LocalBus, float], tmp_path: Path) -> None:
    bus, _ = small_bus
    topology: Topology = bus.topology
    scenario = load_scenario("appendix-a", {d.id: d.role for d in topology.devices})
    with ScenarioRunner(bus, scenario, substation="sub-002") as runner:
        result = runner.run(1, tmp_path / "run")
        seen = runner.recorder.snapshot()
    assert result["passed"], result["failure"]
    # The recorder subscribed to the cast's topics on the cast's sites only: the feeder's other 49
    # meters read by exception as the voltage moved, and none of that reached it.
    assert {b.site for b in runner.recorder.brokers} == {"dc", "sub-002"}
    assert {o.mrid for o in seen} <= set(runner.cast.topics_of(topology)), sorted({o.mrid for o in seen})
    assert runner.recorder.ignored == 0
    readings = [json.loads(line) for line in (tmp_path / "run" / "messages.jsonl").read_text().splitlines()]
    assert not [r for r in readings if r["topic"].endswith("sub-002-f1-m0002")]
    devices = {s["device"] for s in result["steps"]}
    assert devices == {"sub-002-tablet", "sub-002-f1-supply", "sub-002-f1-m0001", "dms-1", "sub-002-f1-capbank"}
    assert result["lanes"] == ["sub-002-tablet", "sub-002-f1-supply", "sub-002-f1-m0001", "dms-1",
                               "sub-002-f1-capbank"]


def test_a_killed_fleet_is_down_and_restarts_by_its_recorded_pid(small_bus: tuple[LocalBus, float]) -> None:
    bus, _ = small_bus
    old = next(p for p in bus.processes if p.name == "sub-003-fleet")
    processes.kill(old, timeout_s=5)
    assert bus.health("sub-003-fleet") == ("DOWN", "not running")
    bus.restart("sub-003-fleet")  # what `fmb recover` does for a process that is down
    new = next(p for p in bus.processes if p.name == "sub-003-fleet")
    assert new.pid != old.pid and bus.health("sub-003-fleet") == ("up", "")
    assert bus.fleet_state("sub-003-fleet").connected == 50
