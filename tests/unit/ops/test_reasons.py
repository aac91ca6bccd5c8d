"""Refusal reason codes: one closed vocabulary; a consent's refusal told apart from the rest."""

from __future__ import annotations

import pytest

from middleware.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    PathRejected,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from middleware.ops.reasons import REASONS, refusal_reason, status_reason


@pytest.mark.parametrize(
    ("error", "denied", "reason"),
    [
        # a consent's deny makes a 403 or 404 the consent's refusal
        (NotFound("not found"), True, "consent-denied"),
        (Forbidden("no"), True, "consent-denied"),
        (NotFound("not found"), False, "not-found"),
        (Forbidden("no"), False, "forbidden"),
        # a deny does not explain other failures of the same exchange
        (ServiceUnavailable("ledger unavailable"), True, "unavailable"),
        (UpstreamError("down"), True, "upstream-failed"),
        # by class or status
        (PathRejected("'..'"), False, "path-rejected"),
        (BadRequest("bad"), False, "invalid"),
        (Unauthorized("no token"), False, "unauthenticated"),
        (UpstreamTimeout("slow"), False, "upstream-timeout"),
        (GatewayError("boom"), False, "internal"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refusal_reason(error: GatewayError, denied: bool, reason: str) -> None:
    assert refusal_reason(error, consent_denied=denied) == reason
    assert reason in REASONS


@pytest.mark.parametrize(
    ("status", "reason"),
    [(200, None), (304, None), (404, "not-found"), (418, "client-error"), (599, "server-error")],
    ids=["ok", "not-modified", "known", "other-4xx", "other-5xx"],
)
def test_status_reason(status: int, reason: str | None) -> None:
    assert status_reason(status) == reason
    assert reason is None or reason in REASONS
