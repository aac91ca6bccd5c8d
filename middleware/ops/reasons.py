"""Refusal reason codes: why a request was not answered with success, as one short token.

The access log line and the ``consentry_refusals_total`` metric carry the code, so an operator
can tell a consent denial from an expired token or a path trick without reading the audit
trail. Codes are a closed vocabulary (:data:`REASONS`); none names a resource, a patient or a
search value. A read denied by consent is answered 404 exactly like a missing record (the client
must not learn which); the operator's code tells them apart.
"""

from __future__ import annotations

from typing import Final

from middleware.errors import GatewayError, PathRejected

__all__ = ["REASONS", "refusal_reason", "status_reason"]

_BY_STATUS: Final = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    408: "request-timeout",
    409: "conflict",
    412: "conflict",
    413: "too-large",
    414: "too-large",
    415: "unsupported-media-type",
    422: "invalid",
    429: "rate-limited",
    500: "internal",
    502: "upstream-failed",
    503: "unavailable",
    504: "upstream-timeout",
}

#: Every code :func:`refusal_reason` and :func:`status_reason` return.
REASONS: Final = frozenset(
    {*_BY_STATUS.values(), "consent-denied", "path-rejected", "client-error", "server-error"}
)


def status_reason(status: int) -> str | None:
    """The code of an answer by its status alone (None below 400)."""
    if status < 400:
        return None
    return _BY_STATUS.get(status, "client-error" if status < 500 else "server-error")


def refusal_reason(error: GatewayError, *, consent_denied: bool = False) -> str:
    """The code of ``error``. ``consent_denied``: a consent decision of this exchange was a
    deny that stood (so a 403 or 404 is the consent's refusal, not a policy or a missing
    record)."""
    if consent_denied and error.status in (403, 404):
        return "consent-denied"
    if isinstance(error, PathRejected):
        return "path-rejected"
    return status_reason(error.status) or "internal"
