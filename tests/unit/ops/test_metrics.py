"""Prometheus exposition: counters, cumulative histogram buckets, the in-flight gauge."""

from __future__ import annotations

from middleware.ops.metrics import Metrics


def test_histogram_buckets_are_cumulative_and_sum_counts() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.003, 20.0):
        metrics.observe_request("read", 200, seconds)
    text = metrics.render().decode()
    assert 'consentry_requests_total{interaction="read",status="200"} 4' in text
    assert (
        'consentry_request_duration_seconds_bucket{interaction="read",status="200",le="0.0005"} 1'
        in text
    )
    assert (
        'consentry_request_duration_seconds_bucket{interaction="read",status="200",le="0.005"} 3'
        in text
    )
    assert (
        'consentry_request_duration_seconds_bucket{interaction="read",status="200",le="10.0"} 3'
        in text
    )
    assert (
        'consentry_request_duration_seconds_bucket{interaction="read",status="200",le="+Inf"} 4'
        in text
    )
    assert 'consentry_request_duration_seconds_count{interaction="read",status="200"} 4' in text


def test_consent_api_decisions_and_refusals_are_counted_by_their_labels() -> None:
    metrics = Metrics()
    metrics.observe_consent("create", 201, 0.002)
    metrics.observe_consent("create", 201, 0.003)
    metrics.observe_consent("read", 401, 0.0001)
    for effect in ("permit", "deny", "permit"):
        metrics.observe_decision(effect)
    metrics.observe_refusal("consent-denied")
    text = metrics.render().decode()
    assert 'consentry_consent_requests_total{operation="create",status="201"} 2' in text
    assert 'consentry_consent_requests_total{operation="read",status="401"} 1' in text
    assert (
        'consentry_consent_request_duration_seconds_bucket{operation="create",status="201",'
        'le="0.0025"} 1' in text
    )
    assert 'consentry_decisions_total{effect="permit"} 2' in text
    assert 'consentry_decisions_total{effect="deny"} 1' in text
    assert 'consentry_refusals_total{reason="consent-denied"} 1' in text
    assert "# TYPE consentry_refusals_total counter" in text


def test_ledger_commits_count_entries_batch_sizes_latency_and_failures() -> None:
    metrics = Metrics()
    metrics.observe_commit(1, 0.001, ok=True)
    metrics.observe_commit(100, 0.004, ok=True)
    metrics.observe_commit(7, 0.5, ok=False)  # a failed batch appended nothing
    text = metrics.render().decode()
    assert "consentry_ledger_appends_total 101" in text
    assert "consentry_ledger_failed_batches_total 1" in text
    assert 'consentry_ledger_batch_size_bucket{le="1.0"} 1' in text
    assert 'consentry_ledger_batch_size_bucket{le="64.0"} 1' in text
    assert 'consentry_ledger_batch_size_bucket{le="128.0"} 2' in text
    assert "consentry_ledger_batch_size_sum 101.000000" in text
    assert "consentry_ledger_commit_duration_seconds_count 2" in text
    assert 'consentry_ledger_commit_duration_seconds_bucket{le="0.0025"} 1' in text


def test_gauges_are_read_at_each_scrape() -> None:
    metrics = Metrics()
    depth = [3]
    metrics.gauge("ledger_queue_depth", "Queued.", lambda: depth[0])
    assert "consentry_ledger_queue_depth 3" in metrics.render().decode()
    depth[0] = 0
    text = metrics.render().decode()
    assert "consentry_ledger_queue_depth 0" in text
    assert "# TYPE consentry_ledger_queue_depth gauge" in text


def _buckets(text: str, name: str) -> list[tuple[str, int]]:
    """``(le, cumulative count)`` of every bucket line of histogram ``name``, in order."""
    out = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((le, int(line.rsplit(" ", 1)[1])))
    return out


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """Prometheus ``le`` is "less than or equal" (exposition format, histogram): a batch of
    exactly 1 or 256 entries belongs to ``le="1.0"`` / ``le="256.0"``. Defect this pins: the
    bucket choice moved to "less than" (``bisect_right``) and every figure on a bound was
    counted one bucket too high, with the suite still green. The expected counts are worked
    out here by hand from the bounds, not taken from the implementation."""
    metrics = Metrics()
    for size in (1, 2, 3, 256, 257, 1024, 1025):
        metrics.observe_commit(size, 0.001, ok=True)
    text = metrics.render().decode()
    assert _buckets(text, "consentry_ledger_batch_size") == [
        ("1.0", 1),  # 1
        ("2.0", 2),  # 2
        ("4.0", 3),  # 3
        ("8.0", 3),
        ("16.0", 3),
        ("32.0", 3),
        ("64.0", 3),
        ("128.0", 3),
        ("256.0", 4),  # 256
        ("512.0", 5),  # 257
        ("1024.0", 6),  # 1024
        ("+Inf", 7),  # 1025
    ]
    assert "consentry_ledger_batch_size_count 7" in text
    assert "consentry_ledger_batch_size_sum 2568.000000" in text


def test_request_durations_on_and_beside_the_bounds() -> None:
    metrics = Metrics()
    for seconds in (0.0, 0.0005, 0.00050001, 10.0, 10.000001):
        metrics.observe_request("read", 200, seconds)
    got = dict(_buckets(metrics.render().decode(), "consentry_request_duration_seconds"))
    assert (got["0.0005"], got["0.001"], got["5.0"], got["10.0"], got["+Inf"]) == (2, 3, 3, 4, 5)
