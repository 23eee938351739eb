"""Summary statistics for scenario and benchmark results.

Percentiles use linear interpolation between closest ranks (numpy's default ``'linear'`` method,
Hyndman & Fan type 7), computed by numpy itself (installed with matplotlib), so figures are what
a reader recomputes from the raw samples with ``numpy.percentile``. Loss and duplicate counting
compares the sequence numbers a publisher sent with those a subscriber received, which is how
the recovery scenarios prove that nothing was lost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypedDict, cast

import numpy

from testbed.core.results import Percentiles

__all__ = ["LossCount", "count_loss_and_duplicates", "percentiles", "rounded"]

# Enough to see the pattern of a loss (one gap or many) without bloating result.json.
_MAX_LOST_SEQS = 100


def _percentile_key(q: float) -> str:
    """Return the result key of percentile ``q``: 50 -> ``"p50"``, 99.9 -> ``"p99.9"``."""
    return f"p{q:g}"


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 90, 99)) -> Percentiles:
    """Return ``n``, ``min``, ``p<q>`` for each ``q``, ``max`` and ``mean`` of ``values``.

    Raises ``ValueError`` on an empty sequence, a NaN value or a ``q`` outside 0..100.
    """
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentiles() needs at least one value; got an empty sequence")
    if any(math.isnan(v) for v in ordered):
        raise ValueError("percentiles() got a NaN value; drop or fix unmeasured samples first")
    wanted = list(qs)
    for q in wanted:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile q must be within 0..100; got {q!r}")
    summary: dict[str, float] = {"n": len(ordered), "min": ordered[0]}
    if wanted:  # qs=() asks for n, min, max and mean only
        at = numpy.percentile(ordered, wanted, method="linear")
        for q, value in zip(wanted, at, strict=True):
            summary[_percentile_key(q)] = float(value)
    summary["max"] = ordered[-1]
    summary["mean"] = math.fsum(ordered) / len(ordered)
    return cast(Percentiles, summary)  # its p<q> keys are the qs asked for: built, not spelt out


def rounded(stats: Percentiles, digits: int) -> Percentiles:
    """``stats`` with every figure but ``n`` rounded to ``digits`` decimals, as results store them."""
    return cast(Percentiles, {k: round(v, digits) if isinstance(v, float) else v for k, v in stats.items()})


class LossCount(TypedDict):
    """What :func:`count_loss_and_duplicates` finds."""

    sent: int
    received: int
    lost: int
    duplicated: int
    lost_seqs: list[int]
    out_of_order: int
    unexpected: int


def count_loss_and_duplicates(
    sent_seqs: Iterable[int], received_seqs: Iterable[int]
) -> LossCount:
    """Compare sent and received sequence numbers.

    Returns ``sent`` (distinct seqs sent), ``received`` (messages received, duplicates included),
    ``lost`` (sent seqs never received), ``duplicated`` (receipts beyond the first of a seq),
    ``lost_seqs`` (the first 100 lost seqs, ascending), ``out_of_order`` (first receipts whose seq
    is lower than one received before them) and ``unexpected`` (distinct received seqs that were
    never sent, e.g. a stale retained message from an earlier run).

    Raises ``ValueError`` when ``sent_seqs`` repeats a seq: the loss count would be ambiguous.
    """
    sent: set[int] = set()
    for seq in sent_seqs:
        if seq in sent:
            raise ValueError(
                f"sent sequence number {seq} appears twice; each sent message needs its own seq"
            )
        sent.add(seq)

    seen: set[int] = set()
    received = duplicated = out_of_order = 0
    highest: int | None = None
    for seq in received_seqs:
        received += 1
        if seq in seen:
            duplicated += 1
            continue
        seen.add(seq)
        if highest is not None and seq < highest:
            out_of_order += 1
        else:
            highest = seq

    lost = sorted(sent - seen)
    return {
        "sent": len(sent),
        "received": received,
        "lost": len(lost),
        "duplicated": duplicated,
        "lost_seqs": lost[:_MAX_LOST_SEQS],
        "out_of_order": out_of_order,
        "unexpected": len(seen - sent),
    }
