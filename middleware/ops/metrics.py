"""Request metrics in the Prometheus text exposition format (version 0.0.4).

A deliberately small registry: two counters-with-histograms keyed by label tuples and one
gauge, updated with a few dict operations per request so that metrics cost microseconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Metrics"]

#: Seconds; chosen around the gateway's goals (sub-millisecond overhead, upstream in ms).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics:
    """Counters and histograms for requests, upstream calls and in-flight requests."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._requests: dict[tuple[str, str], _Histogram] = {}
        self._upstream: dict[str, _Histogram] = {}

    def observe_request(self, interaction: str, status: int, seconds: float) -> None:
        """Record one finished request (``interaction`` is ``"invalid"`` when unclassified)."""
        key = (interaction, str(status))
        histogram = self._requests.get(key)
        if histogram is None:
            histogram = self._requests[key] = _Histogram()
        histogram.observe(seconds)

    def observe_upstream(self, interaction: str, seconds: float) -> None:
        """Record the time from sending upstream to the upstream's response headers."""
        histogram = self._upstream.get(interaction)
        if histogram is None:
            histogram = self._upstream[interaction] = _Histogram()
        histogram.observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        lines = [
            "# HELP consentry_requests_total Requests answered, by interaction and status.",
            "# TYPE consentry_requests_total counter",
        ]
        for (interaction, status), hist in sorted(self._requests.items()):
            labels = f'interaction="{interaction}",status="{status}"'
            lines.append(f"consentry_requests_total{{{labels}}} {sum(hist.counts)}")
        lines += [
            "# HELP consentry_request_duration_seconds Time from request to last response byte.",
            "# TYPE consentry_request_duration_seconds histogram",
        ]
        for (interaction, status), hist in sorted(self._requests.items()):
            labels = f'interaction="{interaction}",status="{status}"'
            lines.extend(_histogram_lines("consentry_request_duration_seconds", labels, hist))
        lines += [
            "# HELP consentry_upstream_duration_seconds Time until the upstream's headers.",
            "# TYPE consentry_upstream_duration_seconds histogram",
        ]
        for interaction, hist in sorted(self._upstream.items()):
            labels = f'interaction="{interaction}"'
            lines.extend(_histogram_lines("consentry_upstream_duration_seconds", labels, hist))
        lines += [
            "# HELP consentry_requests_in_flight Requests being handled now.",
            "# TYPE consentry_requests_in_flight gauge",
            f"consentry_requests_in_flight {self.in_flight}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _histogram_lines(name: str, labels: str, hist: _Histogram) -> Iterator[str]:
    cumulative = 0
    for bound, count in zip(BUCKETS, hist.counts, strict=False):
        cumulative += count
        yield f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}'
    cumulative += hist.counts[-1]
    yield f'{name}_bucket{{{labels},le="+Inf"}} {cumulative}'
    yield f"{name}_sum{{{labels}}} {hist.total:.6f}"
    yield f"{name}_count{{{labels}}} {cumulative}"
