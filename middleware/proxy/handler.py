"""The ASGI edge: the first of a request's three stages, for everything under the FHIR base.

One request, in order: classify (:mod:`middleware.fhir.classify`, from the request line and
headers alone; anything unclassified is refused and never forwarded), identify the caller
(:mod:`middleware.proxy.admission`: the bearer token within its address's and principal's
rates; 401 or 429 without reading the body), read the body (:mod:`middleware.proxy.body`)
under a size cap and a deadline, check negotiation, then call the next stage, the enforced
pipeline (:mod:`middleware.proxy.enforcement`: decide, forward through the upstream forwarder
(:mod:`middleware.proxy.forwarder`), filter, map, audit), and send its answer
(:mod:`middleware.proxy.respond`). Each stage calls only the next; none calls back. Only the
public CapabilityStatement is served without a token, through
:mod:`middleware.proxy.metadata`. Every failure becomes an OperationOutcome through
:func:`middleware.fhir.outcome.render_error`; a refusal the pipeline did not see is recorded
here once the caller proved who it is (:meth:`ProxyHandler._audited`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from middleware.asgi import header_dict
from middleware.auth.identity import Identity
from middleware.errors import GatewayError, NotFound, TooManyRequests, UriTooLong
from middleware.fhir.classify import classify, classify_bundle
from middleware.fhir.negotiate import (
    check_request_negotiation,
    is_xml_body,
    media_type,
    prefers_xml,
    split_format,
)
from middleware.fhir.request import Interaction
from middleware.fhir.xmlcodec import xml_to_json
from middleware.fhir.xmlrender import json_to_xml
from middleware.logging import get_logger
from middleware.ops.metrics import Metrics
from middleware.ops.reasons import refusal_reason, status_reason
from middleware.ops.tracing import Marks, Tracing, stage
from middleware.pipeline.exchange import Answer
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.proxy.admission import Admission
from middleware.proxy.body import announces_body, bundle_type, read_request_body
from middleware.proxy.enforcement import Enforcement
from middleware.proxy.exchange_log import ExchangeLog, log_access
from middleware.proxy.forwarder import UpstreamForwarder
from middleware.proxy.headers import request_id
from middleware.proxy.metadata import Capabilities
from middleware.proxy.respond import FHIR_JSON, FHIR_XML, send_answer, send_bytes, send_error
from middleware.settings import Settings
from middleware.types import Receive, Scope, Send

__all__ = ["MAX_QUERY_BYTES", "ProxyHandler"]

#: Longest query string interpreted (a longer one is 414; POST _search carries long searches).
MAX_QUERY_BYTES: Final = 16 * 1024

#: HTTP versions whose request framing is its headers alone: a request without
#: Transfer-Encoding or Content-Length has no body (RFC 9112 §6.3 rule 7), so nothing is read.
_LENGTH_FRAMED: Final = frozenset({"1.0", "1.1"})
#: An XML body larger than this is converted in a worker thread, off the event loop
#: (converting costs about 2 us per element: 64 KiB is a few milliseconds at most).
_INLINE_XML_BYTES: Final = 64 * 1024
_FORM: Final = "application/x-www-form-urlencoded"


class _InternalError(GatewayError):
    status = 500
    code = "exception"


class ProxyHandler:
    """The ASGI app of the FHIR base path: the edge stage (module docstring).

    Every part comes in built: ``forwarder`` (the one upstream client, closed by
    :meth:`aclose`; the edge itself uses it only for the public CapabilityStatement),
    ``enforcement`` (the pipeline, which holds its own reference to the same forwarder);
    ``clock`` returns seconds (rate limits, the CapabilityStatement's cache); ``tracing``
    (None: off) opens each request's server span (:mod:`middleware.ops.tracing`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        forwarder: UpstreamForwarder,
        enforcement: Enforcement,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.forwarder = forwarder
        self.enforcement = enforcement
        self.metrics = metrics
        self._admission = Admission(settings, enforcement, clock=clock)
        self._capabilities = Capabilities(settings, forwarder, clock=clock)
        #: The cached CapabilityStatement and its XML rendering (public: rendered once).
        self._statement_xml: tuple[bytes, bytes] | None = None
        self._log = get_logger("consentry.proxy")

    async def aclose(self) -> None:
        """Close the upstream pool if it was opened (``tracing`` is closed by its owner,
        last: :meth:`middleware.app.Gateway.aclose`)."""
        await self.forwarder.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope["headers"])
        exchange = ExchangeLog(
            rid=request_id(headers), method=scope["method"], started=time.perf_counter()
        )
        exchange.body_pending = announces_body(headers)
        if self.tracing is None:
            await self._serve(scope, receive, send, headers, exchange)
            return
        with self.tracing.request(headers) as marks:
            try:
                await self._serve(scope, receive, send, headers, exchange)
            finally:
                _mark(marks, exchange)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        exchange: ExchangeLog,
    ) -> None:
        """One request, answered (errors rendered), counted and logged."""
        self.metrics.in_flight += 1
        try:
            await self._handle(scope, receive, send, headers, exchange)
        except GatewayError as error:
            answered = await self._audited(scope, exchange, error)
            exchange.reason = refusal_reason(answered, consent_denied=exchange.consent_denied)
            xml = prefers_xml(headers, scope.get("query_string", b""))
            await send_error(send, answered, exchange, xml=xml)
        except Exception as exc:  # noqa: BLE001 - the last line of fail-closed error handling
            # Never a stack trace or library message in the answer; the type is enough to
            # find the log line by request id.
            self._log.error("unhandled", request_id=exchange.rid, error_type=type(exc).__name__)
            internal = await self._audited(scope, exchange, _InternalError("internal error"))
            xml = prefers_xml(headers, scope.get("query_string", b""))
            await send_error(send, internal, exchange, xml=xml)
        finally:
            self.metrics.in_flight -= 1
            seconds = time.perf_counter() - exchange.started
            self.metrics.observe_request(exchange.interaction, exchange.status, seconds)
            if exchange.reason is None:
                exchange.reason = status_reason(exchange.status)
            if exchange.reason is not None:
                self.metrics.observe_refusal(exchange.reason)
            if exchange.reason is not None and exchange.anonymous_refusal():
                self._admission.tally_anonymous(exchange.reason)
            elif self.settings.access_log:
                log_access(self._log, exchange, seconds)

    async def _audited(self, scope: Scope, ex: ExchangeLog, error: GatewayError) -> GatewayError:
        """``error``, once a refusal the enforcement stage did not see (classification, body,
        negotiation) is on the ledger; a 503 instead when it cannot be recorded. The public
        CapabilityStatement is not audited; neither is a 429 (the limit bounds the ledger's
        growth too) nor a refusal of a caller that does not prove who it is (a refusal made
        before identification is recorded only when the request's token verifies).

        Such a refusal is identified as any request is (:meth:`Admission.identify`): a token
        that verified before whatever its address's budget, so an address spent by others'
        bad tokens never hides a verified caller's refusal. A verified caller over its own
        rate is answered that 429 instead, unrecorded: never a refusal that goes unrecorded."""
        if ex.audited or ex.interaction == "capabilities":
            return error
        if isinstance(error, TooManyRequests):
            return error
        if ex.authenticated is None:
            try:
                await self._admission.identify(scope, header_dict(scope["headers"]), ex)
            except TooManyRequests as over:
                # Over its principal's rate: the 429 is the answer. Address budget spent
                # for a token not verified before: nobody proved who they are.
                return over if ex.authenticated else error
            except GatewayError:
                return error
        if not ex.authenticated:
            return error
        try:
            await self.enforcement.record_refused(scope, rid=ex.rid, status=error.status)
        except GatewayError as failure:
            return failure
        return error

    def _as_xml(self, statement: bytes) -> bytes:
        """The XML of the public CapabilityStatement, rendered once per statement fetched."""
        cached = self._statement_xml
        if cached is None or cached[0] != statement:
            cached = self._statement_xml = (statement, json_to_xml(statement))
        return cached[1]

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], ex: ExchangeLog
    ) -> None:
        settings = self.settings
        query: bytes = scope.get("query_string", b"")
        if len(query) > MAX_QUERY_BYTES:
            raise UriTooLong(
                f"a query string is at most {MAX_QUERY_BYTES} bytes (use POST _search)"
            )
        # The answer's format is decided at this edge only: every _format is answered here,
        # never sent on (the upstream is always asked for FHIR JSON, below).
        query, formats = split_format(query)
        with stage("classify"):
            request = classify(
                scope["method"],
                scope["path"],
                scope.get("raw_path"),
                query,
                headers,
                base_path=settings.base_path,
            )
        ex.interaction = request.interaction.value
        ex.resource_type = request.resource_type
        if request.resource_type in GATEWAY_OWNED:  # served by the gateway itself, in any form
            raise NotFound("not found")
        # What the request line and headers alone decide (query characters, Accept,
        # _format) is refused before the token is looked at; the body's type is checked
        # again below, once there is a body.
        xml = check_request_negotiation(request, headers, b"", formats)
        identity: Identity | None = None
        if request.interaction is not Interaction.CAPABILITIES:
            # Before the body is read: a caller without a valid token gets its 401 (or 429)
            # for the cost of its headers, its body never buffered or decoded.
            with stage("identify"):
                identity = await self._admission.identify(scope, headers, ex)
        body = (
            await read_request_body(receive, headers, scope["method"], settings)
            if ex.body_pending or scope.get("http_version") not in _LENGTH_FRAMED
            else b""  # HTTP/1.x without Content-Length or Transfer-Encoding: no body (RFC 9112)
        )
        ex.bytes_in = len(body)
        ex.body_pending = False
        if body and request.via_post and media_type(headers.get("content-type", "")) == _FORM:
            body, more = split_format(body)  # a _format in a POST _search's form, likewise
            if more:
                formats += more
                xml = check_request_negotiation(request, headers, b"", formats)
        # Past this edge everything speaks FHIR JSON: the pipeline, and the upstream it
        # forwards Accept and Content-Type to; an XML answer is made on the way out.
        headers = {**headers, "accept": "application/fhir+json"}
        if body and is_xml_body(headers):
            body = (
                await asyncio.to_thread(xml_to_json, body, max_depth=settings.max_json_depth)
                if len(body) > _INLINE_XML_BYTES
                else xml_to_json(body, max_depth=settings.max_json_depth)
            )
            headers["content-type"] = "application/fhir+json"
        check_request_negotiation(request, headers, body)
        if request.interaction is Interaction.BATCH:
            request = classify_bundle(request, bundle_type(body))
            ex.interaction = request.interaction.value
        gzip_min = settings.gzip_min_bytes
        if request.interaction is not Interaction.CAPABILITIES:
            # Everything but the CapabilityStatement (public by SMART App Launch 2.x) is
            # enforced: the next stage.
            answer = await self.enforcement.run(
                scope, request=request, body=body, headers=headers, log=ex, identity=identity
            )
            await send_answer(send, answer, headers, ex, gzip_min_bytes=gzip_min, xml=xml)
            return
        if not request.query:
            statement = await self._capabilities.statement(ex.rid)
            kind = FHIR_XML if xml else FHIR_JSON
            document = self._as_xml(statement) if xml else statement
            await send_bytes(
                send, 200, [(b"content-type", kind)], document, headers, ex, gzip_min_bytes=gzip_min
            )
            return
        # The CapabilityStatement asked with parameters (``mode=terminology``...): public
        # like the plain one, forwarded as asked, rebased, never cached.
        target = f"{request.path}?{request.query.decode('ascii')}"
        client_host = (scope.get("client") or (None,))[0]
        up = await self._capabilities.asked(target, client=headers, client_host=client_host, log=ex)
        await send_answer(
            send,
            Answer(200, up.headers, up.document),
            headers,
            ex,
            gzip_min_bytes=gzip_min,
            xml=xml,
        )


def _mark(marks: Marks, ex: ExchangeLog) -> None:
    """The request span's attributes: words from closed vocabularies and numbers only."""
    marks.set("http.request.method", ex.method)
    marks.set("fhir.interaction", ex.interaction)
    if ex.resource_type is not None:
        marks.set("fhir.resource_type", ex.resource_type)
    marks.set("http.response.status_code", ex.status)
