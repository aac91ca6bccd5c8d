"""The gateway's own ``AuditEvent`` API: it is the Audit Record Repository (IHE ITI-81).

A small ASGI app the gateway serves itself and never forwards (:func:`serves` says which
paths; the proxy refuses AuditEvent in any other form: ``pipeline.judge.GATEWAY_OWNED``):

=========================================  ===================================================
request                                    answer
=========================================  ===================================================
``GET {base}/AuditEvent?...``,             ITI-81 search (:mod:`middleware.audit.search`): a
``POST {base}/AuditEvent/_search``         ``searchset`` of rendered BALP events, paged by a
                                           sealed cursor (:mod:`middleware.pipeline.cursor`)
                                           holding the keyset place ``(recorded_us, index)``
``GET {base}/AuditEvent/<index>-<n>``      one event (:mod:`middleware.audit.searchset`)
``GET {base}/AuditEvent/$export``,         FHIR Bulk Data kick-off (``Prefer: respond-async``;
``GET {base}/$export?_type=AuditEvent``    ``_since``, ``_type``, ``_outputFormat``), auditor only
``GET|DELETE .../AuditEvent/$export-``     status (202 + ``X-Progress``, then the manifest) and
``status/<job>``                           cancel (:mod:`middleware.audit.bulk`)
``GET .../AuditEvent/$export-file/<job>/`` one NDJSON output file
``<n>``
``GET {base}/Patient/<id>/$accounting``    the accounting of disclosures (:mod:`.accounting_http`)
``GET|POST .../AuditEvent/$review``,       the compliance reviewer's operations: overview,
``GET .../AuditEvent/$overview``,          break-the-glass review, date-range and access
``.../AuditEvent/$date-range``,            reports (:mod:`.oversight_http`)
``.../Patient/<id>/$access-report``
=========================================  ===================================================

One request: the path is routed (404/405, not recorded), the bearer token verified (401, not
recorded: a caller that proved nothing costs nothing durable), the reader decided
(:mod:`middleware.audit.access`: 403), the answer computed, and then **the access itself is
recorded on the ledger** through the audit recorder, as a BALP Query (searches) or Read event
naming the patient it was about, whatever the answer's status. Only once that entry is
durable is the answer released; if the ledger cannot take it the answer is a 503 and nothing
is released (ARCHITECTURE invariant 1). Every error is an OperationOutcome.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import parse_qsl

from middleware.asgi import header_dict, read_body
from middleware.audit.access import audit_reader
from middleware.audit.bulk import ExportJobs
from middleware.audit.exports import BulkExport
from middleware.audit.httptypes import (
    Recorder,
    Reply,
    Seen,
    TokenCheck,
    error_reply,
    send_reply,
)
from middleware.audit.oversight_http import Oversight
from middleware.audit.recorder import Exchange
from middleware.audit.searching import Searching
from middleware.auth.identity import Identity
from middleware.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PathRejected,
    ServiceUnavailable,
)
from middleware.fhir.negotiate import check_accept
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.logging import get_logger
from middleware.proxy.headers import request_id
from middleware.types import Receive, Scope, Send

__all__ = ["Accounting", "AuditApi", "serves", "store_failure"]

_FORM: Final = "application/x-www-form-urlencoded"
# A path segment this API can route: FHIR ids (R4 §2.24.0.1), operation names, job ids.
_SEGMENT: Final = re.compile(r"[A-Za-z0-9\-.$_]{1,64}")
#: Operations on ``{base}/Patient/<id>`` this API answers (:mod:`.oversight_http`).
_PATIENT_OPERATIONS: Final = frozenset({"$accounting", "$access-report"})
#: The compliance reviewer's operations on ``{base}/AuditEvent`` (:mod:`.oversight_http`).
_OVERSIGHT: Final = frozenset({"$overview", "$review", "$date-range"})

#: The ``$accounting`` handler: (caller, the request's record, patient id, params, headers).
Accounting = Callable[
    [Identity, Seen, str, list[tuple[str, str]], Mapping[str, str]], Awaitable[Reply]
]


def serves(path: str, base_path: str, query: bytes = b"") -> bool:
    """True when this API (not the proxy) answers ``path`` with ``query`` (the raw query
    string). A system-level ``{base}/$export`` is this API's only when its ``_type`` names
    AuditEvent (alone, or with other types, which the kick-off refuses): any other system
    export is the normal pipeline's to refuse or forward by its own rules."""
    root = f"{base_path}/AuditEvent"
    if path == f"{base_path}/$export":
        return _names_audit_event(query)
    if path == root or path.startswith(root + "/"):
        return True
    parts = path[len(base_path) :].split("/") if path.startswith(base_path + "/") else []
    return len(parts) == 4 and parts[1] == "Patient" and parts[3] in _PATIENT_OPERATIONS


def _names_audit_event(query: bytes) -> bool:
    """Whether a ``_type`` of ``query`` lists AuditEvent (an undecodable query does not)."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        return False
    return any(
        name == "_type" and "AuditEvent" in (t.strip() for t in value.split(","))
        for name, value in pairs
    )


class AuditApi:
    """ASGI app for the paths :func:`serves` names (module docstring).

    ``searching`` answers searches and reads, ``exports`` bulk exports, ``accounting`` the
    ``$accounting`` operation (None: 404); ``recorder`` records every authenticated access;
    ``role`` is the auditor role (setting ``audit_role``)."""

    def __init__(
        self,
        *,
        verifier: TokenCheck,
        recorder: Recorder,
        searching: Searching,
        exports: BulkExport,
        accounting: Accounting | None = None,
        oversight: Oversight | None = None,
        base_path: str,
        role: str,
        max_request_bytes: int,
        body_timeout: float | None = None,
        access_log: bool = True,
    ) -> None:
        self._verifier = verifier
        self._recorder = recorder
        self.searching = searching
        self.exports = exports
        self._accounting = accounting
        self._oversight = oversight
        self._base = base_path
        self._role = role
        self._max = max_request_bytes
        self._body_timeout = body_timeout
        self._access_log = access_log
        self._log = get_logger("consentry.audit")

    @property
    def jobs(self) -> ExportJobs:
        """The bulk export jobs (on a SQLite store, shared by its worker processes)."""
        return self.exports.jobs

    async def aclose(self) -> None:
        """Cancel running exports."""
        await self.exports.jobs.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope.get("headers", []))
        seen = Seen(request_id(headers))
        identity: Identity | None = None
        try:
            segments, seen.request = self._route(scope)
            identity = await self._verifier.verify(headers.get("authorization"))
            reply = await self._answer(
                scope, receive, headers=headers, seen=seen, identity=identity, segments=segments
            )
        except GatewayError as error:
            reply = error_reply(error)
        except Exception as exc:  # noqa: BLE001 - fail closed: no detail in the answer
            unavailable = store_failure(exc)
            self._log.error(
                "audit api store unavailable" if unavailable else "audit api unhandled",
                request_id=seen.rid,
                error_type=type(exc).__name__,
            )
            reply = error_reply(
                ServiceUnavailable("audit trail unavailable")
                if unavailable
                else GatewayError("internal error")
            )
        if identity is not None and seen.request is not None:
            try:
                await self._recorder.record(
                    self._exchange(scope, seen, identity, reply), "exchange"
                )
            except ServiceUnavailable as refused:  # nothing released without its entry
                reply = error_reply(refused)
            except Exception as exc:  # noqa: BLE001 - unrecordable: fail closed, as unavailable
                self._log.error(
                    "audit api access not recorded",
                    request_id=seen.rid,
                    error_type=type(exc).__name__,
                )
                reply = error_reply(ServiceUnavailable("audit trail unavailable"))
        await send_reply(send, reply, seen.rid)
        if self._access_log:
            self._log.info(
                "audit api",
                request_id=seen.rid,
                method=scope["method"],
                interaction=None if seen.request is None else seen.request.interaction.value,
                status=reply.status,
                duration_ms=round((time.perf_counter() - seen.started) * 1000, 3),
            )

    def _route(self, scope: Scope) -> tuple[list[str], FhirRequest]:
        """The path's segments below the base and the FHIR request it is (for the audit)."""
        raw = scope.get("raw_path") or b""
        path: str = scope["path"]
        if b"%" in raw.split(b"?", 1)[0] or "%" in path:
            raise PathRejected("audit paths take no percent-encoding")
        segments = path[len(self._base) + 1 :].split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise PathRejected("the path has an empty, '.' or '..' segment")
        if not all(_SEGMENT.fullmatch(s) for s in segments):
            raise NotFound("not an AuditEvent API path")
        method, query = str(scope["method"]), bytes(scope.get("query_string", b""))
        rel = "/".join(segments)
        match segments:
            case ["AuditEvent"]:
                _allow(method, "GET")
                return segments, FhirRequest(
                    Interaction.SEARCH_TYPE, method, Level.TYPE, rel, query, "AuditEvent"
                )
            case ["AuditEvent", "_search"]:
                _allow(method, "POST")
                return segments, FhirRequest(
                    Interaction.SEARCH_TYPE,
                    method,
                    Level.TYPE,
                    rel,
                    query,
                    "AuditEvent",
                    via_post=True,
                )
            case ["AuditEvent", "$export"] | ["$export"]:
                _allow(method, "GET")
                return segments, _operation(method, rel, query, "$export", None)
            case ["AuditEvent", "$export-status", job]:
                _allow(method, "GET", "DELETE")
                return segments, _operation(method, rel, query, "$export-status", job)
            case ["AuditEvent", "$export-file", job, _]:
                _allow(method, "GET")
                return segments, _operation(method, rel, query, "$export-file", job)
            case ["AuditEvent", name] if name in _OVERSIGHT and self._oversight is not None:
                _allow(method, *(("GET", "POST") if name == "$review" else ("GET",)))
                return segments, _operation(method, rel, query, name, None)
            case ["Patient", pid, "$access-report"] if self._oversight is not None:
                _allow(method, "GET")
                return segments, _patient_operation(method, rel, query, pid, "$access-report")
            case ["AuditEvent", event]:
                _allow(method, "GET")
                return segments, FhirRequest(
                    Interaction.READ, method, Level.INSTANCE, rel, query, "AuditEvent", event
                )
            case ["Patient", pid, "$accounting"] if self._accounting is not None:
                _allow(method, "GET")
                return segments, _patient_operation(method, rel, query, pid, "$accounting")
        raise NotFound("not an AuditEvent API path")

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        *,
        headers: Mapping[str, str],
        seen: Seen,
        identity: Identity,
        segments: list[str],
    ) -> Reply:
        params = _query(bytes(scope.get("query_string", b"")))
        if segments[-1] == "_search" or scope["method"] == "POST":
            seen.form = await self._form(receive, headers)
            params += _query(seen.form)
        if self._oversight is not None and (
            segments[-1] == "$access-report" or segments[-1] in _OVERSIGHT
        ):
            return await self._oversight.answer(
                identity,
                seen,
                segments[-1],
                params,
                method=str(scope["method"]),
                patient_id=segments[1] if segments[0] == "Patient" else None,
            )
        if segments[0] == "Patient" and self._accounting is not None:
            return await self._accounting(identity, seen, segments[1], params, headers)
        if segments[1:2] not in (["$export-status"], ["$export-file"]):
            # Bulk Data's status answers application/json and its files NDJSON, whatever
            # the client accepts; everything else is FHIR JSON.
            check_accept(headers, params)
        match segments:
            case ["AuditEvent"] | ["AuditEvent", "_search"]:
                reader = audit_reader(identity, role=self._role, permission="s")
                return await self.searching.search(identity, reader, seen, params)
            case ["AuditEvent", "$export"] | ["$export"]:
                self._auditor(identity)
                system = segments == ["$export"]
                return self.exports.kick_off(identity, params, headers, system=system)
            case ["AuditEvent", "$export-status", job]:
                self._auditor(identity)
                if scope["method"] == "DELETE":
                    return self.exports.cancel(identity, job)
                return self.exports.status(identity, job)
            case ["AuditEvent", "$export-file", job, n]:
                self._auditor(identity)
                return self.exports.file(identity, job, n)
            case ["AuditEvent", event]:
                if any(name != "_format" for name, _ in params):
                    raise BadRequest("a read takes no parameters", code="not-supported")
                reader = audit_reader(identity, role=self._role, permission="r")
                return await self.searching.read(reader, seen, event)
        raise NotFound("not an AuditEvent API path")

    def _auditor(self, identity: Identity) -> None:
        """Raise Forbidden unless ``identity`` is an auditor (bulk export is theirs only)."""
        reader = audit_reader(identity, role=self._role, permission="s")
        if reader.as_ != "auditor":
            raise Forbidden("bulk export of the audit trail is for auditors only")

    async def _form(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        body = await read_body(receive, headers, self._max, within=self._body_timeout)
        if body and kind != _FORM:
            raise BadRequest(f"POST _search takes a {_FORM} body", code="not-supported")
        return body

    def _exchange(self, scope: Scope, seen: Seen, identity: Identity, reply: Reply) -> Exchange:
        assert seen.request is not None
        target = bytes(scope.get("raw_path") or str(scope["path"]).encode("utf-8"))
        query = bytes(scope.get("query_string", b""))
        raw = (
            str(scope["method"]).encode("ascii") + b" " + target + (b"?" + query if query else b"")
        )
        if seen.form:
            raw += b"\r\n\r\n" + seen.form
        client = scope.get("client")
        patient = seen.patient
        return Exchange(
            request=seen.request,
            identity=identity,
            status=reply.status,
            request_id=seen.rid,
            raw_request=raw,
            client_address=client[0] if client else None,
            decisions={} if patient is None else {patient: None},
            # Not a disclosure of the record (kind ACCESS_DECISION): reviewing the audit
            # trail is the covered entity's own oversight, or the patient's own review, and
            # neither is accountable (45 CFR 164.528(a)(1)(i), (ii)); the search shows it.
            released=frozenset(),
        )


#: Top-level packages whose exceptions are a store's failure (this core module imports
#: neither: the import contracts keep database drivers under middleware.storage).
_STORE_DRIVERS: Final = frozenset({"sqlite3", "_sqlite3", "asyncpg"})


def store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the audit store failing rather than a bug: an error a database
    driver raised (SQLite's ``OperationalError`` for a locked or missing file, asyncpg's
    connection errors) that the store did not translate, or an OS error or timeout (a lost
    connection). The API answers these 503 "audit trail unavailable", as it does the
    translated :class:`~middleware.errors.ServiceUnavailable`: the client may retry, and
    nothing was released (RFC 9110 §15.6.4)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    return any(kind.__module__.partition(".")[0] in _STORE_DRIVERS for kind in type(exc).__mro__)


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowed(f"{method} is not allowed here", allowed=allowed)


def _operation(method: str, path: str, query: bytes, name: str, rid: str | None) -> FhirRequest:
    level = Level.SYSTEM if path.startswith("$") else Level.TYPE
    return FhirRequest(
        Interaction.OPERATION,
        method,
        level,
        path,
        query,
        None if level is Level.SYSTEM else "AuditEvent",
        rid,
        operation=name,
    )


def _patient_operation(method: str, path: str, query: bytes, pid: str, name: str) -> FhirRequest:
    return FhirRequest(
        Interaction.OPERATION, method, Level.INSTANCE, path, query, "Patient", pid, operation=name
    )


def _query(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise BadRequest("the query must be percent-encoded ASCII") from exc
