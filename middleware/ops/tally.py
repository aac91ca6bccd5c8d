"""Counts logged in aggregate: one log line per interval, never one per event.

:class:`IntervalTally` counts events by a short code (a refusal reason) and hands the counts
out at most once per ``interval`` seconds, when the first event after the interval arrives.
The proxy uses it for requests refused before the caller proved who it is: a flood of them
writes one line a minute, not one line each. Pure; the clock (monotonic seconds) is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["IntervalTally"]


class IntervalTally:
    """Counts by code, given out once per ``interval`` seconds (module docstring)."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._clock = clock
        self._started = clock()
        self._counts: dict[str, int] = {}

    def add(self, code: str) -> tuple[dict[str, int], float] | None:
        """Count one ``code``; when the interval is over, the counts so far (this one
        included) and the seconds they cover, and a new interval starts; else None."""
        self._counts[code] = self._counts.get(code, 0) + 1
        now = self._clock()
        covered = now - self._started
        if covered < self.interval:
            return None
        counts, self._counts, self._started = self._counts, {}, now
        return counts, covered
