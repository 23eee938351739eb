"""Waiting for a condition: the one polling loop of the testbed.

Brokers, devices and benchmark workers are separate processes, so whoever starts or faults them
learns that they are ready (or gone, or done) by looking again and again until a deadline:
:func:`wait_until` is that loop. It returns what the condition returned once it is truthy; if the
deadline comes first it raises one error whose one-line message says what was waited for
(:class:`WaitTimeout`, a :class:`~testbed.core.errors.TestbedError`, unless the caller names the
error class it has always raised). A caller for which running out of time is a normal outcome
(wait a while for the acknowledgements, then count those missing) catches :class:`WaitTimeout`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from testbed.core.errors import WaitTimeout

__all__ = ["WaitTimeout", "wait_until"]  # WaitTimeout lives in the one error tree, re-exported here

_T = TypeVar("_T")


def wait_until(condition: Callable[[], _T | None], timeout_s: float, *, what: str | Callable[[], str],
               interval_s: float = 0.05, error: Callable[[str], BaseException] = WaitTimeout) -> _T:
    """Call ``condition`` until it returns something truthy, and return that (never None: a condition
    typed ``X | None`` gives an ``X``).

    ``condition`` is called at once, then every ``interval_s`` seconds, and a last time at the
    deadline, ``timeout_s`` seconds from now. An exception it raises propagates at once: that is
    how a caller gives up early (say, when the process it waits for has died). If the deadline
    passes, raises ``error(message)``, where the message is ``what`` or, if ``what`` is callable,
    what it returns then (for a message that reports the state at the time-out): one line that
    says what did not happen, e.g. ``"broker dc-delivery not ready after 15 s: ..."``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error(what() if callable(what) else what)
        time.sleep(min(interval_s, remaining))
