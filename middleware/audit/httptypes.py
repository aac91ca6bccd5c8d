"""The vocabulary the AuditEvent API's parts share (:mod:`middleware.audit.http`,
:mod:`middleware.audit.searching`, :mod:`middleware.audit.exports`): what they need of the
token verifier, the audit index and the recorder, the rendered events of an entry, one answer
(:class:`Reply`) and what a request accumulates for its own audit entry (:class:`Seen`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from middleware.audit.recorder import Exchange, Phase
from middleware.audit.row import AuditQuery, AuditRow
from middleware.auth.identity import Identity
from middleware.errors import GatewayError
from middleware.fhir.jsoncodec import encode
from middleware.fhir.outcome import FHIR_JSON, render_error
from middleware.fhir.request import FhirRequest
from middleware.types import Send

__all__ = [
    "AuditIndex",
    "EventsOf",
    "EventsOfMany",
    "Json",
    "Recorder",
    "Reply",
    "Seen",
    "TokenCheck",
    "error_reply",
    "json_reply",
    "principal_of",
    "send_reply",
]

Json = dict[str, Any]


class TokenCheck(Protocol):
    """What the API needs of :class:`~middleware.auth.verify.TokenVerifier`."""

    async def verify(self, authorization: str | None) -> Identity: ...


class AuditIndex(Protocol):
    """The audit index of a ledger store (:mod:`middleware.storage.ledger_base`)."""

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]: ...

    async def audit_row(self, index: int) -> AuditRow | None: ...

    async def size(self) -> int: ...


class Recorder(Protocol):
    """What the API needs of :class:`~middleware.audit.recorder.AuditRecorder`."""

    async def record(
        self, exchange: Exchange, phase: Phase, *, intent: str | None = None
    ) -> list[int]: ...


#: The rendered BALP events of the entry at a ledger index; None when it has none to show
#: (shredded, or not an audit entry).
EventsOf = Callable[[int], Awaitable[list[Json] | None]]
#: The events of many entries, in order (``EvidenceReader.events_many``).
EventsOfMany = Callable[[Sequence[int]], Awaitable[list[list[Json] | None]]]


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: status, headers (str pairs) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(slots=True)
class Seen:
    """What one request accumulates for its audit entry and log line: the request id, the
    FHIR request it was, the form body of a ``POST _search``, the patient it was about."""

    rid: str
    request: FhirRequest | None = None
    form: bytes = b""
    patient: str | None = None
    started: float = field(default_factory=time.perf_counter)


def error_reply(error: GatewayError) -> Reply:
    """The OperationOutcome answer of ``error`` (:func:`~middleware.fhir.outcome.render_error`)."""
    status, raw, body = render_error(error)
    kept = tuple(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k != b"content-length"
    )
    return Reply(status, kept, body)


def json_reply(document: Any, status: int = 200, *, media_type: str = FHIR_JSON) -> Reply:
    """A JSON answer, never cached (audit data is PHI)."""
    headers = (("content-type", media_type), ("cache-control", "no-store"))
    return Reply(status, headers, encode(document))


async def send_reply(send: Send, reply: Reply, rid: str) -> None:
    """Send ``reply`` whole on the ASGI channel, with its length and the request id."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    out += [
        (b"content-length", str(len(reply.body)).encode()),
        (b"x-request-id", rid.encode()),
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": out})
    await send({"type": "http.response.body", "body": reply.body})


def principal_of(identity: Identity) -> str:
    """Who a cursor or an export job is bound to: the token's issuer and subject, and its
    launch patient (a login's app launched for another patient may not page through a search
    pinned to the first; ids hold no NUL, so the parts cannot run together)."""
    return f"{identity.issuer}\x00{identity.subject}\x00{identity.patient or ''}"
