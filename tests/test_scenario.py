"""The Appendix A scenario on the real bus: it passes, in order, with the final state, 20 times."""

from __future__ import annotations

import dataclasses
import json

from testbed.core.scenario import Expectation
from testbed.pytest_plugin import assert_scenario_passed


def test_appendix_a_passes_twenty_times_in_order(fmb_run) -> None:  # type: ignore[no-untyped-def]
    result = fmb_run("appendix-a", repeat=20)
    assert_scenario_passed(result)
    assert result["repetitions"] == 20
    assert [r["passed"] for r in result["runs"]] == [True] * 20
    steps = result["steps"]
    assert [s["n"] for s in steps] == list(range(1, 10))
    assert [s["device"] for s in steps] == [
        "tablet-1", "supply-1", "meter-1", "dms-1", "capbank-1", "dms-1", "supply-1", "meter-1", "dms-1"]
    assert [s["plane"] for s in steps] == [
        "control", "delivery", "delivery", "control", "delivery", "control", "delivery", "delivery",
        "delivery"]
    # Each step follows the one it is caused by; the end follows every step.
    for s in steps:
        cause = steps[s["after"] - 1]["t_ms"] if s["after"] else 0.0
        assert s["t_ms"] >= cause, s
    assert result["end"]["device"] == "tablet-1"
    assert result["e2e_ms"] >= max(s["t_ms"] for s in steps) > 0
    assert result["p50"] <= result["p90"] <= result["p99"] <= result["max"]
    # Every step of a repetition is one trace, from the tablet's command to the diagram.
    trace_ids = {s["traceparent"].split("-")[1] for s in steps}
    assert len(trace_ids) == 1, trace_ids


def test_result_files_are_written(fmb_run) -> None:  # type: ignore[no-untyped-def]
    result = fmb_run("appendix-a")
    assert_scenario_passed(result)
    out = result.out
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["schema"] == "fmb.scenario-result/1"
    for key in ("scenario", "passed", "steps", "e2e_ms", "environment"):
        assert key in on_disk
    env = on_disk["environment"]
    assert env["mosquitto"].startswith("2.") and env["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert env["qos"] == 1 and env["paho_mqtt"] and env["openssl"]
    step_keys = {"n", "name", "device", "topic", "plane", "t_ms", "hop_ms"}
    assert all(step_keys <= set(s) for s in on_disk["steps"])
    lines = [json.loads(x) for x in (out / "messages.jsonl").read_text().splitlines()]
    assert len(lines) >= 10
    assert all(m["traceparent"] and m["sightings"] for m in lines)
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.txt").read_text() == result.summary() + "\n" and "PASSED" in result.summary()


def test_final_state_is_checked(fmb_run, appendix_a) -> None:  # type: ignore[no-untyped-def]
    """A scenario whose final state cannot hold fails, naming it: the check is not a formality."""
    impossible = dataclasses.replace(appendix_a, final=(
        Expectation("capbank", "CapBankStatusProfile", {"state": "open"}, "delivery"),))
    result = fmb_run(impossible)
    assert not result.passed and not result["passed"]
    assert "final state" in result.failure and "capbank-1" in result.failure
