"""Tests of testbed.core.stats on synthetic data with hand-computed answers."""

from __future__ import annotations

import random

import pytest

from testbed.core import stats
from testbed.core.stats import count_loss_and_duplicates, percentiles


def test_exports_are_complete() -> None:
    defined_here = {
        name
        for name, obj in vars(stats).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == stats.__name__
    }
    assert set(stats.__all__) == defined_here


def test_percentiles_of_1_to_100() -> None:
    result = percentiles(list(range(1, 101)))
    assert result["n"] == 100
    assert result["min"] == 1
    assert result["max"] == 100
    assert result["p50"] == pytest.approx(50.5)
    assert result["p90"] == pytest.approx(90.1)
    assert result["p99"] == pytest.approx(99.01)
    assert result["mean"] == pytest.approx(50.5)
    assert list(result) == ["n", "min", "p50", "p90", "p99", "max", "mean"]


def test_percentiles_interpolate_between_two_values() -> None:
    # rank = (2 - 1) * q / 100, so p90 lies 90 % of the way from 0 to 10.
    result = percentiles([10.0, 0.0], qs=(0, 25, 90, 100))
    assert result["p0"] == 0.0
    assert result["p25"] == pytest.approx(2.5)
    assert result["p90"] == pytest.approx(9.0)
    assert result["p100"] == 10.0


def test_percentiles_of_one_value() -> None:
    result = percentiles([7.25])
    assert result == {
        "n": 1,
        "min": 7.25,
        "p50": 7.25,
        "p90": 7.25,
        "p99": 7.25,
        "max": 7.25,
        "mean": 7.25,
    }


def test_percentiles_ignore_input_order_and_name_fractional_qs() -> None:
    result = percentiles([5, 1, 4, 2, 3], qs=(50, 99.9))
    assert result["p50"] == 3
    # rank = 4 * 0.999 = 3.996 -> 4 + 0.996 * (5 - 4)
    assert result["p99.9"] == pytest.approx(4.996)


def test_percentiles_agree_with_numpy_linear() -> None:
    import numpy  # matplotlib's dependency, so the package's: never missing where the testbed is installed
    rng = random.Random(20140101)
    values = [rng.lognormvariate(0, 0.5) for _ in range(1001)]
    qs = (1, 25, 50, 90, 99, 99.9)
    result = percentiles(values, qs=qs)
    for q in qs:
        assert result[f"p{q:g}"] == pytest.approx(numpy.percentile(values, q), rel=1e-12)


def test_percentiles_reject_empty_sequence() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        percentiles([])


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentiles_reject_q_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="0..100"):
        percentiles([1.0, 2.0], qs=(q,))


def test_percentiles_reject_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        percentiles([1.0, float("nan")])


def test_count_loss_duplicates_and_reordering() -> None:
    received = [1, 2, 2, 3, 5, 4, 7, 7, 10]
    result = count_loss_and_duplicates(range(1, 11), iter(received))
    assert result == {
        "sent": 10,
        "received": 9,
        "lost": 3,
        "duplicated": 2,
        "lost_seqs": [6, 8, 9],
        "out_of_order": 1,  # 4 after 5
        "unexpected": 0,
    }


def test_count_perfect_delivery() -> None:
    result = count_loss_and_duplicates([3, 1, 2], [1, 2, 3])
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["out_of_order"] == 0
    assert result["lost_seqs"] == []


def test_out_of_order_counts_first_receipts_below_the_highest_seen() -> None:
    # 1 and 2 both arrive after 3; the late duplicate of 3 is a duplicate, not a reordering.
    result = count_loss_and_duplicates([1, 2, 3], [3, 1, 2, 3])
    assert result["out_of_order"] == 2
    assert result["duplicated"] == 1


def test_lost_seqs_are_capped_at_100() -> None:
    result = count_loss_and_duplicates(range(1000, 0, -1), [500])
    assert result["lost"] == 999
    assert result["lost_seqs"] == list(range(1, 101))


def test_unexpected_seqs_are_counted() -> None:
    result = count_loss_and_duplicates([1, 2], [0, 1, 2])
    assert result["unexpected"] == 1
    assert result["lost"] == 0


def test_repeated_sent_seq_is_rejected() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        count_loss_and_duplicates([1, 2, 2], [1, 2])
