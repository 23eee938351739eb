"""The attack scenarios of scenarios/ run like Appendix A: the detection fires, the attack does
nothing it should not, and Appendix A passes afterwards.

They run on a bus of their own (with its monitor), because the monitor reports the same alert
at most once per 30 s and other tests raise the same kinds of alert on the session bus.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from testbed.pytest_plugin import assert_scenario_passed

ATTACKS = ["attack-forged-command", "attack-replayed-command", "attack-false-low-voltage"]


@pytest.fixture(scope="module")
def fmb_bus(fmb_bus_factory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """This module's own bus (``fmb_run`` here runs on it), on ports of its own."""
    with fmb_bus_factory() as bus:
        yield bus


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_scenario_is_detected(fmb_run, name: str) -> None:  # type: ignore[no-untyped-def]
    result = fmb_run(name)
    assert_scenario_passed(result)
    assert result["end"]["device"] == "monitor"
    assert (result.out / "timeline.png").exists()
    # Legitimate devices keep working: Appendix A passes right after the attack.
    assert_scenario_passed(fmb_run("appendix-a"))
