"""Tests of testbed.core.waiting: the one polling loop (real clock, short time-outs)."""

from __future__ import annotations

import time

import pytest

from testbed.core import waiting
from testbed.core.errors import DeviceError, TestbedError
from testbed.core.waiting import WaitTimeout, wait_until


def test_exports_are_complete() -> None:
    defined_here = {name for name, obj in vars(waiting).items()
                    if not name.startswith("_") and getattr(obj, "__module__", None) == waiting.__name__}
    assert set(waiting.__all__) == defined_here | {"WaitTimeout"}  # re-exported from the error tree
    assert waiting.WaitTimeout.__module__ == "testbed.core.errors"


def test_a_condition_already_true_returns_its_value_at_once() -> None:
    calls = []

    def ready() -> dict[str, int]:
        calls.append(time.monotonic())
        return {"port": 8883}

    start = time.monotonic()
    assert wait_until(ready, 5, what="never shown", interval_s=1) == {"port": 8883}
    assert len(calls) == 1 and time.monotonic() - start < 0.5


def test_a_condition_true_after_a_few_polls_returns_its_value_then() -> None:
    calls: list[float] = []

    def third_time() -> str:
        calls.append(time.monotonic())
        return "ready" if len(calls) == 3 else ""

    assert wait_until(third_time, 5, what="never shown", interval_s=0.05) == "ready"
    assert len(calls) == 3
    assert all(b - a >= 0.04 for a, b in zip(calls, calls[1:], strict=False)), calls  # it slept between polls


def test_a_time_out_raises_one_line_that_says_what_was_waited_for() -> None:
    calls: list[float] = []

    def never() -> bool:
        calls.append(time.monotonic())
        return False

    start = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        wait_until(never, 0.2, what="broker b1 not ready after 0.2 s", interval_s=0.05)
    assert str(raised.value) == "broker b1 not ready after 0.2 s"
    assert isinstance(raised.value, TestbedError)  # the CLI prints it as one line
    assert calls[-1] - start >= 0.2 - 0.01  # the last look is at the deadline, not one interval before
    assert 3 <= len(calls) <= 6, calls


def test_a_callable_what_reports_the_state_at_the_time_out_in_the_callers_error_class() -> None:
    state = {"meter-1": "starting"}

    def healthy() -> bool:
        state["meter-1"] = "unhealthy"  # what the last look saw, not what was known at the call
        return False

    with pytest.raises(DeviceError, match=r"^meter-1 is unhealthy after 0.1 s$"):
        wait_until(healthy, 0.1, interval_s=0.02, error=DeviceError,
                   what=lambda: f"meter-1 is {state['meter-1']} after 0.1 s")


def test_the_conditions_exception_propagates_unchanged_and_at_once() -> None:
    calls = []

    def dies() -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise DeviceError("device meter-1 exited at start-up: (empty log)")
        return False

    start = time.monotonic()
    with pytest.raises(DeviceError, match="exited at start-up"):
        wait_until(dies, 10, what="never shown", interval_s=0.01)
    assert len(calls) == 2 and time.monotonic() - start < 1
