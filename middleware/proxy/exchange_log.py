"""What one request accumulates for the access log and metrics, and the access log line.

:class:`ExchangeLog` is created by the ASGI edge (:mod:`middleware.proxy.handler`) for every
request and filled by the three stages as the request passes them: the edge (interaction,
status, bytes, refusal reason), the enforced pipeline (:mod:`middleware.proxy.enforcement`:
that it owns the audit record, that a consent denied) and the upstream forwarder
(:mod:`middleware.proxy.forwarder`: time spent upstream). It names no patient, path or query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ExchangeLog", "log_access"]


@dataclass(slots=True)
class ExchangeLog:
    """What one request accumulates for the access log and metrics."""

    rid: str
    method: str
    started: float
    interaction: str = "invalid"
    resource_type: str | None = None
    status: int = 500
    upstream_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    audited: bool = False  # the enforcement stage owns this exchange's audit record
    consent_denied: bool = False  # a consent decision of this exchange denied and stood
    reason: str | None = None  # the refusal reason code (ops.reasons), None on success
    # The caller proved who it is (its refusals are recorded); None: not asked yet.
    authenticated: bool | None = None
    body_pending: bool = False  # a body was announced and not read (close the connection)

    def anonymous_refusal(self) -> bool:
        """A refusal of a caller that did not prove who it is (the public CapabilityStatement
        aside): logged in aggregate, not line by line."""
        return self.status >= 400 and not self.authenticated and self.interaction != "capabilities"


def log_access(log: Any, ex: ExchangeLog, seconds: float) -> None:
    """Write ``ex``'s access log line to ``log`` (a structlog logger), ``seconds`` its whole
    duration."""
    log.info(
        "request",
        request_id=ex.rid,
        method=ex.method,
        interaction=ex.interaction,
        resource_type=ex.resource_type,
        status=ex.status,
        duration_ms=round(seconds * 1000, 3),
        upstream_ms=(None if ex.upstream_seconds is None else round(ex.upstream_seconds * 1000, 3)),
        bytes_in=ex.bytes_in,
        bytes_out=ex.bytes_out,
        reason=ex.reason,
    )
