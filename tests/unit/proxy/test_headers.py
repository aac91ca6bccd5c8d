"""Header policy: allow-lists in both directions, request ids, X-Forwarded-*."""

from __future__ import annotations

import pytest

from middleware.proxy.headers import request_id, upstream_request_headers


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("x y", False),
        ("é", False),
        ("", False),
    ],
    ids=["token", "max-length", "too-long", "space", "non-ascii", "empty"],
)
def test_request_id(given: str, kept: bool) -> None:
    rid = request_id({"x-request-id": given})
    assert (rid == given) is kept


def test_trusted_forwarded_for_is_extended() -> None:
    out = dict(
        upstream_request_headers(
            {"x-forwarded-for": "198.51.100.1", "accept": "application/fhir+json"},
            rid="r",
            client_host="10.0.0.2",
            scheme="https",
            host="gw",
            prefix="",
            extra={},
            trust_forwarded=True,
        )
    )
    assert out["x-forwarded-for"] == "198.51.100.1, 10.0.0.2"
    assert out["x-forwarded-proto"] == "https"
    assert "x-forwarded-prefix" not in out
    assert out["accept"] == "application/fhir+json"
