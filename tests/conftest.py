"""Shared fixtures: one PKI and one running bus of real Mosquitto processes per test session.

They are the ``fmb`` pytest plugin's (``testbed/pytest_plugin.py``, loaded by its entry point),
under the names the tests have always used. The bus runs on ports the kernel hands out, in a
temporary state directory, so the tests can run beside a bus a developer has up. Tests that need
something the machine lacks skip with the reason, except under CI (``CI`` set), where they fail
instead: a green CI must mean they ran.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.core.scenario import Scenario, load_scenario
from testbed.core.topology import Topology
from testbed.core.waiting import wait_until
from testbed.harness.recorder import Recorder
from testbed.pytest_plugin import require, settings  # noqa: F401 (tests import require from here)


def _local_only(request: pytest.FixtureRequest, name: str):  # type: ignore[no-untyped-def]
    """The plugin's fixture ``name``, for tests that drive the local processes themselves."""
    if settings(request.config).backend != "local":
        pytest.skip("drives the bus's local processes; runs with --fmb-backend local")
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def topology(request: pytest.FixtureRequest) -> Topology:
    return _local_only(request, "fmb_topology")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def pki(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return _local_only(request, "fmb_pki")


@pytest.fixture(scope="session")
def bus(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return _local_only(request, "fmb_bus")


def wait_log(path: Path, start: int, needle: str, timeout_s: float = 5) -> str:
    """The text of ``path`` from character ``start`` on, once ``needle`` is in it (a device's log)."""
    def text() -> str:
        new = path.read_text()[start:]
        return new if needle in new else ""

    return wait_until(text, timeout_s, what=lambda: f"no {needle!r} in {path} within {timeout_s:g} s; "
                                                    f"it has: {path.read_text()[start:][-2000:]}")


@pytest.fixture(scope="session")
def appendix_a(fmb_topology: Topology) -> Scenario:
    return load_scenario("appendix-a", {d.id: d.role for d in fmb_topology.devices})


@pytest.fixture
def recorder(bus) -> Iterator[Recorder]:  # type: ignore[no-untyped-def]
    """A recorder on every broker of the session's bus, for tests that watch what crosses it."""
    endpoints = {b.name: bus.endpoint(b.name) for b in bus.topology.brokers}
    rec = Recorder(bus.topology, bus.identity("recorder"), endpoints)
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture
def run_scenario(fmb_run):  # type: ignore[no-untyped-def]
    """Run Appendix A ``repeat`` times on the session bus; returns the result (a dict)."""
    def run(repeat: int = 1, out: Path | None = None) -> dict:
        return fmb_run("appendix-a", repeat, out=out)  # type: ignore[no-any-return]
    return run


# -- evidence for `fmb profile`: the last outcome of every test, by node id --------------------

_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Merge this run's outcomes into var/evidence/test-results.json (read by `fmb profile`)."""
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
