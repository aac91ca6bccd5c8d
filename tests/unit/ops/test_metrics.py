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
