"""``fmb bench scale``: a --quick run on real brokers and fleets (the schema and sane figures, not the
targets), the topology resized as the options ask, and the figures drawn from the committed fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brokers.mosquitto import mosquitto_binary
from testbed.bench.scale import RESULT_SCHEMA, ScaleOptions, scale_topology, summary
from testbed.core.errors import TestbedError
from testbed.core.topology import DEFAULT_TOPOLOGY
from testbed.pytest_plugin import require

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "brokers" / "topologies"
FIXTURE = ROOT / "tests" / "fixtures" / "bench-scale.json"


def assert_scale_result(result: dict[str, Any], substations: int, meters: int) -> None:
    """The shape of ``fmb.bench-scale/1`` and figures a working bus must give, whatever the machine."""
    assert result["schema"] == RESULT_SCHEMA
    cond = result["conditions"]
    assert cond["substations"] == substations and cond["meters"] == substations * meters
    assert cond["tls_version"].startswith("TLS") and cond["qos"] == 1 and len(cond["load_average_before"]) == 3
    ramp = result["ramp"]
    assert ramp["all_connected"] and ramp["meters"] == substations * meters
    assert 0 < ramp["seconds_to_all"] < 60 and ramp["handshakes_per_s"] > 0
    assert [r["connected"] for r in ramp["brokers"]] == [meters] * substations
    for row in ramp["brokers"]:
        # Each fleet paces its connections (the quick run: 20/s, a ramp of a second): about that, as timed
        # by its heartbeats.
        rate = result["conditions"]["connect_rate_per_fleet"]
        assert 0.25 * rate < row["handshakes_per_s"] < 4 * rate and row["peak_handshakes_per_s"] > 0, row
        assert row["broker_rss_kb_after"] > 0 and row["fleet_rss_kb"] > 10_000  # an interpreter at least
        assert row["broker_kb_per_connection"] is not None and 0 < row["fleet_kb_per_connection"] < 100_000
    assert ramp["cpu"]["brokers"]["seconds"] > 0 and ramp["cpu"]["fleets"]["seconds"] > 0
    assert ramp["connected_by_time"][-1][1] == substations * meters
    # Every meter, then (after the storms) the fleets stopped down to one substation's.
    assert [(p["substations"], p["meters"]) for p in result["steady"]] == [(substations, substations * meters),
                                                                           (1, meters)]
    for steady in result["steady"]:
        offered = steady["meters"] / steady["interval_s"]
        assert steady["offered_per_s"] == offered
        assert 0.5 * offered < steady["delivered_per_s"] < 1.5 * offered, steady
        assert 0.5 * offered < steady["published_per_s"] < 1.5 * offered, steady
        latency = steady["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"] < 5000
        assert steady["lost"] == steady["duplicated"] == steady["rejected"] == steady["earlier"] == 0
        assert 100 < steady["payload_bytes"] < 1000
    assert [s["config"] for s in result["storm"]] == ["segregated", "shared"]
    for storm in result["storm"]:
        assert storm["meters"] == meters and storm["reported"] == meters, storm
        assert 0 < storm["down_s"] < 10 and storm["reported_s"] is not None and 0 < storm["reported_s"] < 30
        assert storm["reconnects"] >= meters
        idle = storm["control_idle_ms"]
        assert idle["acked"] == idle["sent"] > 0 and 0 < idle["p50"] <= idle["p99"] < 1000
        assert storm["control_ms"]["sent"] > 0 and storm["reported_by_time"][-1][1] == meters
    segregated = result["storm"][0]["control_ms"]
    assert segregated["acked"] == segregated["sent"]  # its broker was never down
    appendix_a = result["appendix_a"]
    assert appendix_a["ran"] and appendix_a["substation"] == f"sub-{substations:03d}"
    for config in ("loaded", "idle"):
        runs = appendix_a[config]
        assert runs["passed"] == appendix_a["repetitions"] and runs["failed"] == 0 and runs["failure"] is None
        assert 0 < runs["p50"] <= runs["p99"] < 10_000
    targets = result["targets"]
    # A smoke of a few dozen meters cannot meet a 10,000-meter target: the verdict is computed, not written.
    assert targets["all_connected_met"] is False and targets["storm_met"] is False
    assert targets["memory_reported"] is True
    assert result["environment"]["mosquitto"].startswith("2.") and result["environment"]["gmqtt"]


@pytest.mark.slow
def test_a_quick_run_measures_every_phase(tmp_path: Path) -> None:
    require(Path(mosquitto_binary()).exists(), "Mosquitto is not installed: sudo apt-get install mosquitto")
    out = tmp_path / "scale"
    run = subprocess.run(
        [sys.executable, "-m", "testbed", "bench", "scale", "--quick", "--topology",
         str(TOPOLOGIES / "utility-small.toml"), "--certs", str(tmp_path / "certs"), "--state",
         str(tmp_path / "state"), "--out", str(out)],
        capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ramp:" in run.stdout and "storm (shared)" in run.stdout  # progress while it runs
    result = json.loads((out / "bench-scale.json").read_text())
    assert_scale_result(result, substations=2, meters=20)
    assert {p.name for p in out.glob("*.png")} == {"bench-scale-ramp.png", "bench-scale-steady.png",
                                                   "bench-scale-storm.png"}
    assert "Reconnect storm" in (out / "report.md").read_text() and "Appendix A on sub-002" in run.stdout


def test_the_fixture_has_the_current_shape() -> None:
    result = json.loads(FIXTURE.read_text())
    assert_scale_result(result, substations=result["conditions"]["substations"],
                        meters=result["conditions"]["meters_per_substation"][0])
    assert "storm segregated" in summary(result)


def test_the_figures_render_from_the_fixture() -> None:
    from testbed.reporting import plots  # matplotlib: only here
    from testbed.reporting.render import scale_markdown

    result = json.loads(FIXTURE.read_text())
    for figure in (plots.scale_ramp(result), plots.scale_steady(result), plots.scale_storm(result)):
        assert figure.axes and all(axes.has_data() for axes in figure.axes)
    text = scale_markdown(result)
    assert "| segregated |" in text and "| shared |" in text and "Targets" in text and "| loaded |" in text


def test_the_topology_is_resized_as_asked(tmp_path: Path) -> None:
    options = ScaleOptions(substations=3, meters=7, storm_meters=11)
    topology = scale_topology(TOPOLOGIES / "utility.toml", options, tmp_path)
    assert {name: len(meters) for name, meters in topology.fleets.items()} == {
        "sub-storm-001-fleet": 11, "sub-001-fleet": 7, "sub-002-fleet": 7}
    assert len(topology.substations) == 3
    ports = [p for s in topology.sites for p in (s.delivery_port, s.control_port)]
    assert len(set(ports)) == len(ports) and not set(ports) & set(range(22000, 22010))  # free, not the file's
    one = scale_topology(TOPOLOGIES / "utility-small.toml", ScaleOptions(substations=1, storm_meters=4), tmp_path)
    assert {name: len(m) for name, m in one.fleets.items()} == {"sub-storm-001-fleet": 4}


@pytest.mark.parametrize(("options", "error"), [
    (ScaleOptions(substations=0), "--substations is 0"),
    (ScaleOptions(meters=-5), "--meters is -5"),
    (ScaleOptions(intervals_s=(0.0,)), "--interval is 0"),
    (ScaleOptions(duration_s=float("nan")), "--duration is nan"),
    (ScaleOptions(connect_rate=0), "--connect-rate is 0"),
])
def test_bad_options_are_refused_in_one_line(options: ScaleOptions, error: str) -> None:
    with pytest.raises(TestbedError, match=error.replace("-", r"\-")):
        options.check()


def test_a_topology_without_substations_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match=r"has no \[\[substations\]\] table"):
        scale_topology(DEFAULT_TOPOLOGY, ScaleOptions(), tmp_path)
