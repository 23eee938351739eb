"""The latency benchmark, its result shape, its figures and ``fmb report``.

A short real run (3 repetitions, QoS 1, on the session's bus: a few seconds) checks the JSON
schema and that the figures are sane; the rest works on the committed fixtures and on synthetic
data, with no broker.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import numpy
import pytest

import testbed.model.plots  # noqa: F401  (registers the capacity model's renderers, as fmb report does)
from testbed.bench import latency
from testbed.bench.latency import critical_path_traversals, parse_qos_levels, run_latency, step_traversals
from testbed.cli.fmb import main
from testbed.core.errors import TestbedError
from testbed.reporting import plots
from testbed.reporting import render as reporting
from testbed.reporting.plots import ecdf
from testbed.reporting.render import RENDERERS, load_result, markdown_table, render_run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAT_KEYS = ("n", "min", "p50", "p90", "p99", "max", "mean")


def assert_sane_stats(stats: dict[str, Any], what: str) -> None:
    """Every key present, nothing negative, percentiles in order, the mean within the range."""
    assert set(STAT_KEYS) <= set(stats), f"{what}: missing {set(STAT_KEYS) - set(stats)}"
    assert stats["n"] >= 1
    assert 0 <= stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"], f"{what}: {stats}"
    assert stats["min"] <= stats["mean"] <= stats["max"], f"{what}: {stats}"


def assert_latency_result(result: dict[str, Any]) -> None:
    """The ``fmb.bench-latency/2`` or ``/3`` shape, and figures that make sense (and /3's waterfall)."""
    assert result["schema"] in ("fmb.bench-latency/2", "fmb.bench-latency/3")
    assert latency.RESULT_SCHEMA == "fmb.bench-latency/3"
    c = result["conditions"]
    for key in ("scenario", "qos_levels", "repetitions", "warmup_repetitions", "one_hop_messages",
                "one_hop_payload_bytes", "tls_version"):
        assert key in c, key
    for key in ("python", "mosquitto", "paho_mqtt", "openssl", "machine"):
        assert key in result["environment"], key
    assert [q["qos"] for q in result["by_qos"]] == c["qos_levels"]
    for q in result["by_qos"]:
        assert_sane_stats(q["e2e_ms"], f"QoS {q['qos']} e2e")
        assert_sane_stats(q["one_hop_ms"], f"QoS {q['qos']} one hop")
        assert_sane_stats(q["display_ms"], f"QoS {q['qos']} display")
        assert len(q["samples"]["e2e_ms"]) == q["e2e_ms"]["n"] == c["repetitions"]
        assert len(q["samples"]["one_hop_ms"]) == q["one_hop_ms"]["n"] == c["one_hop_messages"]
        assert q["e2e_ms"]["max"] == max(q["samples"]["e2e_ms"])
        for step in q["steps"]:
            assert_sane_stats(step["hop_ms"], f"QoS {q['qos']} step {step['n']}")
            assert step["traversals"] in (1, 2)
        path = q["critical_path"]
        assert path["total"] == sum(path["per_step"].values()) >= len(path["path"])
        assert q["critical_path_one_hop_ms"] == pytest.approx(path["total"] * q["one_hop_ms"]["p50"], rel=1e-3)
        assert q["overhead_ratio"] == pytest.approx(q["e2e_ms"]["p50"] / q["critical_path_one_hop_ms"], rel=1e-2)
        assert q["meets_target"] == (q["overhead_ratio"] <= result["target_ratio"])
        # The scenario cannot be faster than its critical path's hops at their fastest.
        assert q["e2e_ms"]["min"] >= path["total"] * q["one_hop_ms"]["min"]
        if result["schema"] == "fmb.bench-latency/3":
            assert_waterfall(q, path)


def assert_waterfall(q: dict[str, Any], path: dict[str, Any]) -> None:
    """Every traversal of the critical path is a bus segment, every act a device's, and they add up."""
    w = q["waterfall"]
    assert w["paths"]["-".join(map(str, w["path"]))] == w["repetitions"] == max(w["paths"].values())
    assert w["repetitions"] + w["incomplete"] == q["e2e_ms"]["n"]
    # The path runs from the trigger to the last step, each step after one the scenario lets it follow.
    assert w["path"][0] == 1 and w["path"][-1] == len(q["steps"]) and w["path"] == sorted(w["path"])
    kinds = [s["kind"] for s in w["segments"]]
    traversals = sum(q["steps"][n - 1]["traversals"] for n in w["path"])
    assert sum(s["traversals"] for s in w["segments"] if s["kind"] == "bus") == traversals
    # One act per link, and the supply before the feeder model before the meter where the physics couples them.
    assert kinds.count("device") == len(path["path"]) + kinds.count("feeder") and kinds[-1] == "display"
    for s in w["segments"]:
        assert len(s["samples_ms"]) == s["ms"]["n"] == w["repetitions"], s["key"]
        assert s["ms"]["p50"] == pytest.approx(float(numpy.percentile(s["samples_ms"], 50)), abs=1e-3)
        if s["kind"] == "bus":  # a message arrives after it was sent, through one broker at least
            assert s["ms"]["min"] > 0 and s["traversals"] in (1, 2), s
    # The segments of each repetition telescope to its end to end: only rounding is left.
    assert w["max_repetition_residual_ms"] < 0.01
    assert w["sum_of_p50_ms"] == pytest.approx(sum(s["ms"]["p50"] for s in w["segments"]), abs=1e-3)
    assert w["sums_within_tolerance"] == (abs(w["sum_deviation"]) <= w["sum_tolerance"] == 0.05)
    means = sum(w["mean_by_kind_ms"].values())
    assert means == pytest.approx(sum(s["ms"]["mean"] for s in w["segments"]), abs=1e-3)
    if w["incomplete"] == 0:  # means add: the segments' means are the end-to-end mean
        assert means == pytest.approx(q["e2e_ms"]["mean"], abs=0.01)
    assert set(w["device_ms"]) == {s["who"] for s in w["segments"] if s["kind"] in ("device", "display")}


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


# -- statistics and parsing ---------------------------------------------------------------------

def test_ecdf_of_synthetic_samples() -> None:
    xs, ys = ecdf([3.0, 1.0, 2.0, 2.0])
    assert xs == [1.0, 2.0, 2.0, 3.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]


def test_ecdf_is_monotonic_and_ends_at_one() -> None:
    xs, ys = ecdf([(i * 7919) % 101 / 10 for i in range(500)])
    assert xs == sorted(xs) and ys == sorted(ys) and ys[-1] == 1.0 and ys[0] == 1 / 500


def test_ecdf_refuses_an_empty_sequence() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ecdf([])


@pytest.mark.parametrize(("text", "levels"), [("0,1,2", [0, 1, 2]), ("1", [1]), ("2, 0", [2, 0])])
def test_parse_qos_levels(text: str, levels: list[int]) -> None:
    assert parse_qos_levels(text) == levels


@pytest.mark.parametrize("text", ["", "3", "1,1", "one", "0,,x"])
def test_parse_qos_levels_refuses_with_the_fix(text: str) -> None:
    with pytest.raises(TestbedError, match="distinct levels from 0, 1, 2"):
        parse_qos_levels(text)


def test_critical_path_of_appendix_a(topology: Any, appendix_a: Any) -> None:
    steps = load_result(FIXTURES / "bench-latency.json")["by_qos"][0]["steps"]
    path = critical_path_traversals(topology, appendix_a, steps)
    # Step 2 (supply status) and step 7 are off the path: the meter reads the feeder, not the bus.
    assert path["path"] == [1, 3, 4, 5, 6, 8, 9]
    assert path["per_step"]["1"] == 1  # tablet -> supply, both in the field
    assert path["total"] == 13  # every other step crosses the bridge: two brokers
    assert [step_traversals(topology, s) for s in steps] == [1, 2, 2, 2, 2, 2, 2, 2, 2]


def test_markdown_table() -> None:
    table = markdown_table(["a", "b"], [[1.23456, None], [True, "x|y"], [False, 123.456]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | – |", "| yes | x\\|y |",
                                  "| **no** | 123.5 |"]


# -- the committed fixtures and fmb report -----------------------------------------------------

def test_latency_fixture_has_the_current_shape() -> None:
    result = load_result(FIXTURES / "bench-latency.json")
    assert result["schema"] == latency.RESULT_SCHEMA
    assert_latency_result(result)


def test_a_result_of_the_previous_shape_still_renders(tmp_path: Path) -> None:
    """fmb.bench-latency/2 (no waterfall) is still read: its CDF and steps, and no waterfall section."""
    shutil.copy(FIXTURES / "bench-latency-v2.json", tmp_path)
    assert_latency_result(load_result(tmp_path / "bench-latency-v2.json"))
    report = render_run(tmp_path)
    assert report.skipped == [] and {p.name for p in report.figures} == {
        "bench-latency-v2-cdf.png", "bench-latency-v2-steps.png"}
    assert "Waterfall" not in report.path.read_text()


def test_every_fixture_has_a_renderer() -> None:
    for path in sorted(FIXTURES.rglob("*.json")):
        assert load_result(path)["schema"] in RENDERERS, path


def test_reporting_exports_are_complete() -> None:
    for module in (reporting, plots, latency):
        defined = {name for name, obj in vars(module).items()
                   if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                   and obj.__module__ == module.__name__}
        assert defined <= set(module.__all__), f"{module.__name__}: {defined - set(module.__all__)}"


def test_render_run_renders_every_result(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "run")
    report = render_run(tmp_path / "run")
    assert report.skipped == []
    assert {p.name for p in report.figures} == {
        "bench-latency-cdf.png", "bench-latency-steps.png", "bench-latency-waterfall.png",
        "bench-latency-v2-cdf.png", "bench-latency-v2-steps.png", "bench-prioritization-control.png",
        "bench-prioritization-throughput.png", "bench-recovery-times.png", "bench-recovery-autosave.png",
        "bench-wan-control.png", "bench-wan-throughput.png", "bench-ui-cdf.png", "bench-ui-repetitions.png",
        "bench-crash-curve.png", "bench-crash-policies.png", "bench-soak-ledger.png", "bench-soak-timeline.png",
        "bench-scale-ramp.png", "bench-scale-steady.png", "bench-scale-storm.png", "result-timeline.png",
        "bench-scale-utility-ramp.png", "bench-scale-utility-steady.png", "bench-scale-utility-storm.png",
        "bench-scale-validation-ramp.png", "bench-scale-validation-steady.png", "bench-scale-validation-storm.png",
        "bench-broker-curves.png", "bench-cpu-curves.png", "bench-storm-curves.png", "bench-wan-curve-curves.png",
        "model-validation-validation.png", "model-answers-sweep.png", "model-answers-storm.png"}
    for png in report.figures:
        _assert_png(png)
    text = report.path.read_text()
    assert "## Latency benchmark" in text and "ratio (target ≤ 1.3)" in text
    assert "![Scenario: timeline](scenario/result-timeline.png)" in text
    assert "### Conditions" in text and "Not rendered" not in text


def test_render_run_lists_what_it_cannot_render(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "bench-latency.json", tmp_path)
    (tmp_path / "bench-future.json").write_text(json.dumps({"schema": "fmb.bench-future/9"}))
    (tmp_path / "bench-broken.json").write_text("{not json")
    report = render_run(tmp_path)
    assert len(report.figures) == 3
    assert len(report.skipped) == 2
    text = report.path.read_text()
    assert "no renderer for schema 'fmb.bench-future/9'" in text
    assert "bench-broken.json: cannot read result" in text


def test_render_run_of_an_empty_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="no result JSON"):
        render_run(tmp_path)


def test_fmb_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(FIXTURES / "bench-latency.json", tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert "report.md (3 figures" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 1


# -- a short real run ---------------------------------------------------------------------------

def test_short_latency_run_on_the_session_bus(bus: Any, appendix_a: Any, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_latency(lambda qos: contextlib.nullcontext(bus), bus.topology, appendix_a, [bus.topology.qos],
                         repeat=3, warmup=1, hops=50, out=tmp_path, log=lines.append)
    assert_latency_result(result)
    assert load_result(tmp_path / "bench-latency.json") == json.loads(json.dumps(result))
    assert any("repetition 3/3" in line for line in lines)  # progress is shown
    assert f"{result['by_qos'][0]['overhead_ratio']:5.2f}" in latency.summary(result)
    report = render_run(tmp_path)
    assert report.skipped == [] and len(report.figures) == 3


def test_bench_latency_refuses_to_run_beside_a_bus(
    bus: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "latency", "--state", str(bus.state_dir), "--certs", str(bus.pki.directory),
                 "--out", str(tmp_path)])
    assert code == 1
    assert "`fmb down` first" in capsys.readouterr().err
    assert not (tmp_path / "bench-latency.json").exists()


def test_bench_latency_refuses_too_few_repetitions(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="--repeat is 1"):
        run_latency(lambda qos: contextlib.nullcontext(None), None, None, [1], 1, 0, 10, tmp_path)  # type: ignore[arg-type]
