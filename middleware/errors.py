"""One error hierarchy for everything the gateway refuses or cannot do.

Every error a request can meet is a :class:`GatewayError`. Each class knows the HTTP status it
becomes and the FHIR ``OperationOutcome.issue.code`` (http://hl7.org/fhir/R4/valueset-issue-type.html)
it carries; :func:`middleware.fhir.outcome.render_error` is the one place that turns them into a
response. Third-party exceptions (httpx, aiohttp, sqlite3, ...) are translated into these in exactly
one place per integration, with ``raise ... from exc``, so nothing upstream-specific leaks into a
response body.

    GatewayError
    ├── BadRequest                 400 invalid / structure / not-supported
    │   └── PathRejected           400 path tricks: '..', encoded slashes, '//', ';' ...
    ├── Unauthorized               401 login (carries the WWW-Authenticate challenge)
    ├── Forbidden                  403 forbidden
    ├── NotFound                   404 not-found  (also: denied reads, by design)
    ├── MethodNotAllowed           405 not-supported (carries the allowed methods)
    ├── NotAcceptable              406 not-supported
    ├── RequestTimeout             408 timeout (the body did not arrive in time)
    ├── Conflict                   409 conflict (the resource's state forbids the change)
    ├── PreconditionFailed         412 conflict (If-Match names another version)
    ├── PayloadTooLarge            413 too-long
    ├── UriTooLong                 414 too-long
    ├── UnsupportedMediaType       415 not-supported
    ├── UnprocessableEntity        422 processing
    ├── TooManyRequests            429 throttled (carries Retry-After)
    ├── UpstreamError              502 transient (upstream unreachable / broken answer)
    ├── ServiceUnavailable         503 transient (overload, ledger unavailable)
    └── UpstreamTimeout            504 timeout

:class:`SettingsError` is not an HTTP error: it stops the gateway at start with a message.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "GatewayError",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "PathRejected",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SettingsError",
    "TooManyRequests",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "UriTooLong",
    "UpstreamError",
    "UpstreamTimeout",
]


class GatewayError(Exception):
    """An error that becomes an HTTP response carrying a FHIR OperationOutcome.

    ``diagnostics`` is shown to the client: it must never hold PHI, stack traces or
    upstream internals. Callers write it for a human reading the response.
    """

    status: int = 500
    code: str = "exception"
    #: Seconds the client should wait before retrying (``Retry-After``, RFC 9110 §10.2.3);
    #: None: no such header.
    retry_after: int | None = None
    #: Problems to list one per OperationOutcome issue (e.g. every fault of an invalid
    #: Consent); empty: one issue carrying ``diagnostics``.
    issues: tuple[str, ...] = ()

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


class BadRequest(GatewayError):
    status = 400
    code = "invalid"

    def __init__(self, diagnostics: str, *, code: str = "invalid") -> None:
        super().__init__(diagnostics)
        self.code = code


class PathRejected(BadRequest):
    """The request path uses a form we refuse rather than normalise (dot segments, encoded
    slashes, empty segments, matrix parameters)."""


class Unauthorized(GatewayError):
    """No acceptable credentials (RFC 9110 §15.5.2). ``www_authenticate`` is the challenge the
    response carries, e.g. ``Bearer error="invalid_token"`` (RFC 6750 §3); it must be plain
    ASCII and must never echo the credential."""

    status = 401
    code = "login"

    def __init__(self, diagnostics: str, *, www_authenticate: str = "Bearer") -> None:
        super().__init__(diagnostics)
        self.www_authenticate = www_authenticate


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not-found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "not-supported"

    def __init__(self, diagnostics: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(diagnostics)
        self.allowed = allowed


class NotAcceptable(GatewayError):
    status = 406
    code = "not-supported"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class RequestTimeout(GatewayError):
    """RFC 9110 §15.5.9: the request did not arrive whole within the server's time."""

    status = 408
    code = "timeout"


class PreconditionFailed(GatewayError):
    """A conditional request's precondition (``If-Match``, RFC 9110 §13.1.1) does not hold;
    FHIR R4 http.html#concurrency answers version conflicts with 412."""

    status = 412
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "too-long"


class UriTooLong(GatewayError):
    """RFC 9110 §15.5.15: the request target is longer than the gateway interprets."""

    status = 414
    code = "too-long"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "not-supported"


class UnprocessableEntity(GatewayError):
    status = 422
    code = "processing"


class TooManyRequests(GatewayError):
    """RFC 6585 §4: the caller's request rate is over its limit; ``retry_after`` seconds
    until a request will be accepted again."""

    status = 429
    code = "throttled"

    def __init__(self, diagnostics: str, *, retry_after: int) -> None:
        super().__init__(diagnostics)
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    status = 502
    code = "transient"


class ServiceUnavailable(GatewayError):
    """The gateway cannot serve now (the ledger cannot commit, its queue is full, a store or
    the token issuer's keys are unreachable). Every 503 says when to retry: RFC 9110
    §15.6.4 lets a server send ``Retry-After`` with 503, and clients and load balancers that
    honour it back off instead of retrying at once into the same overload."""

    status = 503
    code = "transient"
    retry_after: int | None = 1


class UpstreamTimeout(GatewayError):
    status = 504
    code = "timeout"


class SettingsError(Exception):
    """A setting is missing or invalid; raised once at start, never per request."""
