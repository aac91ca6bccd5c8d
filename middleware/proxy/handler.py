"""The FHIR proxy handler: a pure ASGI app for everything under the FHIR base path.

One request, in order: classify (:mod:`middleware.fhir.classify`, from the request line and
headers alone; anything unclassified is refused and never forwarded), identify the caller (the
bearer token, within its address's budget of unauthenticated requests unless it verified
before and has not expired; then the per-principal rate: 401 or 429 without reading the body),
read the body under a size cap and a deadline, check negotiation, then hand the request to the
enforcement stage (:mod:`middleware.proxy.enforcement`: decide, forward, filter, map, audit)
and release its answer. A caller that has not proved who it is costs nothing durable: its
refusals are counted in ``/metrics`` and logged in aggregate (one line per minute), never
recorded on the ledger one by one; refusals of a verified caller are recorded. Only the public
CapabilityStatement is served without a token. Forwarding is :meth:`ProxyHandler.forward`:
the upstream URL is built from the *classified* path (never from the raw one), headers cross
on allow-lists both ways, answers are read whole (bounded by
``max_response_bytes``: every later stage must see a whole resource before any of it is
released) and ``Location`` is rebased. Every failure becomes an OperationOutcome through
:func:`middleware.fhir.outcome.render_error`.
"""

from __future__ import annotations

import functools
import gzip
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from middleware import __version__
from middleware.asgi import header_dict, read_body
from middleware.auth.identity import Identity
from middleware.auth.smart import authorization_server, gateway_root, oauth_uris
from middleware.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    UpstreamError,
    UpstreamTimeout,
    UriTooLong,
)
from middleware.fhir import jsoncodec
from middleware.fhir.classify import classify, classify_bundle
from middleware.fhir.limits import depth as json_depth
from middleware.fhir.negotiate import check_request_negotiation, media_type
from middleware.fhir.outcome import render_error
from middleware.fhir.request import Interaction
from middleware.logging import get_logger
from middleware.ops.causes import describe
from middleware.ops.metrics import Metrics
from middleware.ops.ratelimit import RateLimiter, address_key
from middleware.ops.reasons import refusal_reason, status_reason
from middleware.ops.tally import IntervalTally
from middleware.pipeline.exchange import Answer, Upstreamed
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.proxy.capability import describe_gateway
from middleware.proxy.deadline import DeadlineUpstream
from middleware.proxy.enforcement import Enforcement
from middleware.proxy.headers import RESPONSE_HEADERS_PASSED, request_id, upstream_request_headers
from middleware.proxy.rewrite import Rebaser
from middleware.proxy.upstream import Upstream, UpstreamRequest
from middleware.settings import Settings
from middleware.types import Receive, Scope, Send

__all__ = ["MAX_QUERY_BYTES", "ExchangeLog", "ProxyHandler"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Longest query string interpreted (a longer one is 414; POST _search carries long searches).
MAX_QUERY_BYTES = 16 * 1024
#: Seconds between the aggregate log lines of refused unauthenticated requests.
UNAUTHENTICATED_LOG_SECONDS = 60.0
#: The one body media type that is not JSON (a form-encoded ``POST _search``).
_FORM = "application/x-www-form-urlencoded"


class _InternalError(GatewayError):
    status = 500
    code = "exception"


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


class ProxyHandler:
    """ASGI app forwarding classified FHIR requests to one upstream.

    ``upstream_factory`` is called once, on the first request, inside the running event loop
    (aiohttp sessions must be created there); ``clock`` returns seconds for cache ages.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        upstream_factory: Callable[[], Upstream],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        enforcement: Enforcement | None = None,
    ) -> None:
        self.settings = settings
        self.enforcement = enforcement
        self._upstream_factory = upstream_factory
        self._upstream: Upstream | None = None
        self.metrics = metrics
        self._clock = clock
        self._upstream_base = settings.upstream.rstrip("/")
        # The host the upstream-failure log names: never the userinfo a URL may carry.
        self._upstream_host = urlsplit(self._upstream_base).netloc.rpartition("@")[2]
        self.rebaser = Rebaser(self._upstream_base, settings.gateway_base_url)
        # X-Forwarded-Host/-Proto name the configured public base, never the client's Host
        # header: an upstream that builds links from them must not be steered by a client.
        public = urlsplit(settings.gateway_base_url)
        self._public_scheme, self._public_host = public.scheme, public.netloc
        self._capability: tuple[float, bytes] | None = None
        self._log = get_logger("consentry.proxy")
        self._principals = RateLimiter(
            settings.rate_limit_per_principal, settings.rate_limit_per_principal_burst, clock=clock
        )
        self._anonymous = RateLimiter(
            settings.rate_limit_unauthenticated,
            settings.rate_limit_unauthenticated_burst,
            clock=clock,
        )
        self._refused_anonymous = IntervalTally(UNAUTHENTICATED_LOG_SECONDS, clock=clock)

    @property
    def upstream(self) -> Upstream:
        """The upstream client, created on first use."""
        if self._upstream is None:
            self._upstream = self._upstream_factory()
        return self._upstream

    async def aclose(self) -> None:
        """Close the upstream pool if it was opened."""
        if self._upstream is not None:
            await self._upstream.aclose()
            self._upstream = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope["headers"])
        exchange = ExchangeLog(
            rid=request_id(headers), method=scope["method"], started=time.perf_counter()
        )
        exchange.body_pending = _announces_body(headers)
        self.metrics.in_flight += 1
        try:
            await self._handle(scope, receive, send, headers, exchange)
        except GatewayError as error:
            answered = await self._audited(scope, exchange, error)
            exchange.reason = refusal_reason(answered, consent_denied=exchange.consent_denied)
            await self._send_error(send, answered, exchange)
        except Exception as exc:  # noqa: BLE001 - the last line of fail-closed error handling
            # Never a stack trace or library message in the answer; the type is enough to
            # find the log line by request id.
            self._log.error("unhandled", request_id=exchange.rid, error_type=type(exc).__name__)
            internal = await self._audited(scope, exchange, _InternalError("internal error"))
            await self._send_error(send, internal, exchange)
        finally:
            self.metrics.in_flight -= 1
            seconds = time.perf_counter() - exchange.started
            self.metrics.observe_request(exchange.interaction, exchange.status, seconds)
            if exchange.reason is None:
                exchange.reason = status_reason(exchange.status)
            if exchange.reason is not None:
                self.metrics.observe_refusal(exchange.reason)
            if exchange.reason is not None and _anonymous(exchange):
                self._tally_anonymous(exchange.reason)
            elif self.settings.access_log:
                self._log.info(
                    "request",
                    request_id=exchange.rid,
                    method=exchange.method,
                    interaction=exchange.interaction,
                    resource_type=exchange.resource_type,
                    status=exchange.status,
                    duration_ms=round(seconds * 1000, 3),
                    upstream_ms=(
                        None
                        if exchange.upstream_seconds is None
                        else round(exchange.upstream_seconds * 1000, 3)
                    ),
                    bytes_in=exchange.bytes_in,
                    bytes_out=exchange.bytes_out,
                    reason=exchange.reason,
                )

    def _tally_anonymous(self, reason: str) -> None:
        """Count a refusal of a caller that did not prove who it is; one warning line per
        interval carries the counts by reason (never a path, a query or a body)."""
        report = self._refused_anonymous.add(reason)
        if report is not None:
            counts, seconds = report
            self._log.warning(
                "unauthenticated requests refused",
                seconds=round(seconds, 1),
                count=sum(counts.values()),
                reason=",".join(f"{code}:{n}" for code, n in sorted(counts.items())),
            )

    async def _identify(self, scope: Scope, headers: dict[str, str], ex: ExchangeLog) -> Identity:
        """The verified caller, or 401 / 429 (neither recorded on the ledger).

        A token that verified before and has not expired is verified whatever its address's
        budget: that budget guards verification work against callers without a valid token,
        so one caller's bad tokens never refuse another's good one behind the same address.
        Any other token is verified only while its client address (an IPv6 address by its
        /64) has budget left, else 429. A request that fails authentication spends one of its
        address's tokens. A verified caller then spends one of its principal's tokens."""
        if self.enforcement is None:
            raise _InternalError("enforcement is not configured")
        ex.authenticated = False
        address = _address_key(str((scope.get("client") or ("",))[0]))
        if not self.enforcement.proved(headers):
            wait = self._anonymous.exhausted(address)
            if wait:
                raise _too_many(wait, "too many unauthenticated requests from this address")
        try:
            identity = await self.enforcement.identify(headers)
        except GatewayError:
            self._anonymous.take(address)
            raise
        ex.authenticated = True
        wait = self._principals.take(f"{identity.issuer}\x00{identity.subject}")
        if wait:
            raise _too_many(wait, "too many requests for this caller")
        return identity

    async def _audited(self, scope: Scope, ex: ExchangeLog, error: GatewayError) -> GatewayError:
        """``error``, once a refusal the enforcement stage did not see (classification, body,
        negotiation) is on the ledger; a 503 instead when it cannot be recorded. The public
        CapabilityStatement is not audited; neither is a 429 (the limit bounds the ledger's
        growth too) nor a refusal of a caller that does not prove who it is (a refusal made
        before identification is recorded only when the request's token verifies).

        Such a refusal is identified as any request is (:meth:`_identify`): a token that
        verified before whatever its address's budget, so an address spent by others' bad
        tokens never hides a verified caller's refusal. A verified caller over its own rate
        is answered that 429 instead, unrecorded: never a refusal that goes unrecorded."""
        if ex.audited or self.enforcement is None or ex.interaction == "capabilities":
            return error
        if isinstance(error, TooManyRequests):
            return error
        if ex.authenticated is None:
            try:
                await self._identify(scope, header_dict(scope["headers"]), ex)
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

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], ex: ExchangeLog
    ) -> None:
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            raise UriTooLong(
                f"a query string is at most {MAX_QUERY_BYTES} bytes (use POST _search)"
            )
        request = classify(
            scope["method"],
            scope["path"],
            scope.get("raw_path"),
            scope.get("query_string", b""),
            headers,
            base_path=self.settings.base_path,
        )
        ex.interaction = request.interaction.value
        ex.resource_type = request.resource_type
        if request.resource_type in GATEWAY_OWNED:  # served by the gateway itself, in any form
            raise NotFound("not found")
        # What the request line and headers alone decide (query characters, Accept,
        # _format) is refused before the token is looked at; the body's type is checked
        # again below, once there is a body.
        check_request_negotiation(request, headers, b"")
        identity: Identity | None = None
        if request.interaction is not Interaction.CAPABILITIES:
            # Before the body is read: a caller without a valid token gets its 401 (or 429)
            # for the cost of its headers, its body never buffered or decoded.
            identity = await self._identify(scope, headers, ex)
        body = (
            await self._read_body(receive, headers, scope["method"])
            if ex.body_pending or scope.get("http_version") not in _LENGTH_FRAMED
            else b""  # HTTP/1.x without Content-Length or Transfer-Encoding: no body (RFC 9112)
        )
        ex.bytes_in = len(body)
        ex.body_pending = False
        check_request_negotiation(request, headers, body)
        if request.interaction is Interaction.BATCH:
            request = classify_bundle(request, _bundle_type(body))
            ex.interaction = request.interaction.value
        if request.interaction is Interaction.CAPABILITIES and not request.query:
            statement = await self._metadata(ex.rid)
            await self._send(send, 200, [(b"content-type", _FHIR_JSON)], statement, headers, ex)
            return
        if request.interaction is not Interaction.CAPABILITIES:
            # Everything but the CapabilityStatement (public by SMART App Launch 2.x) is
            # enforced; without an enforcement stage nothing is forwarded at all.
            if self.enforcement is None:
                raise _InternalError("enforcement is not configured")
            answer = await self.enforcement.run(
                scope,
                request=request,
                body=body,
                headers=headers,
                log=ex,
                proxy=self,
                identity=identity,
            )
            await self._send_answer(send, answer, headers, ex)
            return

        # The CapabilityStatement asked with parameters (``mode=terminology``...): public
        # like the plain one, forwarded as asked, rebased, never cached.
        target = f"{request.path}?{request.query.decode('ascii')}"
        client_host = (scope.get("client") or (None,))[0]
        up = await self.forward("GET", target, client=headers, client_host=client_host, log=ex)
        document = up.document
        # Released without a decision or an audit entry, so only what holds no patient data:
        # the server's own statement of what it can do, never another resource.
        if (
            up.status != 200
            or not isinstance(document, dict)
            or document.get("resourceType") not in _CAPABILITY_TYPES
        ):
            raise UpstreamError("upstream server did not return its capabilities")
        self.rebaser.rewrite(document, self.rebaser.occurrences(up.raw))
        if document["resourceType"] == "CapabilityStatement":
            # ``_format=json`` (HAPI's encodedJson) and other parameters ask the same question:
            # the answer describes the gateway, as the plain one does.
            self._describe(document)
        await self._send_answer(send, Answer(200, up.headers, document), headers, ex)

    async def _send_answer(
        self, send: Send, answer: Answer, client_headers: dict[str, str], ex: ExchangeLog
    ) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        body = b""
        if answer.raw is not None or answer.document is not None:
            body = answer.raw if answer.raw is not None else jsoncodec.encode(answer.document)
            if not any(k == b"content-type" for k, _ in headers):
                headers.append((b"content-type", _FHIR_JSON))
        await self._send(send, answer.status, headers, body, client_headers, ex)

    async def forward(
        self,
        method: str,
        target: str,
        *,
        client: Mapping[str, str],
        client_host: str | None,
        log: ExchangeLog,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        client_headers: bool = True,
    ) -> Upstreamed:
        """One upstream round trip for the pipeline (see
        :class:`~middleware.pipeline.exchange.Forwarder`): the answer read whole under
        ``max_response_bytes``, headers allow-listed, ``Location`` rebased, JSON decoded."""
        base = self._upstream_base
        # An absolute target is a redeemed paging link the pipeline checked lies on ``base``.
        url = target if target.startswith(base) else f"{base}/{target}" if target else base
        sent_headers = upstream_request_headers(
            client if client_headers else {},
            rid=log.rid,
            client_host=client_host,
            scheme=self._public_scheme,
            host=self._public_host,
            prefix=self.settings.base_path,
            extra=self.settings.upstream_headers,
            trust_forwarded=self.settings.trust_forwarded_headers,
        )
        if headers:
            names = {name for name, _ in headers}
            sent_headers = [(k, v) for k, v in sent_headers if k not in names]
            sent_headers.extend(headers)
        if body and not any(name == "content-type" for name, _ in sent_headers):
            sent_headers.append(("content-type", "application/fhir+json"))
        started = time.perf_counter()
        request = UpstreamRequest(method, url, sent_headers, body)
        limit = self.settings.max_response_bytes
        upstream = self.upstream
        try:
            if isinstance(upstream, DeadlineUpstream):  # the app's: one timer, not two
                status, answer_headers, raw = await upstream.fetch(request, limit)
            else:
                response = await upstream.send(request)
                try:
                    raw = await response.read(limit)
                finally:
                    await response.aclose()
                status, answer_headers = response.status, response.headers
        except (UpstreamError, UpstreamTimeout) as exc:
            self._upstream_failed(exc, log.rid)
            raise
        seconds = time.perf_counter() - started
        log.upstream_seconds = (log.upstream_seconds or 0.0) + seconds
        self.metrics.observe_upstream(log.interaction, seconds)
        passed: list[tuple[str, str]] = []
        content_type = ""
        for name, value in answer_headers:
            if name not in RESPONSE_HEADERS_PASSED:
                continue
            if name in ("location", "content-location"):
                value = self.rebaser.url(value)  # noqa: PLW2901
            elif name == "content-type":
                content_type = value
            passed.append((name, value))
        document = (
            _decode_upstream(raw, self.settings.max_json_depth)
            if raw and "json" in content_type
            else None
        )
        return Upstreamed(status, passed, document, raw)

    def _upstream_failed(self, exc: GatewayError, rid: str | None) -> None:
        """Log why the upstream could not be reached or read: the cause's class and errno
        text, and the upstream's host (never the path or query: they can name a patient)."""
        self._log.warning(
            "upstream unavailable",
            request_id=rid,
            host=self._upstream_host,
            status=exc.status,
            **describe(exc).fields(),
        )

    async def _read_body(self, receive: Receive, headers: dict[str, str], method: str) -> bytes:
        """The request body, whole, at most ``max_request_bytes`` after decoding gzip."""
        limit = self.settings.max_request_bytes
        body = await read_body(receive, headers, limit, within=self.settings.body_timeout)
        if body and method not in _BODY_METHODS:
            raise BadRequest(f"a {method} request must not have a body")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip" and body:
            body = _gunzip(body, limit)
        elif encoding not in ("identity", "gzip"):
            raise BadRequest(f"unsupported Content-Encoding {encoding!r}", code="not-supported")
        _check_body_depth(body, headers, self.settings.max_json_depth)
        return body

    async def _metadata(self, rid: str | None = None) -> bytes:
        """The gateway's CapabilityStatement, fetched from the upstream at most once per TTL."""
        now = self._clock()
        if self._capability is not None and now - self._capability[0] < self.settings.metadata_ttl:
            return self._capability[1]
        try:
            response = await self.upstream.send(
                UpstreamRequest(
                    "GET", f"{self._upstream_base}/metadata", [("accept", "application/fhir+json")]
                )
            )
            try:
                raw = await response.read(self.settings.max_response_bytes)
            finally:
                await response.aclose()
        except (UpstreamError, UpstreamTimeout) as exc:
            self._upstream_failed(exc, rid)
            raise
        if response.status != 200:
            raise UpstreamError("upstream server did not return its CapabilityStatement")
        document = _decode_upstream(raw, self.settings.max_json_depth)
        if not isinstance(document, dict) or document.get("resourceType") != "CapabilityStatement":
            raise UpstreamError("upstream server did not return a CapabilityStatement")
        self.rebaser.rewrite(document, self.rebaser.occurrences(raw))
        self._describe(document)
        body = jsoncodec.encode(document)
        self._capability = (now, body)
        return body

    def _describe(self, document: dict[str, Any]) -> None:
        """Rewrite the upstream's CapabilityStatement (rebased) to describe the gateway."""
        auth = self.settings.auth
        root = gateway_root(self.settings.gateway_base_url, self.settings.base_path)
        describe_gateway(
            document,
            gateway_base=self.settings.gateway_base_url,
            version=__version__,
            smart=bool(auth.issuers) or auth.dev_issuer_enabled,
            oauth_uris=oauth_uris(authorization_server(auth, gateway_root=root)),
        )

    async def _send(  # noqa: PLR0917
        self,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        client_headers: dict[str, str],
        ex: ExchangeLog,
    ) -> None:
        out = [*headers, (b"x-request-id", ex.rid.encode())]
        minimum = self.settings.gzip_min_bytes
        if minimum and len(body) >= minimum and "gzip" in client_headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            out += [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
        out.append((b"content-length", str(len(body)).encode()))
        ex.status = status
        ex.bytes_out = len(body)
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    async def _send_error(self, send: Send, error: GatewayError, ex: ExchangeLog) -> None:
        status, headers, body = render_error(error)
        ex.status = status
        ex.bytes_out = len(body)
        headers.append((b"x-request-id", ex.rid.encode()))
        if ex.body_pending:
            # The body was never read (refused first): the connection cannot carry another
            # request until it is drained, so it is closed rather than drained.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_FHIR_JSON = b"application/fhir+json; charset=utf-8"
#: What ``GET /metadata?...`` may answer (FHIR R4 capabilitystatement.html, ``mode=terminology``).
_CAPABILITY_TYPES = frozenset({"CapabilityStatement", "TerminologyCapabilities"})


#: The answer's gzip level, by measurement on carebundle answers (docs/performance.md): levels
#: 1-3 are zlib's fast deflate, 3 the best ratio of them; a search of 20 Observations (31.6 KB)
#: 2,092 B in 25 us at 3, 2,027 B in 69 us at 5; a patient's Bundle (62 KB) 6.0 KB in 56 us,
#: 5.0 KB in 154 us. Smaller by a few percent at 5, for three times the CPU of every answer.
GZIP_LEVEL: Final = 3

#: HTTP versions whose request framing is its headers alone: a request without
#: Transfer-Encoding or Content-Length has no body (RFC 9112 §6.3 rule 7), so nothing is read.
_LENGTH_FRAMED: Final = frozenset({"1.0", "1.1"})

#: :func:`address_key` once per client address, not per request (it parses the address with
#: ipaddress, ~20 us); bounded, so a flood of addresses only evicts.
_address_key: Final = functools.lru_cache(maxsize=4096)(address_key)


def _announces_body(headers: Mapping[str, str]) -> bool:
    """Whether the request says a body follows (RFC 9112 §6.3: Transfer-Encoding, or a
    Content-Length other than 0)."""
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or length not in ("", "0")


def _anonymous(ex: ExchangeLog) -> bool:
    """A refusal of a caller that did not prove who it is (the public CapabilityStatement
    aside): logged in aggregate, not line by line."""
    return ex.status >= 400 and not ex.authenticated and ex.interaction != "capabilities"


def _too_many(wait: float, diagnostics: str) -> TooManyRequests:
    return TooManyRequests(diagnostics, retry_after=max(1, math.ceil(wait)))


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing more than ``limit`` bytes out (no zip bombs)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest("request body is not valid gzip") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge("request body exceeds the configured size limit")
    return out


def _bundle_type(body: bytes) -> str | None:
    """``Bundle.type`` of a request body; ``None`` when it is not a Bundle."""
    try:
        document: Any = jsoncodec.decode(body)
    except jsoncodec.DecodeError as exc:
        raise BadRequest("request body is not valid JSON", code="structure") from exc
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        bundle_type = document.get("type")
        return bundle_type if isinstance(bundle_type, str) else None
    return None


def _check_body_depth(body: bytes, headers: Mapping[str, str], limit: int) -> None:
    """Refuse (400) a request body nesting deeper than ``limit``, measured before anything
    decodes it (:mod:`middleware.fhir.limits`). A form-encoded ``POST _search`` body is not
    JSON and is not measured: its media type, parsed, must be exactly that one (a parameter
    naming it, ``application/fhir+json; x=x-www-form-urlencoded``, is JSON and measured)."""
    if not body or media_type(headers.get("content-type", "")) == _FORM:
        return
    if json_depth(body, limit) > limit:
        raise BadRequest(f"the request body nests deeper than {limit} levels", code="too-costly")


def _decode_upstream(raw: bytes, max_depth: int) -> Any:
    """An upstream answer decoded; invalid or too deep JSON is the upstream's fault (502)."""
    try:
        return jsoncodec.decode(raw, max_depth=max_depth)
    except jsoncodec.DecodeError as exc:
        raise UpstreamError("upstream server sent invalid JSON") from exc
