"""The upstream forwarder: the third and last stage of a request, the gateway's upstream I/O.

One :class:`UpstreamForwarder` is built at wiring time (:func:`middleware.app.create_app`) and
injected into the stages that reach the upstream: the enforced pipeline
(:mod:`middleware.proxy.enforcement`, which binds it to each exchange as the pipeline's
:class:`~middleware.pipeline.exchange.Forwarder`), the public CapabilityStatement
(:mod:`middleware.proxy.metadata`), readiness and reconciliation. It calls nothing above it.

A round trip (:meth:`UpstreamForwarder.forward`): the upstream URL is built from the
*classified* target (never from the raw path), headers cross on allow-lists both ways
(:mod:`middleware.proxy.headers`), the answer is read whole under ``max_response_bytes``
(every later stage must see a whole resource before any of it is released), ``Location`` is
rebased (:mod:`middleware.proxy.rewrite`), a JSON answer is decoded (too deep or invalid:
502) and the time spent is added to the exchange's log and metrics. When the request is
traced, the round trip is the ``forward`` client span and the upstream request carries its
W3C ``traceparent`` (:mod:`middleware.ops.tracing`). Upstream failures are
logged here, by host only (never the path or query: they can name a patient).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from middleware.errors import GatewayError, UpstreamError, UpstreamTimeout
from middleware.fhir import jsoncodec
from middleware.logging import get_logger
from middleware.ops.causes import describe
from middleware.ops.metrics import Metrics
from middleware.ops.tracing import inject, stage
from middleware.pipeline.exchange import Upstreamed
from middleware.proxy.deadline import DeadlineUpstream
from middleware.proxy.exchange_log import ExchangeLog
from middleware.proxy.headers import RESPONSE_HEADERS_PASSED, upstream_request_headers
from middleware.proxy.rewrite import Rebaser
from middleware.proxy.upstream import Upstream, UpstreamRequest
from middleware.settings import Settings

__all__ = ["UpstreamForwarder", "decode_upstream"]


class UpstreamForwarder:
    """The one upstream client of a gateway and the policy of every round trip through it.

    ``upstream_factory`` is called once, on first use, inside the running event loop
    (aiohttp sessions must be created there)."""

    def __init__(
        self, settings: Settings, *, upstream_factory: Callable[[], Upstream], metrics: Metrics
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._upstream_factory = upstream_factory
        self._upstream: Upstream | None = None
        self.base = settings.upstream.rstrip("/")
        # The host the upstream-failure log names: never the userinfo a URL may carry.
        self._host = urlsplit(self.base).netloc.rpartition("@")[2]
        self.rebaser = Rebaser(self.base, settings.gateway_base_url)
        # X-Forwarded-Host/-Proto name the configured public base, never the client's Host
        # header: an upstream that builds links from them must not be steered by a client.
        public = urlsplit(settings.gateway_base_url)
        self._public_scheme, self._public_host = public.scheme, public.netloc
        self._log = get_logger("consentry.proxy")

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
        base = self.base
        settings = self.settings
        # An absolute target is a redeemed paging link the pipeline checked lies on ``base``.
        url = target if target.startswith(base) else f"{base}/{target}" if target else base
        sent_headers = upstream_request_headers(
            client if client_headers else {},
            rid=log.rid,
            client_host=client_host,
            scheme=self._public_scheme,
            host=self._public_host,
            prefix=settings.base_path,
            extra=settings.upstream_headers,
            trust_forwarded=settings.trust_forwarded_headers,
        )
        if headers:
            names = {name for name, _ in headers}
            sent_headers = [(k, v) for k, v in sent_headers if k not in names]
            sent_headers.extend(headers)
        if body and not any(name == "content-type" for name, _ in sent_headers):
            sent_headers.append(("content-type", "application/fhir+json"))
        with stage("forward", client=True) as marks:
            marks.set("http.request.method", method)
            inject(sent_headers)
            status, answer_headers, raw = await self._round_trip(
                UpstreamRequest(method, url, sent_headers, body), log
            )
            marks.set("http.response.status_code", status)
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
            decode_upstream(raw, settings.max_json_depth)
            if raw and "json" in content_type
            else None
        )
        return Upstreamed(status, passed, document, raw)

    async def _round_trip(
        self, request: UpstreamRequest, log: ExchangeLog
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and whole body of ``request``'s answer (its time added to ``log``),
        read under ``max_response_bytes``."""
        started = time.perf_counter()
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
            self.failed(exc, log.rid)
            raise
        seconds = time.perf_counter() - started
        log.upstream_seconds = (log.upstream_seconds or 0.0) + seconds
        self.metrics.observe_upstream(log.interaction, seconds)
        return status, answer_headers, raw

    async def fetch_metadata(self, rid: str | None) -> tuple[int, bytes]:
        """``GET [base]/metadata`` as the gateway (no client header): status and raw body,
        read under ``max_response_bytes``."""
        try:
            response = await self.upstream.send(
                UpstreamRequest(
                    "GET", f"{self.base}/metadata", [("accept", "application/fhir+json")]
                )
            )
            try:
                raw = await response.read(self.settings.max_response_bytes)
            finally:
                await response.aclose()
        except (UpstreamError, UpstreamTimeout) as exc:
            self.failed(exc, rid)
            raise
        return response.status, raw

    def failed(self, exc: GatewayError, rid: str | None) -> None:
        """Log why the upstream could not be reached or read: the cause's class and errno
        text, and the upstream's host (never the path or query: they can name a patient)."""
        self._log.warning(
            "upstream unavailable",
            request_id=rid,
            host=self._host,
            status=exc.status,
            **describe(exc).fields(),
        )


def decode_upstream(raw: bytes, max_depth: int) -> Any:
    """An upstream answer decoded; invalid or too deep JSON is the upstream's fault (502)."""
    try:
        return jsoncodec.decode(raw, max_depth=max_depth)
    except jsoncodec.DecodeError as exc:
        raise UpstreamError("upstream server sent invalid JSON") from exc
