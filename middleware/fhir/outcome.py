"""The one place that renders errors as FHIR OperationOutcome responses.

An OperationOutcome (http://hl7.org/fhir/R4/operationoutcome.html) carries one issue with
severity ``error``, the issue code the error class names, and the error's ``diagnostics``
text. Nothing else goes in: no stack trace, no upstream body, no resource id from the request.
"""

from __future__ import annotations

import msgspec

from middleware.errors import GatewayError, MethodNotAllowed, Unauthorized

__all__ = ["FHIR_JSON", "operation_outcome", "render_error"]

FHIR_JSON = "application/fhir+json; charset=utf-8"

_encoder = msgspec.json.Encoder()


def operation_outcome(
    code: str, diagnostics: str | tuple[str, ...], *, severity: str = "error"
) -> bytes:
    """Return the JSON bytes of an OperationOutcome: one issue per diagnostics text."""
    texts = (diagnostics,) if isinstance(diagnostics, str) else diagnostics
    issues = [{"severity": severity, "code": code, "diagnostics": text} for text in texts]
    return _encoder.encode({"resourceType": "OperationOutcome", "issue": issues})


def render_error(error: GatewayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Return (status, headers, body) for ``error``; the only renderer of errors."""
    body = operation_outcome(error.code, error.issues or error.diagnostics)
    headers = [
        (b"content-type", FHIR_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if isinstance(error, MethodNotAllowed):
        headers.append((b"allow", ", ".join(error.allowed).encode()))
    if isinstance(error, Unauthorized):
        # RFC 9110 §15.5.2: a 401 response MUST carry a WWW-Authenticate challenge.
        headers.append((b"www-authenticate", error.www_authenticate.encode("ascii", "replace")))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, headers, body
