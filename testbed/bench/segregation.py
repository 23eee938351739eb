"""The report "when does segregation matter": every bottleneck document of a directory, one Markdown
report with its figures, and a recommendation table derived from the data.

It reads only ``fmb.bench-bottleneck/1`` documents (``bench-cpu.json``, ``bench-broker.json``,
``bench-wan-curve.json``, ``bench-storm.json``, ...), each checked by
:func:`testbed.bench.bottleneck.check` first, so a bad one is refused in one line naming the file.
Per bottleneck and configuration it finds how far (to which load) the command round trip stays
within IEC 61850-5's medium (100 ms) and low (500 ms) speed classes: a point meets a class when its
p99 is under it *and* every command sent was acknowledged (a p99 over the acknowledged ones alone
would flatter a configuration that drops commands). The recommendation is the simplest
configuration (shared, then segregated, then segregated with priority) that holds the tightest
class over every measured load, else the one that holds it furthest; it is computed here, never
written by hand, so it changes when the data does. ``fmb report DIR`` writes it beside the per-file
report when DIR holds such documents.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, cast

from testbed.bench import bottleneck
from testbed.core.errors import TestbedError
from testbed.core.results import (
    BottleneckConfig,
    BottleneckCurve,
    BottleneckPoint,
    BottleneckResult,
    SegregationReach,
    SegregationReport,
    SegregationRow,
)
from testbed.reporting import plots
from testbed.reporting.text import conditions_markdown, markdown_table

__all__ = ["CLASSES_MS", "REPORT_FILE", "REPORT_SCHEMA", "find_documents", "load_documents", "recommend",
           "reach", "report_markdown", "write_report"]

REPORT_SCHEMA: Final = "fmb.segregation-report/1"
REPORT_FILE: Final = "segregation.md"
CLASSES_MS: Final = {"medium": 100.0, "low": 500.0}  # IEC 61850-5 medium and low speed
ORDER: Final[tuple[BottleneckConfig, ...]] = ("shared", "segregated", "segregated+priority")  # simplest first
KEPT_WARNING: Final = 0.8  # the target: a configuration that keeps less is said to cost throughput


def find_documents(paths: Iterable[Path]) -> list[Path]:
    """The bottleneck documents among ``paths``: a file as given, a directory's ``bench-*.json`` whose
    schema is ``fmb.bench-bottleneck/1`` (other benchmarks' results beside them are left alone)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for candidate in sorted(path.glob("bench-*.json")):
                try:
                    schema = json.loads(candidate.read_text()).get("schema")
                except (OSError, ValueError, AttributeError):
                    continue  # not ours to judge: fmb report lists what it could not read
                if schema == bottleneck.RESULT_SCHEMA:
                    found.append(candidate)
        elif path.is_file():
            found.append(path)
        else:
            raise TestbedError(f"{path} does not exist; give bottleneck documents or a directory holding them")
    return found


def load_documents(paths: Sequence[Path]) -> list[BottleneckResult]:
    """Read and check each document; one per bottleneck, in the order cpu, broker, wan, storm."""
    docs: dict[str, tuple[Path, BottleneckResult]] = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise TestbedError(f"cannot read {path}: {e}") from None
        if not isinstance(doc, dict):
            raise TestbedError(f"{path}: not a JSON object (a fmb.bench-bottleneck/1 document)")
        bottleneck.check(doc, str(path))
        for curve in doc["curves"]:
            for point in curve["points"]:
                if not isinstance(point.get("saturated"), bool):
                    raise TestbedError(f"{path}: curve {curve['config']} has a point without saturated: {point!r}")
        if doc["bottleneck"] in docs:
            raise TestbedError(f"{path} and {docs[doc['bottleneck']][0]} are both about the {doc['bottleneck']} "
                               "bottleneck; give one document per bottleneck")
        doc.setdefault("conditions", {})["source_file"] = Path(path).name
        docs[doc["bottleneck"]] = (Path(path), cast(BottleneckResult, doc))
    if not docs:
        raise TestbedError("no fmb.bench-bottleneck/1 document given (bench-cpu.json, bench-broker.json, "
                           "bench-wan-curve.json, bench-storm.json)")
    return [docs[b][1] for b in bottleneck.BOTTLENECKS if b in docs]


def _meets(point: BottleneckPoint, limit_ms: float) -> bool:
    control = point["control_ms"]
    p99 = control.get("p99")
    return p99 is not None and p99 <= limit_ms and control["acked"] == control["sent"] > 0


def reach(curve: BottleneckCurve, limit_ms: float) -> tuple[float | None, bool]:
    """(the heaviest load up to which every point met ``limit_ms``, whether every point did)."""
    if not curve["points"]:
        return None, False  # measured nothing: holds nothing
    last: float | None = None
    for point in curve["points"]:  # lightest first, in either axis direction
        if not _meets(point, limit_ms):
            return last, False
        last = point["load"]
    return last, True


def _reach_row(curve: BottleneckCurve) -> SegregationReach:
    medium, medium_all = reach(curve, CLASSES_MS["medium"])
    low, low_all = reach(curve, CLASSES_MS["low"])
    heaviest = curve["points"][-1] if curve["points"] else None
    return SegregationReach(
        config=curve["config"], medium_up_to=medium, medium_all=medium_all, low_up_to=low, low_all=low_all,
        heaviest_load=heaviest["load"] if heaviest else None,
        heaviest_p99_ms=heaviest["control_ms"].get("p99") if heaviest else None,
        heaviest_delivery_rate=heaviest["delivery_rate"] if heaviest else 0.0)


def _further(a: float | None, b: float | None, falling: bool) -> bool:
    """Whether load ``a`` is further (heavier) than ``b``; None is short of every load."""
    if a is None:
        return False
    if b is None:
        return True
    return a < b if falling else a > b


def _number(value: float) -> str:
    """A load as a reader writes it: 11,840 or 0.5, never 1.184e+04."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _load(value: float | None, doc: BottleneckResult) -> str:
    if value is None:
        return "not even at the lightest load"
    word = "down to" if doc["load_axis"] == "falling" else "up to"
    return f"{word} {_number(value)} {doc['load_unit']}"


def _recommend(doc: BottleneckResult, rows: list[SegregationReach]) -> tuple[BottleneckConfig | None, str]:
    falling = doc["load_axis"] == "falling"
    by = {r["config"]: r for r in rows}
    for cls in ("medium", "low"):
        limit = f"{CLASSES_MS[cls]:g} ms"
        holding = [c for c in ORDER if c in by and by[c][f"{cls}_all"]]  # type: ignore[literal-required]
        if holding:
            choose = holding[0]
            others = [f"{c} {_held(by[c][f'{cls}_up_to'], doc)}"  # type: ignore[literal-required]
                      for c in ORDER if c in by and ORDER.index(c) < ORDER.index(choose)]
            heaviest = by[choose]["heaviest_load"]
            text = (f"{choose}: holds p99 <= {limit} at every measured load ({_load(heaviest, doc)})"
                    + (f"; {'; '.join(others)}" if others else "; segregation is not needed at these loads"
                       if choose == "shared" else ""))
            if cls == "low":
                text = f"no configuration holds {CLASSES_MS['medium']:g} ms at every load; " + text
            return choose, text + _delivery_cost(choose, by)
    # Nothing holds even the low class everywhere: the one that holds the medium class furthest.
    best: BottleneckConfig | None = None
    for c in ORDER:
        if c in by and _further(by[c]["medium_up_to"], by[best]["medium_up_to"] if best else None, falling):
            best = c
    if best is None:
        for c in ORDER:
            if c in by and _further(by[c]["low_up_to"], by[best]["low_up_to"] if best else None, falling):
                best = c
    if best is None:
        return None, (f"no configuration holds {CLASSES_MS['low']:g} ms even at the lightest load: "
                      "none is fit for control at this bottleneck")
    return best, (f"no configuration holds {CLASSES_MS['low']:g} ms at every load; {best} holds "
                  f"{CLASSES_MS['medium']:g} ms furthest ({_load(by[best]['medium_up_to'], doc)}) and "
                  f"{CLASSES_MS['low']:g} ms {_load(by[best]['low_up_to'], doc)}" + _delivery_cost(best, by))


def _held(up_to: float | None, doc: BottleneckResult) -> str:
    return "holds it not even at the lightest load" if up_to is None else f"only {_load(up_to, doc)}"


def _delivery_cost(choose: BottleneckConfig, by: dict[BottleneckConfig, SegregationReach]) -> str:
    """What the chosen configuration costs the delivery plane at the heaviest load, when it is much."""
    best = max((r["heaviest_delivery_rate"] for r in by.values()), default=0.0)
    kept = by[choose]["heaviest_delivery_rate"] / best if best > 0 else 1.0
    if kept < KEPT_WARNING:
        return (f" (at the heaviest load its delivery plane carries {kept:.0%} of the best configuration's "
                f"{best:,.0f} msg/s)")
    return ""


def recommend(docs: Sequence[BottleneckResult]) -> list[SegregationRow]:
    """Per bottleneck: how far each configuration holds each class, and the configuration to choose."""
    rows = []
    for doc in docs:
        curves = sorted(doc["curves"], key=lambda c: ORDER.index(c["config"]))
        reaches = [_reach_row(c) for c in curves]
        choose, text = _recommend(doc, reaches)
        rows.append(SegregationRow(bottleneck=doc["bottleneck"], load_unit=doc["load_unit"],
                                   load_axis=doc["load_axis"], source=str(doc["conditions"].get("source_file", "")),
                                   reach=reaches, choose=choose, recommendation=text))
    return rows


def _reach_cell(up_to: float | None, every: bool, row: SegregationRow) -> str:
    if up_to is None:
        return "none"
    sign = "≥" if row["load_axis"] == "falling" else "≤"
    return f"{sign} {_number(up_to)}" + (" (every load)" if every else "")


def report_markdown(docs: Sequence[BottleneckResult], rows: Sequence[SegregationRow],
                    figures: dict[str, str] | None = None) -> str:
    """The report: recommendation table, figures, then each bottleneck's targets and conditions."""
    table = [[plots.BOTTLENECK_TITLES.get(row["bottleneck"], row["bottleneck"]) if i == 0 else "",
              r["config"], _reach_cell(r["medium_up_to"], r["medium_all"], row),
              _reach_cell(r["low_up_to"], r["low_all"], row), r["heaviest_p99_ms"], r["heaviest_delivery_rate"],
              f"**{row['recommendation']}**" if i == 0 else ""]
             for row in rows for i, r in enumerate(row["reach"])]
    out = ["# When does segregation matter\n\n",
           "Derived by `testbed/bench/segregation.py` from the bottleneck documents listed below "
           f"(`{bottleneck.RESULT_SCHEMA}`); nothing was re-measured and no verdict is written by hand. A "
           "configuration *holds* a class up to a load when every point up to it had command p99 under the class "
           "and every command acknowledged (IEC 61850-5: medium speed 100 ms, low speed 500 ms).\n\n",
           "## Recommendation\n\n",
           markdown_table(["bottleneck", "configuration", "p99 ≤ 100 ms up to (load)", "p99 ≤ 500 ms up to (load)",
                           "p99 ms at the heaviest load", "delivery msg/s at the heaviest load", "recommendation"],
                          table),
           "\nLoads in each document's unit: "
           + "; ".join(f"{row['bottleneck']}: {row['load_unit']}"
                       + (" (smaller is heavier)" if row["load_axis"] == "falling" else "") for row in rows) + ".\n"]
    for name, path in (figures or {}).items():
        out.append(f"\n![{name}]({path})\n")
    for doc in docs:
        t = doc["targets"]
        cond = doc["conditions"]
        out.append(f"\n## {plots.BOTTLENECK_TITLES.get(doc['bottleneck'], doc['bottleneck'])} — "
                   f"`{cond.get('source_file', '')}`\n\n")
        if cond.get("note"):
            out.append(f"**Note from the source: {cond['note']}**\n\n")
        if cond.get("label"):
            out.append(f"{cond['label']}.\n\n")
        out.append(markdown_table(
            ["issue 13 target, at saturation", "value", "met"],
            [[f"{t['segregated_config']} p99 ≤ 2 × its idle p99", t["segregated_saturation_over_idle"],
              t["met"].get("segregated_saturation_over_idle")],
             [f"shared ÷ {t['segregated_config']} p99 ≥ 10", t["shared_over_segregated"],
              t["met"].get("shared_over_segregated")],
             ["delivery plane keeps ≥ 80 % of its unsaturated rate", t["delivery_kept"],
              t["met"].get("delivery_kept")]]))
        out.append("\n<details><summary>Conditions and environment</summary>\n\n" + conditions_markdown(doc)
                   + "\n</details>\n")
    return "".join(out)


def write_report(docs: Sequence[BottleneckResult], out: Path) -> Path:
    """``out/segregation.md`` with its figures (PNG) and ``out/segregation.json`` (the table as data)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = recommend(docs)
    figures: dict[str, str] = {}
    for name, figure in (("control", plots.segregation_control(docs)),
                         ("delivery", plots.segregation_delivery(docs))):
        png = out / f"segregation-{name}.png"
        figure.savefig(png, format="png")
        figures[f"when does segregation matter: {name}"] = png.name
    report = SegregationReport(schema=REPORT_SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               rows=rows)
    (out / "segregation.json").write_text(json.dumps(report, indent=2) + "\n")
    path = out / REPORT_FILE
    path.write_text(report_markdown(docs, rows, figures))
    return path

