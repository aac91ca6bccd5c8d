"""Every 503 the gateway renders says when to retry (RFC 9110 §10.2.3, §15.6.4).

The attack it answers: a 503 without ``Retry-After`` leaves clients and load balancers to
retry at once, into the same full ledger queue or store outage that caused it.
"""

from __future__ import annotations

import pytest

from middleware.consent.registry import UnreadableConsent
from middleware.errors import GatewayError, NotFound, ServiceUnavailable, UpstreamTimeout
from middleware.fhir.outcome import render_error


def _all_subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


@pytest.mark.parametrize(
    "error",
    [ServiceUnavailable("ledger queue is full"), UnreadableConsent("consent unreadable")],
    ids=["service-unavailable", "unreadable-consent"],
)
def test_a_503_carries_retry_after(error: GatewayError) -> None:
    status, headers, _ = render_error(error)
    assert status == 503
    (value,) = [v for k, v in headers if k == b"retry-after"]
    assert value.isdigit()
    assert int(value) >= 1


def test_every_503_class_has_a_retry_after() -> None:
    """No class that renders as 503 may switch the header off."""
    classes = [c for c in _all_subclasses(GatewayError) if c.status == 503]
    assert ServiceUnavailable in classes
    assert all(c.retry_after is not None for c in classes)


@pytest.mark.parametrize("error", [NotFound("x"), UpstreamTimeout("y")], ids=["404", "504"])
def test_other_statuses_do_not_invent_one(error: GatewayError) -> None:
    _, headers, _ = render_error(error)
    assert all(k != b"retry-after" for k, _ in headers)
