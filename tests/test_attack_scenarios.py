"""The attack scenarios of scenarios/ run like Appendix A: the detection fires, the attack does
nothing it should not, and Appendix A passes afterwards.

They run on a bus of their own (with its monitor), because the monitor reports the same alert
at most once per 30 s and other tests raise the same kinds of alert on the session bus.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.bus import LocalBus
from testbed.pki import PKI
from testbed.report import summary_table
from testbed.runner import ScenarioRunner
from testbed.scenario import load_scenario
from testbed.topology import Topology
from tests.conftest import require

ATTACKS = ["attack-forged-command", "attack-replayed-command", "attack-false-low-voltage"]


@pytest.fixture(scope="module")
def attack_bus(tmp_path_factory: pytest.TempPathFactory, topology: Topology, pki: PKI) -> Iterator[LocalBus]:
    require(shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
            "mosquitto is not installed (apt-get install mosquitto)")
    bus = LocalBus(topology.with_free_ports(), pki, tmp_path_factory.mktemp("attack-state"))
    bus.start()
    try:
        yield bus
    finally:
        bus.stop()


def _run(bus: LocalBus, name: str, out: Path | None = None) -> dict:
    scenario = load_scenario(name, {d.id: d.role for d in bus.topology.devices})
    with ScenarioRunner(bus, scenario) as runner:
        return runner.run(1, out)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_scenario_is_detected(attack_bus: LocalBus, name: str, tmp_path: Path) -> None:
    result = _run(attack_bus, name, tmp_path)
    assert result["passed"], summary_table(result)
    assert result["end"]["device"] == "monitor"
    assert (tmp_path / "timeline.png").exists()
    # Legitimate devices keep working: Appendix A passes right after the attack.
    after = _run(attack_bus, "appendix-a")
    assert after["passed"], summary_table(after)
