"""The report "when does segregation matter" from the committed bottleneck documents: it renders, its
recommendation table is computed from the data (a changed copy changes it), a bad document is refused in
one line; and the CPU-bound document is the committed prioritization result, converted."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.bench import bottleneck, cpubound, segregation
from testbed.cli.fmb import main
from testbed.core.errors import TestbedError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def _fixture_documents() -> list[Path]:
    return segregation.find_documents([FIXTURES])


def _cpu() -> dict[str, Any]:
    return json.loads((FIXTURES / "bench-cpu.json").read_text())


def _curve(doc: dict[str, Any], config: str) -> dict[str, Any]:
    return next(c for c in doc["curves"] if c["config"] == config)


def _row(doc: dict[str, Any]) -> Any:
    (row,) = segregation.recommend([doc])  # type: ignore[list-item]
    return row


def test_the_committed_documents_are_bottleneck_documents() -> None:
    names = {p.name for p in _fixture_documents()}
    assert names == {"bench-cpu.json", "bench-broker.json", "bench-wan-curve.json", "bench-storm.json"}
    for path in _fixture_documents():
        bottleneck.check(json.loads(path.read_text()), path.name)


def test_fmb_report_renders_the_report_from_the_fixtures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in _fixture_documents():
        shutil.copy(path, tmp_path / path.name)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr()
    assert "when does segregation matter" in capsys.readouterr().out
    text = (tmp_path / "segregation.md").read_text()
    assert text.startswith("# When does segregation matter") and "IEC 61850-5" in text
    for name in ("segregation-control.png", "segregation-delivery.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
        assert f"]({name})" in text
    # The table on disk is the one computed from the documents, a row per bottleneck.
    docs = segregation.load_documents(_fixture_documents())
    table = json.loads((tmp_path / "segregation.json").read_text())
    assert table["schema"] == segregation.REPORT_SCHEMA
    assert [r["bottleneck"] for r in table["rows"]] == [d["bottleneck"] for d in docs]
    assert [r["recommendation"] for r in table["rows"]] == [r["recommendation"] for r in segregation.recommend(docs)]
    for row in table["rows"]:
        assert f"**{row['recommendation']}**" in text
    assert "CPU-bound" in text  # the converted fixture says what it is
    assert "bench-cpu-curves.png" in (tmp_path / "report.md").read_text()  # and each document on its own


def test_the_recommendation_follows_the_data() -> None:
    doc = _cpu()
    row = _row(doc)
    reach = {r["config"]: r for r in row["reach"]}
    shared, segregated = _curve(doc, "shared"), _curve(doc, "segregated")
    # Read off the fixture (a quiet run on two shared cores): every configuration kept every command's
    # p99 under 100 ms at every flood its publishers could send, so the simplest, shared, is enough.
    last_shared = shared["points"][-1]["control_ms"]
    assert max(p["control_ms"]["p99"] for p in shared["points"]) <= 100 and reach["shared"]["medium_all"]
    assert reach["segregated"]["medium_all"] and max(p["control_ms"]["p99"] for p in segregated["points"]) <= 100
    assert row["choose"] == "shared" and "not needed" in row["recommendation"]

    # Shared past 100 ms at its heaviest load: segregated is chosen, and how far shared holds is read off.
    busy = copy.deepcopy(doc)
    _curve(busy, "shared")["points"][-1]["control_ms"]["p99"] = 250.0
    busy_row = _row(busy)
    busy_reach = {r["config"]: r for r in busy_row["reach"]}
    assert busy_reach["shared"]["medium_all"] is False
    assert busy_reach["shared"]["medium_up_to"] == shared["points"][-2]["load"]
    assert busy_row["choose"] == "segregated"
    assert busy_row["recommendation"].startswith("segregated: holds p99 <= 100 ms")
    assert f"shared only up to {shared['points'][-2]['load']:,.0f} msg/s" in busy_row["recommendation"]

    # Shared keeps every command fast: shared is enough, and the table says so.
    calm = copy.deepcopy(doc)
    for p in _curve(calm, "shared")["points"]:
        p["control_ms"].update(p99=5.0, acked=p["control_ms"]["sent"], lost=0)
    assert _row(calm)["choose"] == "shared" and "not needed" in _row(calm)["recommendation"]

    # Every configuration at 300 ms under the heaviest load: none holds 100 ms; the simplest that holds 500 ms
    # with every command acknowledged is chosen.
    slow = copy.deepcopy(doc)
    for curve in slow["curves"]:
        curve["points"][-1]["control_ms"]["p99"] = 300.0
    slow_row = _row(slow)
    assert all(not r["medium_all"] for r in slow_row["reach"])
    expected = "shared" if last_shared["lost"] == 0 else "segregated"
    assert slow_row["choose"] == expected
    assert slow_row["recommendation"].startswith(f"no configuration holds 100 ms at every load; {expected}: holds")

    # A command lost at the lightest load: that configuration holds nothing, whatever its p99 (with
    # shared past 100 ms, as above, the choice moves past segregated to segregated+priority).
    lossy = copy.deepcopy(busy)
    first = _curve(lossy, "segregated")["points"][0]["control_ms"]
    first.update(acked=first["sent"] - 1, lost=1)
    lossy_reach = {r["config"]: r for r in _row(lossy)["reach"]}
    assert lossy_reach["segregated"]["medium_up_to"] is None and lossy_reach["segregated"]["low_up_to"] is None
    assert _row(lossy)["choose"] == "segregated+priority"


def test_a_falling_load_axis_reads_down_to() -> None:
    doc = _cpu()
    doc["load_axis"] = "falling"
    for curve in doc["curves"]:
        curve["points"].reverse()
    row = _row(doc)
    assert "down to" in row["recommendation"] or "every measured load" in row["recommendation"]
    bottleneck.check(doc, "falling")


def _write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda d: d.update(schema="fmb.bench-bottleneck/0"), "schema is 'fmb.bench-bottleneck/0'"),
    (lambda d: d.update(bottleneck="disk"), "bottleneck 'disk' is not one of"),
    (lambda d: d.update(curves=[]), "it has no curves"),
    (lambda d: d["curves"][0]["points"].reverse(), "are not ordered from the lightest load"),
    (lambda d: d["curves"][0]["points"][0].pop("delivery_rate"), "a point without load, control_ms"),
    (lambda d: d["curves"][0]["points"][0].pop("saturated"), "a point without saturated"),
])
def test_a_bad_document_is_refused_in_one_line(tmp_path: Path, mutate: Any, error: str) -> None:
    doc = _cpu()
    mutate(doc)
    path = _write(tmp_path, "bench-bad.json", doc)
    with pytest.raises(TestbedError, match=error.replace("(", r"\(").replace("'", "'")) as caught:
        segregation.load_documents([path])
    assert "\n" not in str(caught.value) and "bench-bad.json" in str(caught.value)


def test_fmb_report_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    doc = _cpu()
    doc["curves"][0]["points"].reverse()
    _write(tmp_path, "bench-cpu.json", doc)
    run = subprocess.run([sys.executable, "-m", "testbed", "report", str(tmp_path)], capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "bench-cpu.json" in lines[0] and "not ordered" in lines[0], run.stderr


def test_two_documents_of_one_bottleneck_are_refused(tmp_path: Path) -> None:
    a, b = _write(tmp_path, "bench-a.json", _cpu()), _write(tmp_path, "bench-b.json", _cpu())
    with pytest.raises(TestbedError, match="both about the cpu bottleneck"):
        segregation.load_documents([a, b])
    with pytest.raises(TestbedError, match="does not exist"):
        segregation.find_documents([tmp_path / "nowhere"])
    with pytest.raises(TestbedError, match="no fmb.bench-bottleneck/1 document"):
        segregation.load_documents([])


def test_the_cpu_document_is_the_prioritization_fixture_converted() -> None:
    source = cpubound.load_prioritization(FIXTURES / "bench-prioritization.json")
    converted = cpubound.from_prioritization(source, "bench-prioritization.json")
    committed = _cpu()
    assert {k: v for k, v in converted.items() if k != "created"} == {
        k: v for k, v in committed.items() if k != "created"}
    assert committed["bottleneck"] == "cpu" and "CPU-bound" in committed["conditions"]["label"]
    # Each step at the rate its publishers sent, ordered by it; the unthrottled step the one saturated point.
    for config, rows in source["results"].items():
        curve = _curve(committed, config)
        points = {p["load"]: p for p in curve["points"]}
        assert sorted(points) == [p["load"] for p in curve["points"]] == sorted(r["sent_rate"] for r in rows)
        for r in rows:
            assert points[r["sent_rate"]]["saturated"] == (r["offered_rate"] == "max")
            assert points[r["sent_rate"]]["delivery_rate"] == r["achieved_rate"]
        assert curve["idle_p99_ms"] == rows[0]["control_ms"]["p99"]


def test_a_file_that_is_not_a_prioritization_result_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="not fmb.bench-prioritization/1"):
        cpubound.load_prioritization(FIXTURES / "bench-cpu.json")
    broken = json.loads((FIXTURES / "bench-prioritization.json").read_text())
    broken["results"]["shared"][0].pop("control_ms")
    with pytest.raises(TestbedError, match="a step without offered_rate"):
        cpubound.from_prioritization(broken)
    broken["results"] = {"mesh": []}
    with pytest.raises(TestbedError, match="configuration 'mesh' is not one of"):
        cpubound.from_prioritization(broken)


def test_fmb_bench_cpu_converts_or_says_why_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cpu", "--out", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.strip() == ("fmb: error: cpu converts a prioritization result: give --from "
                                               "bench-prioritization.json")
    assert main(["bench", "cpu", "--from", str(FIXTURES / "bench-storm.json"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds 'fmb.bench-bottleneck/1', not fmb.bench-prioritization/1" in err
    assert not (tmp_path / "x").exists()  # nothing written for a refused input


def test_a_curve_without_points_holds_nothing() -> None:
    doc = _cpu()
    _curve(doc, "shared")["points"] = []
    reach = {r["config"]: r for r in _row(doc)["reach"]}
    assert reach["shared"]["medium_up_to"] is None and reach["shared"]["medium_all"] is False
    assert reach["shared"]["heaviest_load"] is None and _row(doc)["choose"] == "segregated"
