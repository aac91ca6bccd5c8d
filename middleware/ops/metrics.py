"""Gateway metrics in the Prometheus text exposition format (version 0.0.4).

A deliberately small registry: counters and histograms keyed by label tuples, updated with a
few dict operations per event so that metrics cost microseconds, and gauges read when scraped.

=============================================  ==========  =================================
``consentry_requests_total``                   counter     FHIR requests, by interaction
                                                           and status
``consentry_request_duration_seconds``         histogram   the same, time to last byte
``consentry_upstream_duration_seconds``        histogram   upstream time, by interaction
``consentry_requests_in_flight``               gauge       FHIR requests being handled
``consentry_consent_requests_total``           counter     consent API requests, by
                                                           operation and status
``consentry_consent_request_duration_seconds`` histogram   the same, time to answer
``consentry_decisions_total``                  counter     consent decisions, by effect
``consentry_refusals_total``                   counter     refused requests (FHIR and
                                                           consent API), by reason code
``consentry_ledger_appends_total``             counter     ledger entries committed
``consentry_ledger_failed_batches_total``      counter     ledger batches that failed
``consentry_ledger_batch_size``                histogram   entries per committed batch
``consentry_ledger_commit_duration_seconds``   histogram   time of one batch's commit
``consentry_ledger_queue_depth``               gauge       entries waiting for a batch
``consentry_break_glass_sessions_open``        gauge       emergency sessions open now
=============================================  ==========  =================================

Refusal codes are :data:`middleware.ops.reasons.REASONS`; no label holds an id or a value.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["BATCH_BUCKETS", "BUCKETS", "Metrics"]

_K = TypeVar("_K")

#: Seconds; chosen around the gateway's goals (sub-millisecond overhead, upstream in ms).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Entries per ledger batch (the writer's ``max_batch`` is 256 by default).
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


@dataclass
class _Histogram:
    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass(frozen=True, slots=True)
class _Gauge:
    name: str
    help: str
    read: Callable[[], float]


class Metrics:
    """The gateway's counters, histograms and gauges (module docstring)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._requests: dict[tuple[str, str], _Histogram] = {}
        self._upstream: dict[str, _Histogram] = {}
        self._consent: dict[tuple[str, str], _Histogram] = {}
        self._decisions: dict[str, int] = {}
        self._refusals: dict[str, int] = {}
        self.ledger_appends = 0
        self.ledger_failed_batches = 0
        self._batch_size = _Histogram(BATCH_BUCKETS)
        self._commit = _Histogram()
        self._gauges: list[_Gauge] = []

    def observe_request(self, interaction: str, status: int, seconds: float) -> None:
        """Record one finished request (``interaction`` is ``"invalid"`` when unclassified)."""
        _histogram(self._requests, (interaction, str(status))).observe(seconds)

    def observe_upstream(self, interaction: str, seconds: float) -> None:
        """Record the time from sending upstream to the upstream's response headers."""
        _histogram(self._upstream, interaction).observe(seconds)

    def observe_consent(self, operation: str, status: int, seconds: float) -> None:
        """Record one finished consent API request (``operation`` is ``"invalid"`` when the
        path or method named none)."""
        _histogram(self._consent, (operation, str(status))).observe(seconds)

    def observe_decision(self, effect: str) -> None:
        """Record one consent decision (``permit`` or ``deny``)."""
        self._decisions[effect] = self._decisions.get(effect, 0) + 1

    def observe_refusal(self, reason: str) -> None:
        """Record one refused request by its reason code."""
        self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def observe_commit(self, entries: int, seconds: float, *, ok: bool) -> None:
        """Record one ledger batch: its entries and commit time, or its failure (the
        ledger writer's commit observer)."""
        if not ok:
            self.ledger_failed_batches += 1
            return
        self.ledger_appends += entries
        self._batch_size.observe(entries)
        self._commit.observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register a gauge read at each scrape (``read`` must be cheap and never raise)."""
        self._gauges = [g for g in self._gauges if g.name != name]
        self._gauges.append(_Gauge(name, help_text, read))

    def render(self) -> bytes:
        """The exposition text."""
        lines: list[str] = []
        _family(lines, "requests_total", "counter", "Requests answered, by interaction and status.")
        for (interaction, status), hist in sorted(self._requests.items()):
            labels = f'interaction="{interaction}",status="{status}"'
            lines.append(f"consentry_requests_total{{{labels}}} {sum(hist.counts)}")
        name = "request_duration_seconds"
        _family(lines, name, "histogram", "Time from request to last response byte.")
        for (interaction, status), hist in sorted(self._requests.items()):
            labels = f'interaction="{interaction}",status="{status}"'
            lines.extend(_histogram_lines(f"consentry_{name}", labels, hist))
        name = "upstream_duration_seconds"
        _family(lines, name, "histogram", "Time until the upstream's headers.")
        for interaction, hist in sorted(self._upstream.items()):
            labels = f'interaction="{interaction}"'
            lines.extend(_histogram_lines(f"consentry_{name}", labels, hist))
        _family(lines, "requests_in_flight", "gauge", "Requests being handled now.")
        lines.append(f"consentry_requests_in_flight {self.in_flight}")
        self._render_consent(lines)
        self._render_ledger(lines)
        for gauge in self._gauges:
            _family(lines, gauge.name, "gauge", gauge.help)
            lines.append(f"consentry_{gauge.name} {_number(gauge.read())}")
        return ("\n".join(lines) + "\n").encode()

    def _render_consent(self, lines: list[str]) -> None:
        name = "consent_requests_total"
        _family(lines, name, "counter", "Consent API requests, by operation and status.")
        for (operation, status), hist in sorted(self._consent.items()):
            labels = f'operation="{operation}",status="{status}"'
            lines.append(f"consentry_{name}{{{labels}}} {sum(hist.counts)}")
        name = "consent_request_duration_seconds"
        _family(lines, name, "histogram", "Consent API time from request to answer.")
        for (operation, status), hist in sorted(self._consent.items()):
            labels = f'operation="{operation}",status="{status}"'
            lines.extend(_histogram_lines(f"consentry_{name}", labels, hist))
        _family(lines, "decisions_total", "counter", "Consent decisions, by effect.")
        for effect, count in sorted(self._decisions.items()):
            lines.append(f'consentry_decisions_total{{effect="{effect}"}} {count}')
        _family(lines, "refusals_total", "counter", "Refused requests, by reason code.")
        for reason, count in sorted(self._refusals.items()):
            lines.append(f'consentry_refusals_total{{reason="{reason}"}} {count}')

    def _render_ledger(self, lines: list[str]) -> None:
        _family(lines, "ledger_appends_total", "counter", "Ledger entries committed.")
        lines.append(f"consentry_ledger_appends_total {self.ledger_appends}")
        name = "ledger_failed_batches_total"
        _family(lines, name, "counter", "Ledger batches whose commit failed.")
        lines.append(f"consentry_{name} {self.ledger_failed_batches}")
        name = "ledger_batch_size"
        _family(lines, name, "histogram", "Entries per committed ledger batch.")
        lines.extend(_histogram_lines(f"consentry_{name}", "", self._batch_size))
        name = "ledger_commit_duration_seconds"
        _family(lines, name, "histogram", "Time of one ledger batch's commit.")
        lines.extend(_histogram_lines(f"consentry_{name}", "", self._commit))


def _histogram(table: dict[_K, _Histogram], key: _K) -> _Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = _Histogram()
    return histogram


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP consentry_{name} {help_text}")
    lines.append(f"# TYPE consentry_{name} {kind}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _histogram_lines(name: str, labels: str, hist: _Histogram) -> Iterator[str]:
    sep = "," if labels else ""
    cumulative = 0
    for bound, count in zip(hist.bounds, hist.counts, strict=False):
        cumulative += count
        yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}'
    cumulative += hist.counts[-1]
    yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {cumulative}'
    suffix = f"{{{labels}}}" if labels else ""
    yield f"{name}_sum{suffix} {hist.total:.6f}"
    yield f"{name}_count{suffix} {cumulative}"
