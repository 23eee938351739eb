"""The chaos soak in CI (issue 11): two minutes of faults on a local Appendix A bus, every message accounted for.

One soak of :data:`MINUTES` runs for the whole module (``fmb bench soak``'s own code, on a bus of real Mosquitto
processes started on free ports), with the seed :data:`SEED`, whose schedule strikes each kind the local backend
can apply in its first round (broker SIGTERM and ``kill -9`` of the data-centre control broker, which the data
centre -> field streams are published to, a device crash, a poison). The tests then read its result: the ledger
is complete, the invariants that hold on main hold, and those that do not hold yet are *reported* (their fault,
stream and counts in the result and the report), not hidden. The local backend cannot partition or impair a link:
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
BUDGET_S = 165  # the whole soak, bus start and stop included: two minutes of faults and some margin on 2 busy cores
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


def test_the_invariants_that_hold_on_main_are_kept(soak: tuple[SoakResult, Path, float]) -> None:
    result, _, _ = soak
    checked = Counter((i["invariant"], i["kind"]) for i in result["invariants"])
    assert checked[("no-loss", "no fault")] == 4
    assert checked[("appendix-a-after-recovery", "device-crash")] >= 1
    for kind in ("no fault", "device-crash", "poison"):
        broken = [i for i in _invariants(result, kind=kind) if not i["holds"]]
        assert broken == [], broken
    # Every graceful recovery: the first Appendix A run afterwards passes, within the scenario's own limits.
    broken = [i for i in _invariants(result, invariant="appendix-a-after-recovery")
              if not i["holds"] and i["kind"] != "broker-kill9"]
    assert broken == [], broken
    # A broker restart the stream does not cross loses nothing of it, whatever its QoS; nor does a SIGTERM of
    # the broker a QoS 1 stream crosses (Mosquitto saves on the way out; paho resends what was in flight).
    for i in _invariants(result, invariant="no-loss", kind="broker-sigterm"):
        if i["stream"].endswith("q1") or "crosses" not in i["detail"]:
            assert i["holds"], i
    # A poison is set aside by the device that reads it, and the soak goes on.
    for f in (f for f in result["faults"] if f["kind"] == "poison"):
        assert f["detail"]["set_aside_by"], f


def test_invariants_that_do_not_hold_yet_are_reported(soak: tuple[SoakResult, Path, float]) -> None:
    """Reported, not asserted to hold: the lead tightens these to ``holds`` once the fixes named below are merged."""
    result, out, _ = soak
    # QoS 2 across a restart of the broker the QoS 2 publisher is connected to (dc->field q2 publishes to
    # dc-control): stock paho with a clean session can lose a message it reported delivered. Expected to hold with
    # the QoS 2 engineer's fix (testbed/transport/: ReliableClient and exactly_once sessions, picked up here
    # through testbed.bench.recovery.Producer and testbed.transport.mqtt.connect).
    sigterm = _invariants(result, invariant="no-loss", kind="broker-sigterm", stream="dc->field q2")
    # kill -9 of a persistent broker: at most the crash window (the topology's autosave_interval_s, 60 s, by
    # default). Expected to narrow with the crash-loss engineer's persistence policy per broker (run the soak with
    # --crash-window-s set to the policy's window then).
    crash = _invariants(result, invariant="crash-loss-within-window", kind="broker-kill9")
    # After a kill -9 of dc-delivery within its first autosave interval the DMS's session is gone, and the first
    # Appendix A run has failed to reach the initial state in 15 s (a 10-minute soak; not this seed's schedule):
    # expected to hold with the crash-loss engineer's persistence policy (a session saved within a second).
    crash += _invariants(result, invariant="appendix-a-after-recovery", kind="broker-kill9")
    assert sigterm and crash, "the seed's schedule no longer strikes dc-control with both; pick a seed that does"
    for i in sigterm + crash:
        assert i["fault"] is not None and i["detail"] and i["counts"]
    for i in sigterm + [i for i in crash if i["invariant"] == "crash-loss-within-window"]:
        assert set(i["counts"]) >= {"published", "delivered", "lost", "unacknowledged", "duplicated", "reordered"}
        assert i["counts"]["published"] > 0
        if i["invariant"] == "crash-loss-within-window":
            assert i["counts"]["bound"] is not None and i["counts"]["crash_window_s"] == 60
    # Whatever does not hold is counted and shown with its evidence in the report.
    broken = [i for i in result["invariants"] if not i["holds"]]
    assert result["violations"] == len(broken)
    from testbed.reporting.render import render_run  # matplotlib: only here

    report = render_run(out)
    text = report.path.read_text()
    assert len(report.figures) == 2 and not report.skipped
    assert f"{result['violations']} violated" in text
    for i in broken:
        assert f"| {i['fault']} | {i['kind']} | {i['invariant']} | {i['stream']} |" in text


def test_bad_options_are_one_line_before_anything_starts(tmp_path: Path) -> None:
    for args, message in ((["--minutes", "0"], "--minutes is 0"), (["--rate", "0"], "--rate is 0"),
                          (["--crash-window-s", "-1"], "--crash-window-s is -1")):
        done = subprocess.run([sys.executable, "-m", "testbed", "bench", "soak", *args, "--out", str(tmp_path / "x"),
                               "--state", str(tmp_path / "state"), "--certs", str(tmp_path / "certs")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert not (tmp_path / "certs").exists() and not (tmp_path / "x").exists()
