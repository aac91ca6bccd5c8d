"""Aggregate counts: at most one report per interval, nothing lost between reports."""

from __future__ import annotations

import pytest

from middleware.ops.tally import IntervalTally


def test_counts_are_given_once_per_interval_and_none_is_lost() -> None:
    """A thousand events inside one minute give no report; the first after it gives all of
    them at once, and counting starts again from zero."""
    now = [0.0]
    tally = IntervalTally(60.0, clock=lambda: now[0])
    reports = []
    for i in range(1000):
        now[0] = i * 0.05
        reports.append(tally.add("unauthenticated" if i % 4 else "rate-limited"))
    assert reports == [None] * 1000
    now[0] = 61.0
    assert tally.add("unauthenticated") == ({"unauthenticated": 751, "rate-limited": 250}, 61.0)
    now[0] = 62.0
    assert tally.add("unauthenticated") is None
    now[0] = 121.0
    assert tally.add("rate-limited") == ({"unauthenticated": 1, "rate-limited": 1}, 60.0)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_a_non_positive_interval_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        IntervalTally(interval)
