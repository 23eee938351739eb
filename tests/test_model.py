"""The capacity model end to end: a topology simulated, faults as events, validation against the
committed benchmark fixtures, the answers' smoke, and ``fmb model`` on the command line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.core.errors import TestbedError
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from testbed.model.bus import Settings, from_topology, parse_settings, run_model
from testbed.model.calibration import load_calibration
from testbed.model.plots import validation_figure, validation_table
from testbed.model.validate import validate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAL = load_calibration()
SMALL = Settings(substations=3, meters=200, interval_s=1.0, duration_s=6.0, warmup_s=1.0, command_rate=20.0)


def _flow(run: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(f for f in run["flows"] if f["flow"] == name)


def _broker(run: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(b for b in run["brokers"] if b["broker"] == name)


def test_a_topology_gives_the_model_its_substations_meters_and_period() -> None:
    small = from_topology(load_topology(DEFAULT_TOPOLOGY.with_name("utility-small.toml")))
    assert (small.substations, small.meters, small.interval_s, small.qos) == (3, 50, 5.0, 1)
    appendix = from_topology(load_topology())
    assert appendix.substations == 1 and appendix.meters >= 1


def test_the_model_carries_every_reading_and_reports_its_latency_and_load() -> None:
    run = run_model(SMALL, CAL)
    reading = _flow(run, "reading")
    assert reading["sent"] == pytest.approx(3 * 200 * 5, rel=0.02)  # 5 s after warm-up
    assert reading["sent"] - 3 <= reading["delivered"] <= reading["sent"]  # the last ones still in flight at the end
    lat = reading["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    # An idle path: its latency is the hops' service times and the client overhead, nothing queued.
    cost_ms = (CAL["bridge"][0]["edge_cpu_us_per_message"] + CAL["bridge"][0]["datacentre_cpu_us_per_message"]) / 1000
    assert lat["p50"] == pytest.approx(cost_ms + CAL["client_overhead_ms"]["1"], rel=0.3)
    dc = _broker(run, "dc-delivery")
    assert dc["utilisation"] == pytest.approx(600 * CAL["bridge"][0]["datacentre_cpu_us_per_message"] * 1e-6, rel=0.1)
    assert _flow(run, "control round trip")["delivered"] > 50


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    a, b = run_model(SMALL, CAL), run_model(SMALL, CAL)
    c = run_model(dataclasses.replace(SMALL, seed=2), CAL)
    assert a["flows"] == b["flows"] and a["flows"] != c["flows"]


def test_a_shared_control_plane_waits_behind_a_flood_and_a_segregated_one_does_not() -> None:
    cost = CAL["broker_fit"]["base_us"]["2"] * 1e-6  # a QoS 2 flood: saturation with the fewest messages
    flooded = dataclasses.replace(SMALL, flood_rate=0.95 / cost, flood_qos=2, flood_payload_bytes=0, duration_s=3.0,
                                  warmup_s=0.5)  # the data centre's delivery broker near saturation
    segregated = _flow(run_model(flooded, CAL), "control round trip")["latency_ms"]["p99"]
    shared = _flow(run_model(dataclasses.replace(flooded, control="shared"), CAL), "control round trip")
    assert shared["latency_ms"]["p99"] > 5 * segregated


def test_a_restart_storm_recovers_sooner_with_jitter_and_refuses_while_down() -> None:
    storm = dataclasses.replace(SMALL, substations=1, meters=3000, interval_s=60.0, restart="sub-001-delivery",
                                restart_at_s=1.0, down_s=1.0, connect_timeout_s=3.0, backoff_cap_s=4.0,
                                command_rate=0.0)
    jitter = run_model(storm, CAL)["storm"]
    fixed = run_model(dataclasses.replace(storm, backoff="fixed"), CAL)["storm"]
    assert jitter["all_back"] and fixed["all_back"] and jitter["clients"] == 3000
    assert jitter["refused"] > 0  # attempts while the broker was down
    # Every client at once: the listen queue overflows, SYNs are dropped and handshakes wait past the timeout.
    assert fixed["dropped"] + fixed["abandoned"] > jitter["dropped"] + jitter["abandoned"]
    assert jitter["recovery_s"] < fixed["recovery_s"]


def test_a_partition_holds_readings_at_the_bridge_and_delivers_them_after() -> None:
    run = run_model(dataclasses.replace(SMALL, partition_at_s=2.0, partition_s=2.0), CAL)
    reading = _flow(run, "reading")
    assert reading["lost"] == 0 and reading["latency_ms"]["max"] > 1500  # waited out most of the 2 s partition


def test_a_slow_wan_link_is_the_bottleneck_and_drops_past_its_queue() -> None:
    slow = dataclasses.replace(SMALL, wan_bps=200e3, bridge_queue=50)  # 200 readings/s of ~335 B: 536 kbit/s offered
    run = run_model(slow, CAL)
    assert _flow(run, "reading")["lost"] > 0
    assert run["links"][0]["utilisation"] > 0.95


@pytest.mark.parametrize(("pairs", "says"), [
    (["meters=-1"], "meters = -1"), (["control=mixed"], "segregated or shared"), (["qos=3"], "qos = 3"),
    (["direct=perhaps"], "not a bool"), (["=1"], "give KEY=VALUE"), (["warmup_s=60"], "below duration_s"),
    (["interval_s=nan"], "not a float"), (["cores=-1"], "cores = -1; give 0"),
    (["cores=two"], "not a int"),
])
def test_settings_are_checked_in_one_line(pairs: list[str], says: str) -> None:
    with pytest.raises(TestbedError, match=says) as caught:
        parse_settings(pairs)
    assert "\n" not in str(caught.value)


def test_validation_against_the_committed_fixtures_gives_every_row_its_error() -> None:
    doc = validate(CAL, "fixture", [FIXTURES / "bench-scale.json"], [FIXTURES / "bench-prioritization.json"],
                   duration_s=2.0)
    points = {(r["benchmark"], r["point"]) for r in doc["rows"]}
    source = json.loads((FIXTURES / "bench-prioritization.json").read_text())
    steps = sum(len(rows) for rows in source["results"].values())  # every configuration's loads, "max" included
    assert len({p for b, p in points if b == "prioritization"}) == steps >= 9
    assert len({p for b, p in points if b == "scale"}) == 2
    for r in doc["rows"]:
        assert r["error"] == pytest.approx((r["predicted"] - r["measured"]) / r["measured"], rel=1e-3, abs=1e-3)
        assert r["met"] == (abs(r["error"]) <= r["target"])
    assert doc["total"] == len(doc["rows"]) and 0 <= doc["met"] <= doc["total"]
    assert any("quick" in m for m in doc["measurements"])  # a measured file says what kind of run it was
    assert "slowdown" in doc["contention"]
    table = validation_table(doc)
    assert table.count("\n") == len(doc["rows"]) + 2
    assert validation_figure(doc).axes


def test_the_machines_cores_carry_the_clients_work_too() -> None:
    # 2 x 500 meters every 0.25 s (4,000 readings/s): with a core per process the brokers carry it
    # easily; on two shared cores the fleets' and the DMS side's CPU per reading (calibrated) does not fit.
    busy = Settings(substations=2, meters=500, interval_s=0.25, duration_s=6.0, warmup_s=1.0, command_rate=0.0)
    own = _flow(run_model(busy, CAL), "reading")
    host_run = run_model(dataclasses.replace(busy, cores=2), CAL)
    shared = _flow(host_run, "reading")
    assert own["delivered"] >= own["sent"] - 5 and own["latency_ms"]["p99"] < 50
    assert host_run["host"]["cores"] == 2 and host_run["host"]["offered_load"] > 1.0
    assert shared["delivered"] < 0.8 * shared["sent"] and shared["latency_ms"]["p50"] > 100
    # A light load fits the same cores: nothing is stretched past what the processes cost.
    light = _flow(run_model(dataclasses.replace(busy, interval_s=5.0, cores=2), CAL), "reading")
    assert light["delivered"] >= light["sent"] - 5 and light["latency_ms"]["p50"] < 10
    without = {k: v for k, v in CAL.items() if k != "clients"}
    with pytest.raises(TestbedError, match="no clients' CPU costs.*fmb model calibrate") as caught:
        run_model(dataclasses.replace(busy, cores=2), without)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_validation_on_the_machines_cores_drives_the_generators_at_what_they_sent() -> None:
    doc = validate(CAL, "fixture", [FIXTURES / "bench-scale-validation.json"],
                   [FIXTURES / "bench-prioritization.json"], duration_s=5.0)
    assert "2 cores shared by the fleets" in doc["contention"]
    source = json.loads((FIXTURES / "bench-prioritization.json").read_text())
    flooded = [r for r in source["results"]["shared"] if r["offered_rate"] != 0]
    names = {r["point"] for r in doc["rows"] if r["benchmark"] == "prioritization"}
    for r in flooded:
        assert f"shared flood {r['offered_rate']} (sent {r['sent_rate']:.0f}/s, 2 cores)" in names
    # Driven at what was sent, the model's unsaturated flood carries it: every throughput row within its
    # target (the model's Poisson flood over 4.5 simulated seconds: a few per cent of noise).
    carried = [r for r in doc["rows"] if r["benchmark"] == "prioritization" and r["metric"] == "throughput_per_s"]
    assert len(carried) == 12 and all(r["met"] for r in carried), carried


@pytest.mark.parametrize(("fixture", "kind", "change"), [
    ("bench-prioritization.json", "prioritization", lambda d: d["results"]["shared"][1].update(sent_rate="x")),
    ("bench-prioritization.json", "prioritization", lambda d: d["results"]["shared"][1].update(cpu=[1])),
    ("bench-prioritization.json", "prioritization", lambda d: d["results"]["shared"][1].pop("offered_rate")),
    ("bench-scale.json", "scale", lambda d: d["steady"][0].update(published_per_s="fast")),
    ("bench-scale.json", "scale", lambda d: d.update(steady=[{}])),
])
def test_a_broken_result_file_fails_validation_in_one_line(tmp_path: Path, fixture: str, kind: str,
                                                           change: Any) -> None:
    doc = json.loads((FIXTURES / fixture).read_text())
    change(doc)
    path = tmp_path / fixture
    path.write_text(json.dumps(doc))
    files: dict[str, list[Path]] = {"scale": [], "prioritization": []}
    files[kind].append(path)
    with pytest.raises(TestbedError, match="a field is missing or of the wrong type") as caught:
        validate(CAL, "fixture", files["scale"], files["prioritization"], duration_s=2.0)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_validation_refuses_a_file_of_another_benchmark(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="not 'fmb.bench-scale/1'"):
        validate(CAL, "fixture", [FIXTURES / "bench-prioritization.json"], [])


def _fmb(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", "model", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_fmb_model_run_writes_its_result(tmp_path: Path) -> None:
    done = _fmb("run", "utility-small", "--set", "duration_s=3", "--set", "warmup_s=0.5", "--out", str(tmp_path),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "model-run.json").read_text())
    assert run["schema"] == "fmb.model-run/1" and run["topology"] == "utility-small"
    assert run["settings"]["substations"] == 3 and run["settings"]["meters"] == 50
    assert "dc-delivery" in done.stdout and _flow(run, "reading")["delivered"] > 0


@pytest.mark.slow
def test_fmb_model_validate_writes_the_table_and_the_plot(tmp_path: Path) -> None:
    done = _fmb("validate", "--seconds", "2", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "within target" in done.stdout
    assert (tmp_path / "model-validation.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "model-validation.json").read_text())["schema"] == "fmb.model-validation/1"
