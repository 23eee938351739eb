"""Shared fixtures: one PKI and one running bus of real Mosquitto processes per test session.

The bus runs on ports the kernel hands out, in a temporary state directory, so the tests can
run beside a bus a developer has up. Tests that need something the machine lacks skip with the
reason, except under CI (``CI`` set), where they fail instead: a green CI must mean they ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.bus import LocalBus
from testbed.cli import ensure_pki
from testbed.pki import PKI
from testbed.runner import ScenarioRunner
from testbed.scenario import Scenario, load_scenario
from testbed.topology import Topology, load_topology


def require(condition: bool, reason: str) -> None:
    """Skip the test for ``reason`` unless CI is set, where a missing prerequisite fails."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def topology() -> Topology:
    return load_topology().with_free_ports()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, topology: Topology) -> PKI:
    return ensure_pki(topology, tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def bus(tmp_path_factory: pytest.TempPathFactory, topology: Topology, pki: PKI) -> Iterator[LocalBus]:
    require(shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
            "mosquitto is not installed (apt-get install mosquitto)")
    bus = LocalBus(topology, pki, tmp_path_factory.mktemp("state"))
    bus.start()
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture(scope="session")
def appendix_a(topology: Topology) -> Scenario:
    return load_scenario("appendix-a", {d.id: d.role for d in topology.devices})


@pytest.fixture
def run_scenario(bus: LocalBus, appendix_a: Scenario):  # type: ignore[no-untyped-def]
    """Run Appendix A ``repeat`` times on the session bus; returns the result dict."""
    def run(repeat: int = 1, out: Path | None = None) -> dict:
        with ScenarioRunner(bus, appendix_a) as runner:
            return runner.run(repeat, out)
    return run


# -- evidence for `fmb profile`: the last outcome of every test, by node id --------------------

_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Merge this run's outcomes into var/evidence/test-results.json (read by `fmb profile`)."""
    import datetime as dt
    import json

    if not _OUTCOMES:
        return
    path = Path(os.environ.get("FMB_EVIDENCE", Path(__file__).resolve().parent.parent / "var" / "evidence"
                               / "test-results.json"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(path.read_text()) if path.exists() else {}
        results = old.get("results", {})
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        results.update({node: {"outcome": outcome, "at": now} for node, outcome in _OUTCOMES.items()})
        path.write_text(json.dumps({"schema": "fmb.test-evidence/1", "updated": now, "results": results}, indent=1))
    except OSError:
        pass  # evidence is a convenience for the profile; never fail a test run over it
