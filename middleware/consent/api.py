"""The patient consent API: a small ASGI app the gateway serves itself, never forwarding.

The gateway hands it ``{base}/Consent`` and everything below ``{base}/Consent/`` (exact,
case-sensitive; :func:`serves`). One request, in order:

1. the path is checked (no percent-encoding, no empty, ``.`` or ``..`` segment: 400) and
   routed to an operation (:mod:`middleware.consent.operations`), else 404 / 405;
2. the bearer token is verified (:class:`~middleware.auth.verify.TokenVerifier`; 401 with a
   ``WWW-Authenticate`` challenge, not recorded: see :mod:`middleware.consent.service`);
3. negotiation: answers are FHIR JSON only (``Accept``, ``_format``: 406); bodies must be FHIR
   JSON (415) of at most ``max_request_bytes`` (413), arrived within ``body_timeout`` (408),
   not content-encoded;
4. the detached signature headers are read: ``X-Consent-Signature`` (base64 of the 64-byte
   Ed25519 signature) with ``X-Consent-Signer-Key`` (base64 of the 32-byte public key), both or
   neither;
5. :meth:`ConsentService.handle` runs the operation, records the attempt, builds the reply.

Every error is an OperationOutcome from :func:`~middleware.fhir.outcome.render_error`. An
exception nobody foresaw is a 500 without detail; once the token is verified it is recorded on
the ledger like any refusal (:meth:`ConsentService.unexpected`), before that there is nobody to
name and, as a 401 is, it is only logged and counted. Every
answer carries ``X-Request-Id`` (the client's when it is a safe token; the ledger's attempt
entries name it too) and gets one access log
line as the proxy's does: request id, method, interaction (the operation), status, duration
and refusal reason code (:mod:`middleware.ops.reasons`); never the path's consent id, the
query or a body. The answer is counted in ``/metrics`` by operation and status.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import parse_qsl

from middleware.asgi import header_dict, read_body
from middleware.auth.identity import Identity
from middleware.consent.access import Operation
from middleware.consent.operations import HANDLERS
from middleware.consent.service import Call, ConsentService, Reply, UnexpectedFailure
from middleware.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PathRejected,
    UnsupportedMediaType,
)
from middleware.fhir.limits import DEFAULT_MAX_JSON_DEPTH
from middleware.fhir.limits import depth as json_depth
from middleware.fhir.negotiate import check_accept, check_json_body
from middleware.fhir.outcome import render_error
from middleware.logging import get_logger
from middleware.ops.metrics import Metrics
from middleware.ops.reasons import refusal_reason, status_reason
from middleware.proxy.headers import request_id
from middleware.types import Receive, Scope, Send

__all__ = ["ConsentApi", "TokenCheck", "serves"]

_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 §2.24.0.1 "id"
_NO_QUERY: Final = frozenset({"_format"})
_OVERRIDE_HEADERS: Final = ("x-http-method-override", "x-http-method", "x-method-override")


class TokenCheck(Protocol):
    """What the API needs of :class:`~middleware.auth.verify.TokenVerifier`."""

    async def verify(self, authorization: str | None) -> Identity: ...


def serves(path: str, base_path: str) -> bool:
    """True when the consent API (not the proxy) answers ``path``."""
    root = f"{base_path}/Consent"
    return path == root or path.startswith(root + "/")


class ConsentApi:
    """ASGI app for the consent paths under ``base_path``."""

    def __init__(
        self,
        service: ConsentService,
        verifier: TokenCheck,
        *,
        base_path: str,
        max_request_bytes: int,
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
        metrics: Metrics | None = None,
        access_log: bool = True,
        body_timeout: float | None = None,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    ) -> None:
        """``closers`` release what the API was given to own (the verifier's HTTP client);
        ``metrics`` counts the answers; ``access_log`` writes one line per request;
        ``body_timeout`` is the seconds a body may take to arrive (408 beyond);
        ``max_json_depth`` the deepest body read (400 beyond, measured before decoding)."""
        self.service = service
        self.metrics = metrics
        self._access_log = access_log
        self._body_timeout = body_timeout
        self._closers = tuple(closers)
        self.verifier = verifier
        self._base = base_path
        self._root = f"{base_path}/Consent"
        self._max = max_request_bytes
        self._max_depth = max_json_depth
        self._log = get_logger("consentry.consent")

    async def aclose(self) -> None:
        """Close the consent store and whatever ``closers`` release (idempotent)."""
        await self.service.aclose()
        closers, self._closers = self._closers, ()
        for close in closers:
            await close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope.get("headers", []))
        seen = _Seen(request_id(headers), str(scope["method"]), time.perf_counter())
        reason: str | None = None
        try:
            reply = await self._handle(scope, receive, headers, seen)
        except GatewayError as error:
            reply = _error_reply(error)
            reason = refusal_reason(error)
        except Exception as exc:  # noqa: BLE001 - the last line of fail-closed error handling
            # Only before the token is verified (after it, the service records and refuses):
            # never a stack trace or library message in the answer (as in the proxy).
            self._log.error(
                "consent api unhandled", request_id=seen.rid, error_type=type(exc).__name__
            )
            reply = _error_reply(UnexpectedFailure("internal error"))
        headers_out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        if not any(k == b"content-length" for k, _ in headers_out):
            headers_out.append((b"content-length", str(len(reply.body)).encode()))
        headers_out.append((b"x-request-id", seen.rid.encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers_out})
        await send({"type": "http.response.body", "body": reply.body})
        self._observe(seen, reply.status, reason or status_reason(reply.status))

    def _observe(self, seen: _Seen, status: int, reason: str | None) -> None:
        """The answer's access log line and metrics (module docstring)."""
        seconds = time.perf_counter() - seen.started
        if self.metrics is not None:
            self.metrics.observe_consent(seen.operation, status, seconds)
            if reason is not None:
                self.metrics.observe_refusal(reason)
        if self._access_log:
            self._log.info(
                "consent api",
                request_id=seen.rid,
                method=seen.method,
                interaction=seen.operation,
                resource_type="Consent",
                status=status,
                duration_ms=round(seconds * 1000, 3),
                reason=reason,
            )

    async def _handle(
        self, scope: Scope, receive: Receive, headers: dict[str, str], seen: _Seen
    ) -> Reply:
        method = seen.method
        if any(name in headers for name in _OVERRIDE_HEADERS):
            # As the proxy does (fhir.classify): a method is what the request line says.
            raise BadRequest("method-override headers are not accepted", code="not-supported")
        operation, consent_id, version = self._route(scope, method)
        seen.operation = operation
        identity = await self.verifier.verify(headers.get("authorization"))
        try:
            call = await self._call(scope, receive, headers, seen, (operation, consent_id, version))
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - a caller is known: recorded, then refused
            early = Call(operation=operation, consent_id=consent_id, request_id=seen.rid)
            return await self.service.unexpected(identity, early, exc)
        return await self.service.handle(identity, call, HANDLERS[operation])

    async def _call(
        self,
        scope: Scope,
        receive: Receive,
        headers: dict[str, str],
        seen: _Seen,
        route: tuple[Operation, str | None, str | None],
    ) -> Call:
        """The :class:`Call` of an authenticated request: negotiation, query, body and
        signature checked (steps 3 and 4 of the module docstring)."""
        operation, consent_id, version = route
        method = seen.method
        query = _query(scope.get("query_string", b""))
        check_accept(headers, query)
        if operation != "search" and any(name not in _NO_QUERY for name, _ in query):
            raise BadRequest(f"{operation} takes no search parameters", code="not-supported")
        body = await self._body(receive, headers) if method in ("POST", "PUT") else b""
        return Call(
            operation=operation,
            consent_id=consent_id,
            version=version,
            body=body,
            query=tuple((n, v) for n, v in query if n not in _NO_QUERY),
            signature=_signature(headers),
            if_match=headers.get("if-match"),
            self_link=self._self_link(consent_id),
            request_id=seen.rid,
        )

    def _route(self, scope: Scope, method: str) -> tuple[Operation, str | None, str | None]:
        raw = scope.get("raw_path") or b""
        path: str = scope["path"]
        if b"%" in raw.split(b"?", 1)[0] or "%" in path or not serves(path, self._base):
            raise PathRejected("consent paths take no percent-encoding")
        rest = path[len(self._root) :]
        segments = rest.split("/")[1:] if rest else []
        if any(s in ("", ".", "..") for s in segments):
            raise PathRejected("the path has an empty, '.' or '..' segment")
        match segments:
            case []:
                return _method(method, {"GET": "search", "POST": "create"}), None, None
            case ["$explain"]:
                return _method(method, {"POST": "explain"}), None, None
            case ["$register-key"]:
                return _method(method, {"POST": "register-key"}), None, None
            case [cid]:
                return _method(method, {"GET": "read", "PUT": "update"}), _id(cid), None
            case [cid, "$revoke"]:
                return _method(method, {"POST": "revoke"}), _id(cid), None
            case [cid, "_history"]:
                return _method(method, {"GET": "history"}), _id(cid), None
            case [cid, "_history", vid]:
                return _method(method, {"GET": "vread"}), _id(cid), vid
        raise NotFound("not a consent API path")

    async def _body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        if headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise UnsupportedMediaType("consent API bodies are not content-encoded")
        body = await read_body(receive, headers, self._max, within=self._body_timeout)
        if body:
            check_json_body(headers)
            if json_depth(body, self._max_depth) > self._max_depth:
                raise BadRequest(
                    f"the request body nests deeper than {self._max_depth} levels",
                    code="too-costly",
                )
        return body

    def _self_link(self, consent_id: str | None) -> str:
        base = self.service.base_url
        return f"{base}/Consent/{consent_id}/_history" if consent_id else f"{base}/Consent"


@dataclass(slots=True)
class _Seen:
    """What one request accumulates for its log line: request id, method, start time, and
    the operation once the path named one."""

    rid: str
    method: str
    started: float
    operation: str = "invalid"


def _error_reply(error: GatewayError) -> Reply:
    status, raw, body = render_error(error)
    return Reply(status, tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw), body)


def _method(method: str, allowed: Mapping[str, Operation]) -> Operation:
    operation = allowed.get(method)
    if operation is None:
        raise MethodNotAllowed(f"{method} is not allowed here", allowed=tuple(sorted(allowed)))
    return operation


def _id(value: str) -> str:
    if not _ID.fullmatch(value) or not value.strip("."):
        raise NotFound("not a valid Consent id")
    return value


def _query(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise BadRequest("the query string must be percent-encoded ASCII") from exc


def _signature(headers: Mapping[str, str]) -> tuple[bytes, bytes] | None:
    signature, key = headers.get("x-consent-signature"), headers.get("x-consent-signer-key")
    if signature is None and key is None:
        return None
    if signature is None or key is None:
        raise BadRequest("X-Consent-Signature and X-Consent-Signer-Key go together")
    try:
        decoded = base64.b64decode(signature, validate=True), base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("X-Consent-Signature and X-Consent-Signer-Key are base64") from exc
    if len(decoded[0]) != 64 or len(decoded[1]) != 32:
        raise BadRequest("an Ed25519 signature is 64 bytes and its public key 32 bytes")
    return decoded[1], decoded[0]
