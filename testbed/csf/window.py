"""A sliding time window of events in bounded memory, for the Detect rules' counts.

A rule such as "more than N connections from one address in W seconds" needs the count of the
window and, for some rules, its distinct items (the topics of a scan, the reasons of failures).
Kept as a list of timestamps, a flood makes that list as long as the flood: here at most ``cap``
timestamps and ``cap`` distinct items are kept, and the surplus only counted, so a rule whose
threshold is below ``cap`` decides exactly as with every timestamp kept.
"""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingWindow"]


class SlidingWindow:
    """Events of the last ``window_s`` seconds: their count (exact up to ``cap``, an upper bound
    beyond) and their distinct items (the ``cap`` most recently seen)."""

    __slots__ = ("_items", "_overflow", "_times", "cap", "window_ns")

    def __init__(self, window_s: float, cap: int) -> None:
        if window_s <= 0 or cap < 1:
            raise ValueError(f"a window needs window_s > 0 and cap >= 1 (got {window_s}, {cap})")
        self.window_ns = int(window_s * 1e9)
        self.cap = cap
        self._times: deque[int] = deque()
        self._overflow = 0  # events older than every kept timestamp, counted but not kept
        self._items: dict[str, int] = {}  # item -> when last seen, oldest first

    def add(self, now: int, item: str = "") -> None:
        """One event at ``now`` (ns), about ``item``."""
        self.expire(now)
        if len(self._times) >= self.cap:
            self._times.popleft()
            self._overflow += 1
        self._times.append(now)
        self._items.pop(item, None)  # re-inserted: the dict's order stays that of last sight
        self._items[item] = now
        if len(self._items) > self.cap:
            del self._items[next(iter(self._items))]

    def expire(self, now: int) -> None:
        """Forget what is older than the window at ``now``."""
        edge = now - self.window_ns
        times = self._times
        if times and times[0] < edge:
            self._overflow = 0  # what overflowed is older than what expires now
            while times and times[0] < edge:
                times.popleft()
        items = self._items
        while items:
            oldest = next(iter(items))
            if items[oldest] >= edge:
                break
            del items[oldest]

    @property
    def count(self) -> int:
        """Events in the window (as of the last :meth:`add` or :meth:`expire`)."""
        return len(self._times) + self._overflow

    def distinct(self) -> list[str]:
        """The distinct items in the window, least recently seen first."""
        return list(self._items)

    def empty(self) -> bool:
        """Whether nothing is left in the window."""
        return not self._times
