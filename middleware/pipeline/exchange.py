"""The values the enforcement stages pass around for one exchange, and the upstream seam.

The pipeline never holds an HTTP client: the proxy hands it a :class:`Forwarder` bound to the
client's request (its allow-listed headers, request id, forwarding headers), and receives an
:class:`Answer` to release. Upstream answers arrive as :class:`Upstreamed`: status, allow-listed
headers, and the body decoded when it is JSON.

:func:`upstream_failure` is the one place an upstream error answer becomes the client's: the
status is kept, the upstream's OperationOutcome is *not* (its diagnostics can name other
patients' records, e.g. the matches of a conditional write), except for the structured part
(codes, elements; no free text) of 400/422 answers to a plain create/update/patch, which
describe the caller's own submitted resource. A 404 or 410
becomes the same generic 404 a denied record gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from middleware.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
    UpstreamError,
)
from middleware.fhir.request import FhirRequest
from middleware.pipeline.caller import Caller
from middleware.pipeline.judge import Trail

__all__ = [
    "NOT_FOUND",
    "Answer",
    "Ask",
    "Forwarder",
    "UpstreamRefused",
    "Upstreamed",
    "not_found",
    "own_outcome",
    "upstream_failure",
]

#: The one text of every 404 the pipeline answers: a denied record and a missing one alike.
NOT_FOUND: Final = "not found"


@dataclass(slots=True)
class Upstreamed:
    """An upstream answer read whole: ``headers`` allow-listed with lower-case names (and
    ``Location`` rebased), ``document`` the decoded JSON body or None."""

    status: int
    headers: list[tuple[str, str]]
    document: Any = None
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        return next((v for k, v in self.headers if k == name), None)


class Forwarder(Protocol):
    """Sends one request upstream for the current exchange.

    ``target`` is a path and query relative to the upstream base (``Observation?code=x``) or an
    absolute URL the caller has checked lies on the upstream base. With ``client_headers``
    the client's allow-listed headers go along (``Prefer``, ``If-Match``...); without, only
    ``headers`` and the gateway's own (internal fetches: a write's current state, a
    conditional target). ``headers`` win over the client's.
    """

    async def __call__(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        client_headers: bool = True,
    ) -> Upstreamed: ...


@dataclass(slots=True)
class Ask:
    """One exchange as the pipeline receives it: the classified request, its body, the
    client's headers (lower-case names), the verified caller, the upstream seam bound to this
    exchange, the client's own request URL on the gateway (for ``self`` links), the trail the
    audit record is built from, and what that record names: the request id, the request as
    received, the client's address."""

    request: FhirRequest
    body: bytes
    headers: Mapping[str, str]
    caller: Caller
    forward: Forwarder
    self_url: str
    request_id: str
    raw_request: bytes
    client_address: str | None
    trail: Trail = field(default_factory=Trail)


@dataclass(slots=True)
class Answer:
    """What to release: status, headers (lower-case names), and a JSON document (None: no
    body), or ``raw``: the upstream's own bytes when the pipeline changed nothing in them
    (architecture invariant 6: decimals, key order and spacing pass through unchanged)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    document: Any = None
    raw: bytes | None = None


def not_found() -> NotFound:
    """The generic 404, the same for a denied record as for a missing one."""
    return NotFound(NOT_FOUND)


_BY_STATUS: Final[Mapping[int, type[GatewayError]]] = {
    400: BadRequest,
    403: Forbidden,
    409: Conflict,
    412: PreconditionFailed,
    422: UnprocessableEntity,
}
_OWN_BODY: Final = frozenset({400, 422})


def upstream_failure(up: Upstreamed, request: FhirRequest) -> GatewayError | Answer:
    """The client's answer to an upstream error status (>= 400); see the module docstring."""
    if up.status in (404, 410):
        return not_found()
    if (
        up.status in _OWN_BODY
        and request.is_write
        and not request.conditional
        and request.resource_type is not None
        and isinstance(up.document, dict)
        and up.document.get("resourceType") == "OperationOutcome"
    ):
        return Answer(up.status, _content_type(up), own_outcome(up.document))
    cls = _BY_STATUS.get(up.status)
    if cls is not None:
        return cls(f"the upstream server refused the request ({up.status})")
    if 400 <= up.status < 500:
        return UpstreamRefused(up.status)
    return UpstreamError(f"the upstream server failed ({up.status})")


class UpstreamRefused(GatewayError):
    """Another 4xx of the upstream (405, 406, 413, 429...): the status is the client's to
    know (what it asked for is not supported or not now), the upstream's wording is not."""

    code = "not-supported"

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream server refused the request ({status})")
        self.status = status


_STRUCTURED: Final = ("severity", "code", "expression", "location")


def own_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    """The structured part of an upstream OperationOutcome about the caller's own body: each
    issue's severity, code, coded details and the element it is about. Free text
    (``diagnostics``, ``details.text``) is dropped: an upstream can word a refusal with what
    it found elsewhere ("identifier already used by Patient/x"), an answer the caller's consent
    was never asked about."""
    issues: list[dict[str, Any]] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        kept = {key: issue[key] for key in _STRUCTURED if key in issue}
        details = issue.get("details")
        if isinstance(details, dict) and isinstance(details.get("coding"), list):
            kept["details"] = {"coding": details["coding"]}
        issues.append(kept)
    return {"resourceType": "OperationOutcome", "issue": issues or [_PROCESSING_ISSUE]}


_PROCESSING_ISSUE: Final = {"severity": "error", "code": "processing"}


def _content_type(up: Upstreamed) -> list[tuple[str, str]]:
    value = up.header("content-type")
    return [("content-type", value)] if value else []
