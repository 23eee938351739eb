"""``fmb bench storm``: a small run on real brokers and a real fleet (the bottleneck shape and sane
figures, not the targets), the committed fixture's shape, and options refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brokers.mosquitto import mosquitto_binary
from testbed.bench import bottleneck
from testbed.bench.storm import CONFIGS, SATURATED_SLOWER, StormOptions, parse_sizes, summary
from testbed.core.errors import TestbedError
from testbed.pytest_plugin import require

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "brokers" / "topologies"
FIXTURE = ROOT / "tests" / "fixtures" / "bench-storm.json"


def assert_storm_result(result: dict[str, Any], sizes: list[int]) -> None:
    """What any working bus gives, whatever the machine's load."""
    bottleneck.check(result, "bench-storm.json")
    assert result["bottleneck"] == "storm" and result["load_unit"] == "meters reconnecting"
    assert [c["config"] for c in result["curves"]] == list(CONFIGS)
    cond = result["conditions"]
    assert cond["sizes"] == sizes and cond["qos"] == 1 and cond["tls_version"].startswith("TLS")
    assert len(cond["load_average_before"]) == 3 and len(cond["storms"]) == 2 * len(sizes)
    for storm in cond["storms"]:
        assert 0 < storm["down_s"] < 10 and storm["reported_s"] is not None and storm["reconnects"] >= storm["meters"]
        assert storm["delivered_before_per_s"] > 0 and storm["storm_s"] > 0
    for curve in result["curves"]:
        assert [p["load"] for p in curve["points"]] == sizes
        assert curve["idle_p99_ms"] is not None and 0 < curve["idle_p99_ms"] < 1000
        assert curve["unsaturated_rate"] > 0
        for point in curve["points"]:
            control = point["control_ms"]
            assert control["sent"] > 0 and control["lost"] == control["sent"] - control["acked"]
            assert point["delivery_rate"] > 0  # the meters came back and reported within the window
    for point in result["curves"][0]["points"]:  # segregated: its broker was never down
        assert point["control_ms"]["acked"] == point["control_ms"]["sent"]
        assert 0 < point["control_ms"]["p50"] <= point["control_ms"]["p99"] < 5000
    assert set(result["targets"]["met"]) == {"segregated_saturation_over_idle", "shared_over_segregated",
                                             "delivery_kept"}
    assert result["environment"]["mosquitto"].startswith("2.") and result["environment"]["gmqtt"]


@pytest.mark.slow
def test_a_small_run_measures_both_configurations(tmp_path: Path) -> None:
    # One size of 6 meters: a bus costs seconds to start; several sizes in one document are checked on the
    # committed fixture (a real --quick run of 50 and 100).
    require(Path(mosquitto_binary()).exists(), "Mosquitto is not installed: sudo apt-get install mosquitto")
    out = tmp_path / "storm"
    run = subprocess.run(
        [sys.executable, "-m", "testbed", "bench", "storm", "--quick", "--sizes", "6", "--topology",
         str(TOPOLOGIES / "utility-small.toml"), "--certs", str(tmp_path / "certs"), "--state",
         str(tmp_path / "state"), "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "storm (shared)" in run.stdout and "targets (segregated)" in run.stdout
    assert_storm_result(json.loads((out / "bench-storm.json").read_text()), [6])
    assert (out / "bench-storm-curves.png").stat().st_size > 10_000


def test_the_fixture_has_the_current_shape() -> None:
    result = json.loads(FIXTURE.read_text())
    assert_storm_result(result, result["conditions"]["sizes"])
    assert len(result["conditions"]["sizes"]) >= 2
    # Saturated by the stated rule: slower than SATURATED_SLOWER x the smallest storm to report back.
    for curve in result["curves"]:
        storms = sorted((s for s in result["conditions"]["storms"] if s["config"] == curve["config"]),
                        key=lambda s: s["meters"])
        expected = [s["reported_s"] is None or (i > 0 and s["reported_s"] > SATURATED_SLOWER * storms[0]["reported_s"])
                    for i, s in enumerate(storms)]
        assert [p["saturated"] for p in curve["points"]] == expected
        assert [p["delivery_rate"] for p in curve["points"]] == [s["delivered_per_s"] for s in storms]
    assert "segregated" in summary(result)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "error"), [
    (StormOptions(sizes=()), "--sizes is empty"),
    (StormOptions(sizes=(0, 10)), "--sizes is 0,10"),
    (StormOptions(sizes=(300, 100)), "give distinct sizes, smallest first"),
    (StormOptions(interval_s=0.0), "--interval is 0"),
    (StormOptions(command_rate=float("nan")), "--command-rate is nan"),
])
def test_bad_options_are_refused_in_one_line(options: StormOptions, error: str) -> None:
    with pytest.raises(TestbedError, match=error.replace("-", r"\-")):
        options.check()


def test_sizes_are_parsed_or_refused() -> None:
    assert parse_sizes("100,300,1000") == (100, 300, 1000)
    for bad in ("", "a,b", "1.5"):
        with pytest.raises(TestbedError, match="--sizes is"):
            parse_sizes(bad)
