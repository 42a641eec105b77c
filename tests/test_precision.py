"""Repetitions until a stated precision: the stopping rule on controlled samples."""

from __future__ import annotations

import numpy as np
import pytest

from datarax_bench import stats


def _measure_until_stopped(draw, precision, minimum, maximum):
    values = []
    while (reason := stats.stop_reason(values, precision, minimum, maximum)) is None:
        values.append(draw())
    return values, reason


@pytest.mark.parametrize("jitter, expected", [(0.002, "precision reached"), (0.3, "max")])
def test_low_jitter_stops_early_and_high_jitter_runs_to_the_cap(jitter, expected):
    rng = np.random.default_rng(1)
    values, reason = _measure_until_stopped(lambda: 1000 * (1 + rng.normal(0, jitter)), 0.03, 5, 30)
    assert reason.startswith(expected)
    if expected == "max":
        assert len(values) == 30 and stats.relative_precision(values) > 0.03
    else:
        assert len(values) == 5 and stats.relative_precision(values) <= 0.03


def test_without_a_target_the_fixed_count_is_measured():
    values, reason = _measure_until_stopped(lambda: 1.0, None, 5, 5)
    assert len(values) == 5 and reason == "fixed repetitions"


def test_precision_is_the_reported_intervals_half_width():
    values = [90.0, 100.0, 110.0, 100.0, 95.0, 105.0]
    low, high = stats.bootstrap_ci(values)
    assert stats.relative_precision(values) == pytest.approx((high - low) / 2 / 100.0)
    assert stats.relative_precision([5.0]) == float("inf")
