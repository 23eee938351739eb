"""Tests of testbed.reporting.scenario on synthetic Appendix A results (no broker, no measurement)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest

from testbed.reporting import scenario as report
from testbed.reporting.scenario import plot_timeline
from testbed.reporting.text import summary_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (name, publisher, receivers, topic, plane, t_ms, hop_ms) of the nine Appendix A steps.
_STEPS = [
    (
        "Tablet commands supply to 114 V",
        "tablet-1",
        ["supply-1"],
        "fmb/supplymodule/SupplyControlProfile/supply-1",
        "control",
        0.0,
        0.0,
    ),
    (
        "Supply applies 114 V",
        "supply-1",
        ["dms-1"],
        "fmb/supplymodule/SupplyStatusProfile/supply-1",
        "delivery",
        0.31,
        0.31,
    ),
    (
        "Meter publishes 114 V",
        "meter-1",
        ["dms-1", "tablet-1"],
        "fmb/metermodule/MeterReadingProfile/meter-1",
        "delivery",
        1.42,
        0.27,
    ),
    (
        "DMS commands cap bank to close",
        "dms-1",
        ["capbank-1"],
        "fmb/capbankmodule/CapBankControlProfile/capbank-1",
        "control",
        1.71,
        0.26,
    ),
    (
        "Cap bank publishes closed",
        "capbank-1",
        ["dms-1"],
        "fmb/capbankmodule/CapBankStatusProfile/capbank-1",
        "delivery",
        2.05,
        0.28,
    ),
    (
        "DMS commands supply to 120 V",
        "dms-1",
        ["supply-1"],
        "fmb/supplymodule/SupplyControlProfile/supply-1",
        "control",
        2.05,
        0.25,
    ),
    (
        "Supply applies 120 V",
        "supply-1",
        ["dms-1"],
        "fmb/supplymodule/SupplyStatusProfile/supply-1",
        "delivery",
        2.33,
        0.28,
    ),
    (
        "Meter publishes 120 V",
        "meter-1",
        ["dms-1", "tablet-1"],
        "fmb/metermodule/MeterReadingProfile/meter-1",
        "delivery",
        3.48,
        0.27,
    ),
    (
        "DMS publishes single-line diagram",
        "dms-1",
        ["tablet-1"],
        "fmb/dmsmodule/SingleLineDiagramProfile/feeder-1",
        "delivery",
        7.61,
        0.29,
    ),
]


def appendix_a_result() -> dict[str, Any]:
    """Return a passed, 20-repetition result of the nine-step Appendix A scenario."""
    steps = [
        {
            "n": n,
            "name": name,
            "device": device,
            "receivers": receivers,
            "topic": topic,
            "plane": plane,
            "t_ms": t_ms,
            "hop_ms": hop_ms,
        }
        for n, (name, device, receivers, topic, plane, t_ms, hop_ms) in enumerate(_STEPS, 1)
    ]
    return {
        "schema": "fmb.scenario-result/1",
        "scenario": "appendix-a",
        "passed": True,
        "failure": None,
        "lanes": ["tablet-1", "supply-1", "meter-1", "dms-1", "capbank-1"],
        "steps": steps,
        "end": {"device": "tablet-1", "t_ms": 7.9},
        "e2e_ms": 7.9,
        "repetitions": 20,
        "p50": 7.5,
        "p90": 8.1,
        "p99": 9.0,
        "max": 9.3,
        "environment": {
            "qos": 1,
            "tls_version": "TLSv1.3",
            "mosquitto": "2.0.11",
            "python": "3.11.7",
            "machine": {"cpu_count": 2},
        },
    }


def failed_result() -> dict[str, Any]:
    """Return a single-run result that failed after its third step."""
    result = appendix_a_result()
    result["steps"] = result["steps"][:3]
    result.update(
        passed=False,
        end=None,
        e2e_ms=None,
        repetitions=1,
        failure="step 4 (DMS commands cap bank to close) not seen within 2000 ms",
    )
    for key in ("p50", "p90", "p99", "max"):
        del result[key]
    return result


def _assert_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > min_bytes


def test_exports_are_complete() -> None:
    defined_here = {
        name
        for name, obj in vars(report).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == report.__name__
    }
    assert set(report.__all__) == defined_here


def test_summary_table_lists_every_step_and_the_percentiles() -> None:
    table = summary_table(appendix_a_result())
    for name, *_ in _STEPS:
        assert name in table
    assert "n=20  p50=7.50 p90=8.10 p99=9.00 max=9.30 ms" in table
    assert "e2e_ms=7.90" in table
    assert table.rstrip().endswith("PASSED")
    assert "\x1b" not in table  # plain text, no colour codes


def test_summary_table_columns_are_fixed_width() -> None:
    lines = summary_table(appendix_a_result()).splitlines()
    header, rule, *rows = lines[1:11]
    assert header.split() == ["n", "name", "device", "plane", "topic", "t_ms", "hop_ms"]
    # Right-aligned hop_ms column: every row ends at the same column as the header.
    assert {len(row) for row in rows} == {len(header)} == {len(rule)}
    assert rows[2].split()[-2:] == ["1.42", "0.27"]


def test_summary_table_of_a_failed_single_run() -> None:
    table = summary_table(failed_result())
    assert "Meter publishes 114 V" in table
    assert "DMS commands cap bank" not in table.splitlines()[5]
    assert "p50=" not in table
    assert "e2e_ms=-" in table
    assert table.rstrip().endswith(
        "FAILED: step 4 (DMS commands cap bank to close) not seen within 2000 ms"
    )


def test_summary_table_accepts_a_structured_failure() -> None:
    result = failed_result()
    result["failure"] = {"step": 4, "reason": "timeout waiting for capbank-1"}
    assert summary_table(result).rstrip().endswith("FAILED: timeout waiting for capbank-1")


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    path = plot_timeline(appendix_a_result(), tmp_path / "plots" / "timeline.png")
    assert path == tmp_path / "plots" / "timeline.png"
    _assert_png(path)


def test_plot_timeline_of_a_failed_result(tmp_path: Path) -> None:
    _assert_png(plot_timeline(failed_result(), tmp_path / "failed.png"))


def test_plot_timeline_tolerates_unlisted_lanes_and_planes(tmp_path: Path) -> None:
    result = copy.deepcopy(appendix_a_result())
    result["steps"].append(
        {
            "n": 10,
            "name": "Historian archives",
            "device": "dms-1",
            "receivers": ["historian-1", "dms-1"],
            "topic": "fmb/x",
            "plane": "archive",
            "t_ms": 8.0,
            "hop_ms": 0.3,
        }
    )
    _assert_png(plot_timeline(result, tmp_path / "extra.png"))


@pytest.mark.parametrize("build", [appendix_a_result, failed_result])
def test_timeline_labels_do_not_overlap(build: Any) -> None:
    figure = report._timeline_figure(build())
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    figure.draw(renderer)
    boxes = [
        text.get_window_extent(renderer)
        for text in figure.findobj(match=lambda artist: artist.get_gid() == "step-label")
    ]
    assert len(boxes) == len(build()["steps"]) + 1
    for first, second in itertools.combinations(boxes, 2):
        assert not first.overlaps(second)
