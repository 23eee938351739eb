"""The chaos soak in CI (issue 11): two minutes of faults on a local Appendix A bus, every message accounted for.

One soak of :data:`MINUTES` runs for the whole module (``fmb bench soak``'s own code, on a bus of real Mosquitto
processes started on free ports), with the seed :data:`SEED`, whose schedule strikes each kind the local backend
can apply in its first round (broker SIGTERM and ``kill -9`` of the data-centre control broker, which the data
centre -> field streams are published to, a device crash, a poison). The tests then read its result: the ledger
is complete and every invariant holds (since the QoS 2 fix and the data centre's persistence policy; the committed
fixture, a run from before them, shows how a violation is reported: its fault, stream and counts in the result and
the report, never hidden). The local backend cannot partition or impair a link:
the result says so (the docker soak, ``fmb bench soak --backend docker``, applies them).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from testbed.bench.soak import FAULT_KINDS, LEDGER_FILE, RESULT_FILE, fault_targets, local_soak, plan, stream_specs
from testbed.core.results import SoakResult
from tests.conftest import require

MINUTES = 2.0
SEED = 19  # first round: SIGTERM of dc-control, crash of meter-1, a poison to the DMS, kill -9 of dc-control
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The whole soak, bus start and stop included: two minutes of faults and a margin on 2 busy cores (172 s seen
# beside a benchmark).
BUDGET_S = 210
LOCAL_KINDS = {"broker-sigterm", "broker-kill9", "device-crash", "poison"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def soak(pki: Any, topology: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[SoakResult, Path, float]:
    require(shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
            "mosquitto is not installed (sudo apt-get install mosquitto)")
    out = tmp_path_factory.mktemp("soak")
    started = time.monotonic()
    result = local_soak(topology, pki, MINUTES, SEED, out, progress=print)
    return result, out, time.monotonic() - started


def _invariants(result: SoakResult, **where: Any) -> list[dict[str, Any]]:
    return [dict(i) for i in result["invariants"] if all(i.get(k) == v for k, v in where.items())]


def test_two_minutes_of_every_local_fault_fit_in_ci(soak: tuple[SoakResult, Path, float]) -> None:
    result, out, elapsed = soak
    assert elapsed < BUDGET_S, f"the soak took {elapsed:.0f} s"
    assert json.loads((out / RESULT_FILE).read_text()) == json.loads(json.dumps(result))
    kinds = Counter(f["kind"] for f in result["faults"])
    assert set(kinds) == LOCAL_KINDS, kinds
    assert all(f["error"] is None for f in result["faults"]), [f["error"] for f in result["faults"]]
    # What the local backend cannot do is said, with the fault API's reason, not silently left out.
    assert set(result["conditions"]["unavailable"]) == {"partition", "link-loss"}
    assert all("--backend docker" in why for why in result["conditions"]["unavailable"].values())
    assert set(result["conditions"]["fault_kinds"]) | {"partition", "link-loss"} == set(FAULT_KINDS)
    # Appendix A really repeated between faults, and passed there.
    quiet = [r for r in result["appendix_a"] if r["after_fault"] is None]
    assert len(quiet) >= 10 and all(r["passed"] for r in quiet), [r["failure"] for r in quiet if not r["passed"]]


def test_the_schedule_is_the_seeds(soak: tuple[SoakResult, Path, float], topology: Any) -> None:
    result, _, _ = soak
    targets = fault_targets(topology, stream_specs(topology))
    assert result["conditions"]["targets"] == targets
    planned = plan(SEED, result["conditions"]["fault_kinds"], targets)
    assert planned == plan(SEED, result["conditions"]["fault_kinds"], targets)
    assert planned != plan(SEED + 1, result["conditions"]["fault_kinds"], targets)
    applied = [(f["kind"], f["target"], f["downtime_s"]) for f in result["faults"]]
    assert applied == [(p.kind, p.target, p.downtime_s) for p in planned[:len(applied)]]


def test_every_message_is_accounted_for(soak: tuple[SoakResult, Path, float]) -> None:
    result, out, _ = soak
    assert result["ledger_complete"]
    assert {(s["direction"], s["qos"]) for s in result["streams"]} == {
        ("field->dc", 1), ("field->dc", 2), ("dc->field", 1), ("dc->field", 2)}
    rows = list(csv.DictReader((out / LEDGER_FILE).open()))
    for s in result["streams"]:
        assert s["complete"] and s["unexpected"] == 0
        assert s["sent"] >= 0.8 * result["conditions"]["rate_per_s"] * MINUTES * 60, s  # it flowed all along
        assert s["sent"] == s["delivered"] + s["lost"] + s["unacknowledged"]
        mine = [r for r in rows if r["stream"] == s["name"]]
        assert [int(r["seq"]) for r in mine] == list(range(s["first_seq"], s["first_seq"] + s["sent"]))
        states = Counter(r["state"] for r in mine)
        assert states == Counter({k: v for k, v in (("delivered", s["delivered"]), ("lost", s["lost"]),
                                                     ("unacknowledged", s["unacknowledged"])) if v})
        assert sum(int(r["receipts"]) for r in mine) == s["received"]
        # Every message in exactly one window, and the windows add up to the stream.
        ledger = [r for r in result["ledger"] if r["stream"] == s["name"]]
        assert len(ledger) == len(result["faults"]) + 1
        for key, total in (("published", s["sent"]), ("lost", s["lost"]), ("duplicated", s["duplicated"]),
                           ("unacknowledged", s["unacknowledged"]), ("reordered", s["reordered"])):
            assert sum(r[key] for r in ledger) == total, key
        windows = Counter(r["window"] for r in mine)
        assert windows == Counter({r["window"]: r["published"] for r in ledger if r["published"]})


def test_every_invariant_holds_on_main(soak: tuple[SoakResult, Path, float]) -> None:
    result, out, _ = soak
    checked = Counter((i["invariant"], i["kind"]) for i in result["invariants"])
    assert checked[("no-loss", "no fault")] == 4
    for kind in LOCAL_KINDS:
        assert checked[("appendix-a-after-recovery", kind)] >= 1, kind
    assert checked[("crash-loss-within-window", "broker-kill9")] >= 2  # the two dc->field streams cross dc-control
    # Held since the QoS 2 fix (testbed/transport/reliable.py, exactly_once sessions for QoS 2 publishers, merged
    # from the qos2 branch): before it, a SIGTERM of dc-control lost 9 of 59 dc->field q2 messages that paho had
    # reported delivered (tests/fixtures/bench-soak.json). Held since the persistence policy per broker (the data
    # centre snapshots every 500 ms, merged from the crash branch): before it, a kill -9 of dc-delivery within its
    # first 60 s lost 17 messages of each field->dc stream and Appendix A needed 16 s to pass again.
    broken = [i for i in result["invariants"] if not i["holds"]]
    assert broken == [] and result["violations"] == 0, broken
    for i in _invariants(result, invariant="crash-loss-within-window"):
        assert i["counts"]["crash_window_s"] == 0.5 and i["counts"]["bound"], i  # the topology's policy
    # A poison is set aside by the device that reads it, and the soak goes on.
    for f in (f for f in result["faults"] if f["kind"] == "poison"):
        assert f["detail"]["set_aside_by"], f
    from testbed.reporting.render import render_run  # matplotlib: only here

    report = render_run(out)
    assert len(report.figures) == 2 and not report.skipped
    assert "0 violated" in report.path.read_text()


def test_a_violation_is_reported_with_its_evidence(tmp_path: Path) -> None:
    """The committed fixture is a real 1.5-minute soak of this seed from before the QoS 2 fix: its violation is in
    the result with its fault, stream and counts, and in the report's Violations table."""
    from testbed.reporting.render import render_run  # matplotlib: only here

    result = json.loads((FIXTURES / "bench-soak.json").read_text())
    broken = [i for i in result["invariants"] if not i["holds"]]
    assert result["violations"] == len(broken) == 1
    (i,) = broken
    assert (i["fault"], i["kind"], i["invariant"], i["stream"]) == (1, "broker-sigterm", "no-loss", "dc->field q2")
    assert i["counts"]["lost"] == 9 and i["counts"]["published"] == 59 and "dc-control" in i["detail"]
    row = next(r for r in result["ledger"] if r["fault"] == 1 and r["stream"] == "dc->field q2")
    assert row["lost"] == 9
    (tmp_path / "bench-soak.json").write_text(json.dumps(result))
    text = render_run(tmp_path).path.read_text()
    assert "1 violated" in text
    assert "| 1 | broker-sigterm | no-loss | dc->field q2 | published 59, delivered 50, lost 9 |" in text


def test_bad_options_are_one_line_before_anything_starts(tmp_path: Path) -> None:
    for args, message in ((["--minutes", "0"], "--minutes is 0"), (["--rate", "0"], "--rate is 0"),
                          (["--crash-window-s", "-1"], "--crash-window-s is -1")):
        done = subprocess.run([sys.executable, "-m", "testbed", "bench", "soak", *args, "--out", str(tmp_path / "x"),
                               "--state", str(tmp_path / "state"), "--certs", str(tmp_path / "certs")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert not (tmp_path / "certs").exists() and not (tmp_path / "x").exists()
