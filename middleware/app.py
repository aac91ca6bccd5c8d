"""Wiring: :func:`create_app` builds the gateway's ASGI app from settings and injected parts.

Everything with I/O comes in through the factory so tests inject instead of patching: the
upstream (an ``httpx`` transport such as ``httpx.MockTransport(respx_router.handler)``, or any
:class:`~middleware.proxy.upstream.Upstream`), the ledger's log store, its signing key
(``signer``), and the clock.

Routing is by exact path before anything else: the management endpoints (``/healthz``,
``/readyz``, ``/metrics``, the ``/ledger/`` API of ``ledger.http``; ``/auth/jwks`` when the
development issuer is on; ``/.well-known/smart-configuration`` at the root and under the
base), then the web pages (``/portal/``, ``/compliance/``, ``/static/web/``; the development
sign-in's ``/auth/authorize`` and ``/auth/token`` when that issuer is on: ``web.routes``), then
the patient consent API (``{base}/Consent`` and below, served
here and never forwarded), then the audit trail's API (``{base}/AuditEvent`` and below,
``Patient/<id>/$accounting``, ``$export`` with ``_type=AuditEvent``: ``audit.http``, never
forwarded), then the FHIR
base path (the proxy), then a 404 OperationOutcome.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from middleware import __version__
from middleware.app_audit import build_audit_api
from middleware.app_enforcement import build_enforcement
from middleware.app_health import StartupFailure, open_stores, probe_upstream, readiness
from middleware.audit.evidence import EVIDENCE_PURPOSE, PatientKeys
from middleware.audit.http import AuditApi
from middleware.audit.http import serves as audit_serves
from middleware.audit.recorder import AuditRecorder
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.auth.factory import build_dev_issuer, build_verifier
from middleware.auth.smart import gateway_root
from middleware.auth.wellknown import smart_paths, smart_routes
from middleware.consent.api import ConsentApi, serves
from middleware.consent.decide import Defaults
from middleware.consent.limits import ConsentLimits
from middleware.consent.service import ConsentService
from middleware.errors import GatewayError, NotFound, ServiceUnavailable
from middleware.fhir.outcome import render_error
from middleware.forwarded import peer_host
from middleware.ledger.http import LeafReaders, ledger_routes
from middleware.ledger.keyfile import LedgerKey, new_ledger_key, save_new_ledger_key
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.witnessing import Witnessing
from middleware.logging import get_logger
from middleware.openapi import OPENAPI_PATH, openapi_document
from middleware.ops.causes import store_label
from middleware.ops.metrics import Metrics
from middleware.ops.scrape import ScrapeAccess
from middleware.ops.tracing import Tracing, tracing_from
from middleware.pipeline.export import Exports
from middleware.proxy.deadline import DeadlineUpstream
from middleware.proxy.enforcement import TokenCheck
from middleware.proxy.export_http import ExportEndpoints
from middleware.proxy.export_http import serves as export_serves
from middleware.proxy.forwarder import UpstreamForwarder
from middleware.proxy.handler import ProxyHandler
from middleware.proxy.httpx_upstream import HttpxUpstream
from middleware.proxy.native_upstream import NativeUpstream
from middleware.proxy.reconcile import reconcile
from middleware.proxy.upstream import Upstream
from middleware.settings import Settings
from middleware.storage import ConsentStore, LogStore, open_consent_store, open_log_store
from middleware.storage.breakglass_open import store_schema
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.revocations_open import token_revocations
from middleware.types import ASGIApp, Receive, Scope, Send
from middleware.web.routes import WebApp, build_web, web_serves

__all__ = ["Gateway", "create_app"]

_MANAGEMENT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", OPENAPI_PATH})


class Gateway:
    """The gateway's ASGI app (see the module docstring for routing)."""

    def __init__(
        self,
        settings: Settings,
        proxy: ProxyHandler,
        ledger: LedgerService,
        *,
        consent: ConsentApi | None = None,
        dev_issuer: UnsafeDevelopmentIssuer | None = None,
        ledger_readers: LeafReaders,
        audit: AuditApi | None = None,
        exports: ExportEndpoints | None = None,
        web: Callable[[ASGIApp], WebApp] | None = None,
        witnessing: Witnessing | None = None,
    ) -> None:
        self.settings = settings
        self.witnessing = witnessing
        self.exports = exports
        self.proxy = proxy
        self.ledger = ledger
        self.consent = consent
        self.audit = audit
        self.dev_issuer = dev_issuer
        self.metrics = proxy.metrics
        # The web pages call this app's own APIs in-process, so they are built with it.
        self.web = web(self) if web is not None else None
        self._scrape = ScrapeAccess.from_settings(settings.metrics_clients, settings.metrics_token)
        self._probe: asyncio.Task[bool] | None = None
        # The last readiness answer (loop time, checks) and the check running now, shared by
        # every /readyz caller for settings.ready_cache_seconds: the endpoint is public and
        # each check asks the stores, the ledger and the upstream, so without this anyone
        # could turn requests to it into upstream traffic, probe writes and warning lines.
        self._ready: tuple[float, dict[str, str]] | None = None
        self._ready_check: asyncio.Task[dict[str, str]] | None = None
        self._base = settings.base_path
        self._management_paths = (
            _MANAGEMENT_PATHS
            | ({"/auth/jwks"} if dev_issuer else set())
            | smart_paths(settings.base_path)
        )
        root = gateway_root(settings.gateway_base_url, settings.base_path)
        self.management = Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                Route("/metrics", self._metrics),
                Route("/auth/jwks", self._jwks),
                Route(OPENAPI_PATH, self._openapi),
                *smart_routes(settings.auth, base_path=self._base, gateway_root=root),
                *ledger_routes(ledger, ledger_readers, witnessing),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in self._management_paths or path.startswith("/ledger/"):
                await self.management(scope, receive, send)
            elif self.web is not None and web_serves(path, development=self.dev_issuer is not None):
                await self.web(scope, receive, send)
            elif self.consent is not None and serves(path, self._base):
                await self.consent(scope, receive, send)
            elif self.audit is not None and audit_serves(
                path, self._base, scope.get("query_string", b"")
            ):
                await self.audit(scope, receive, send)
            elif self.exports is not None and export_serves(path, self._base):
                await self.exports(scope, receive, send)
            elif path == self._base or path.startswith(self._base + "/"):
                await self.proxy(scope, receive, send)
            else:
                status, headers, body = render_error(NotFound("not found"))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                log = get_logger()
                try:
                    # A store the gateway cannot open stops it, naming the store and the
                    # cause: never running on with every FHIR request answered 503.
                    store_name = await self._open_stores()
                except StartupFailure as exc:
                    log.error(
                        "startup failed", store=store_label(self.settings.store), error=str(exc)
                    )
                    await self.aclose()
                    reason = f"consentry: cannot start: {exc}"
                    await send({"type": "lifespan.startup.failed", "message": reason})
                    return
                self._probe = asyncio.create_task(probe_upstream(self.proxy, self.settings))
                if self.audit is not None:  # expired export files go without export requests
                    self.audit.jobs.start_sweeper()
                if self.exports is not None:
                    self.exports.jobs.start_sweeper()
                if self.witnessing is not None:  # checkpoints go to the witnesses from now on
                    self.witnessing.start()
                # Stops owed by gone processes (proxy.glass_stops); where no token may break
                # the glass, no session opens and the board is left unopened.
                stops, auth = self.proxy.enforcement.glass_stops, self.settings.auth
                if stops is not None and (auth.break_glass_scope or auth.break_glass_roles):
                    stops.start()
                log.info(
                    "startup",
                    version=__version__,
                    upstream=self.settings.upstream,
                    base_path=self.settings.base_path,
                    store=store_name,
                )
                # What startup allocated lives as long as the process: move it out of the
                # collector's reach, so full collections stop walking it (they stalled the
                # event loop for ~50 ms under load; CPython gc.freeze docs suggest this).
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _open_stores(self) -> str:
        """The store's name once the ledger and consent stores are open (app_health)."""
        consents = None if self.consent is None else self.consent.service
        name = await open_stores(self.settings, self.ledger, consents)
        # Write outcomes a previous run kept in the audit outbox, and writes it was killed
        # in the middle of (reconciled with the upstream), go to the ledger first; what
        # cannot yet keeps /readyz unavailable (app_health).
        await reconcile(self.proxy.enforcement.recorder, self.proxy.forwarder)
        return name

    async def aclose(self) -> None:
        """Close the upstream pool and the consent API, then the ledger (committing what is
        queued), then the traces (at most a few seconds)."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        await self.proxy.aclose()
        await self.proxy.enforcement.recorder.aclose()
        if self.consent is not None:
            await self.consent.aclose()
        if self.audit is not None:
            await self.audit.aclose()
        if self.exports is not None:
            await self.exports.jobs.aclose()
        if self.web is not None:
            await self.web.aclose()
        if self.witnessing is not None:
            await self.witnessing.aclose()
        if self.proxy.enforcement.glass_stops is not None:
            await self.proxy.enforcement.glass_stops.aclose()
        sessions = self.proxy.enforcement.pipeline.reads.break_glass
        if sessions is not None:  # its board's pool or file (pipeline.breakglass)
            await sessions.aclose()
        await self.ledger.aclose()
        if self.proxy.tracing is not None:  # last, and bounded: a collector may be down
            await asyncio.to_thread(self.proxy.tracing.shutdown)

    async def _healthz(self, _request: Request) -> Response:
        """Liveness only: the process serves HTTP (start-up already required the stores)."""
        return JSONResponse({"status": "ok", "version": __version__})

    async def _readyz(self, _request: Request) -> Response:
        """Readiness: the stores answer and the upstream serves its metadata (app_health);
        one check at a time, its answer reused for ``ready_cache_seconds``."""
        checks = await self._readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
            headers=None if ready else {"retry-after": str(ServiceUnavailable.retry_after)},
        )

    async def _readiness(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        ttl = self.settings.ready_cache_seconds
        if self._ready is not None and loop.time() - self._ready[0] < ttl:
            return self._ready[1]
        if self._ready_check is None:
            consents = None if self.consent is None else self.consent.service
            self._ready_check = asyncio.create_task(
                readiness(self.settings, self.ledger, consents, self.proxy)
            )
        check = self._ready_check
        try:
            # shield: a caller that goes away must not cancel the check the others await
            checks = await asyncio.shield(check)
        finally:
            if check.done() and self._ready_check is check:
                self._ready_check = None
        self._ready = (loop.time(), checks)
        return checks

    async def _openapi(self, _request: Request) -> Response:
        """The OpenAPI description of the gateway's own APIs (:mod:`middleware.openapi`)."""
        document = openapi_document(self._base, development_issuer=self.dev_issuer is not None)
        return JSONResponse(document, headers={"cache-control": "public, max-age=300"})

    async def _jwks(self, _request: Request) -> Response:
        if self.dev_issuer is None:  # not routed then; kept for a direct call
            raise NotFound("not found")
        return JSONResponse(self.dev_issuer.jwks(), headers={"cache-control": "no-store"})

    async def _metrics(self, request: Request) -> Response:
        """The Prometheus text, to the scrapers ``metrics_clients``/``metrics_token`` allow."""
        try:
            # The TCP peer, never a forwarded address (middleware.forwarded).
            self._scrape.check(peer_host(request.scope), request.headers.get("authorization"))
        except GatewayError as refused:
            status, headers, body = render_error(refused)
            return Response(body, status_code=status, headers=_str_headers(headers))
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(
    settings: Settings,
    *,
    upstream: httpx.AsyncBaseTransport | Upstream | None = None,
    store: LogStore | None = None,
    signer: SigningKey | None = None,
    clock: Callable[[], float] | None = None,
    consents: ConsentStore | None = None,
    wall_clock: Callable[[], float] | None = None,
    tracing: Tracing | None = None,
) -> Gateway:
    """Build the gateway app.

    ``upstream``: an httpx transport (wrapped in a pooled ``httpx.AsyncClient``), a ready
    :class:`Upstream`, or ``None`` for the client ``settings.upstream_client`` names
    (``native``, the default; ``aiohttp``; ``httpx``).
    ``store``: the ledger's log store; defaults to the one ``settings.store`` names (SQLite
    in the working directory), opened on first need. ``signer``: the ledger's checkpoint
    key; defaults to the one in ``settings.ledger_key_file`` (created when missing), with
    the origin stored there (an injected key's origin is ``ledger_origin``, else its name).
    ``clock``: monotonic seconds, for cache ages. ``wall_clock``:
    seconds since the epoch (consent periods, cursor expiry, break-the-glass sessions, audit
    and ledger times); ``time.time`` by default. ``consents``: the consent store (pseudonyms and the
    consent index); defaults to the one ``settings.store`` names, beside the ledger.
    ``tracing``: where request traces go; defaults to what ``otlp_endpoint`` says (empty: off).
    """
    client_factory = _upstream_factory(settings, upstream)

    def factory() -> Upstream:
        # Every client, injected ones included, gets the overall deadline per exchange.
        return DeadlineUpstream(client_factory(), settings.upstream_deadline)

    on_accepted: Callable[[], None] | None = None
    if signer is None:
        # The origin is the log's identity, kept in the key file; the one derived from the
        # public URL only names a key file created now (see ledger.keyfile).
        key_path = Path(settings.ledger_key_file)
        ledger_key, new_key = new_ledger_key(
            key_path, configured=settings.ledger_origin, default=settings.checkpoint_origin
        )
        if new_key:
            # Written only once the store has opened and accepted the key: a start that fails
            # on its store leaves no key file naming the origin of that failed start.
            on_accepted = partial(save_new_ledger_key, key_path, ledger_key)
    else:
        ledger_key = LedgerKey(signer, settings.ledger_origin or signer.name)
    key, origin = ledger_key.key, ledger_key.origin
    # Stored secrets derive from the key file's data secret, which outlives a rotation of
    # the signing key (ledger.keyfile).
    secret = ledger_key.data_secret

    async def open_store() -> LogStore:
        return store if store is not None else await open_log_store(settings.store)

    metrics = Metrics()
    ledger = LedgerService(
        open_store,
        key,
        observer=metrics,
        origin=origin,
        origin_stated=ledger_key.stated,
        on_accepted=on_accepted,
        max_batch=settings.ledger_max_batch,
        max_pending=settings.ledger_max_pending,
        max_wait=settings.ledger_max_wait_ms / 1000,
    )
    dev_issuer = build_dev_issuer(settings.auth)
    # One token verifier for the proxy and the consent API (an httpx client only when an
    # issuer's keys are at a URL).
    client = None
    if any(issuer.jwks_url for issuer in settings.auth.issuers):
        client = httpx.AsyncClient(timeout=httpx.Timeout(settings.read_timeout))
    # Tokens an administrator revoked, enforced by every process of the store (auth.revocation).
    revocations = token_revocations(settings.store, log_store=ledger.store)
    verifier = build_verifier(
        settings.auth,
        client=client,
        dev_issuer=dev_issuer,
        gateway_base=settings.gateway_base_url,
        revocations=revocations,
    )
    wall = wall_clock or time.time
    service = _consent_service(
        settings,
        ledger,
        consents,
        wall,
        derive_box_key(secret, LOOKUP_PURPOSE),
        caller_keys=_caller_keys(ledger, derive_box_key(secret, EVIDENCE_PURPOSE)),
    )
    consent = ConsentApi(
        service,
        verifier,
        base_path=settings.base_path,
        max_request_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout,
        max_json_depth=settings.max_json_depth,
        closers=tuple(
            close
            for close in (
                None if client is None else client.aclose,
                None if revocations is None else revocations.aclose,
            )
            if close is not None
        ),
        metrics=metrics,
        access_log=settings.access_log,
    )
    # The three stages of a FHIR request, each built once with the next: the upstream
    # forwarder, the enforced pipeline over it, the ASGI edge over both.
    forwarder = UpstreamForwarder(settings, upstream_factory=factory, metrics=metrics)
    # Export jobs of a PostgreSQL store live in its schema, shared by every replica.
    export_schema = "public" if store is None else store_schema(store)
    enforcement = build_enforcement(
        settings,
        forwarder,
        consents=service,
        ledger=ledger,
        secret=secret,
        verifier=verifier,
        metrics=metrics,
        export_schema=export_schema,
    )
    proxy = ProxyHandler(
        settings,
        forwarder=forwarder,
        enforcement=enforcement,
        metrics=metrics,
        clock=clock or time.monotonic,
        tracing=tracing
        or tracing_from(
            settings.otlp_endpoint,
            headers=settings.otlp_headers,
            sample_ratio=settings.trace_sample_ratio,
        ),
    )
    sessions = enforcement.pipeline.reads.break_glass
    metrics.gauge(
        "ledger_queue_depth", "Ledger entries queued for a batch.", lambda: ledger.pending
    )
    recorder = enforcement.recorder
    metrics.gauge(
        "audit_outbox_dead_letters",
        "Audit outbox rows this process moved aside, never replayed (MAC, kind, malformed).",
        lambda: recorder.dead_lettered,
    )
    metrics.gauge(
        "audit_intents_given_up",
        "Interrupted writes this process recorded as unknown after too many undecided probes.",
        lambda: recorder.given_up,
    )
    if sessions is not None:
        metrics.gauge(
            "break_glass_sessions_open",
            "Break-the-glass sessions open now.",
            lambda: sessions.open_count(wall()),
        )

    async def pseudonym_of(patient: str) -> bytes | None:
        return await (await service.store()).pseudonym(patient)

    # Leaf contents on /ledger are read with the same token verifier as the FHIR API.
    readers = LeafReaders(
        verifier,
        pseudonym_of,
        auditor_role=settings.ledger_auditor_role,
        admin_role=settings.consent_admin_role,
    )
    witnessing = _witnessing(settings, ledger, metrics)
    audit = build_audit_api(
        settings,
        ledger=ledger,
        secret=secret,
        verifier=verifier,
        recorder=recorder,
        wall_clock=wall,
        clock=clock or time.monotonic,
        export_schema=export_schema,
        # With a witness quorum, verifiable exports carry the checkpoint it cosigned.
        witnessed=witnessing.published if witnessing is not None and witnessing.quorum else None,
    )
    return Gateway(
        settings,
        proxy,
        ledger,
        witnessing=witnessing,
        consent=consent,
        dev_issuer=dev_issuer,
        ledger_readers=readers,
        audit=audit,
        exports=_export_endpoints(settings, enforcement.pipeline.exports, verifier, recorder),
        web=partial(
            build_web,
            settings=settings,
            secret=secret,
            verifier=verifier,
            dev_issuer=dev_issuer,
            clock=wall,
        ),
    )


def _witnessing(settings: Settings, ledger: LedgerService, metrics: Metrics) -> Witnessing | None:
    """The background submitter of checkpoints to ``settings.witnesses`` (None: none)."""
    if not settings.witnesses:
        return None
    witnessing = Witnessing(
        ledger.store,
        settings.witnesses,
        quorum=settings.witness_quorum,
        timeout=settings.witness_timeout_seconds,
        tree=ledger.tree,  # the one tree the /ledger proofs use too
        kept=ledger.store,  # every replica publishes the store's newest witnessed checkpoint
        log_key=ledger.key.verifier(),  # ... once its log signature verifies (and the rest)
    )
    metrics.gauge(
        "ledger_witnessed_size",
        "Tree size of the newest checkpoint a quorum of witnesses cosigned (0: none).",
        lambda: witnessing.published_size,
    )
    metrics.gauge(
        "ledger_witness_failures",
        "Witnessing failures since start: submissions to witnesses, rounds the store failed, "
        "kept witnessed checkpoints refused.",
        lambda: sum(witnessing.failures.values()),
    )
    return witnessing


def _export_endpoints(
    settings: Settings, exports: Exports | None, verifier: TokenCheck, recorder: AuditRecorder
) -> ExportEndpoints | None:
    """The status and file endpoints of the pipeline's ``$export`` jobs (None without it)."""
    if exports is None:
        return None
    return ExportEndpoints(
        jobs=exports.jobs,
        judging=exports.flow.judging,
        verifier=verifier,
        recorder=recorder,
        base_path=settings.base_path,
        gateway_base=settings.gateway_base_url,
    )


def _consent_service(
    settings: Settings,
    ledger: LedgerService,
    consents: ConsentStore | None,
    wall_clock: Callable[[], float],
    lookup_key: bytes,
    *,
    caller_keys: Callable[[bytes], Awaitable[bytes]],
) -> ConsentService:
    """The consent service over the consent store, opened on first need (its pseudonym rows
    found by a keyed digest under ``lookup_key``, never by the patient reference);
    ``caller_keys`` gives a chain's evidence key (a patient caller's tag, consent.callers)."""

    async def open_consents() -> ConsentStore:
        if consents is not None:
            return consents
        return await open_consent_store(settings.store, lookup_key=lookup_key)

    public = urlsplit(settings.gateway_base_url)
    path = public.path.rstrip("/")
    root = path[: len(path) - len(settings.base_path)] if path.endswith(settings.base_path) else ""
    jurisdiction: Literal["opt-in", "opt-out"] = (
        "opt-out" if settings.consent_jurisdiction == "opt-out" else "opt-in"
    )
    return ConsentService(
        ledger,
        open_consents,
        admin_role=settings.consent_admin_role,
        defaults=Defaults(
            jurisdiction=jurisdiction,
            uncovered="redact" if settings.consent_uncovered_labels == "redact" else "deny",
            collect="jurisdiction"
            if settings.consent_collect_default == "jurisdiction"
            else "permit",
            labels=settings.label_rules,
        ),
        base_url=settings.gateway_base_url,
        receipt_base=f"{public.scheme}://{public.netloc}{root}",
        wall_clock=wall_clock,
        limits=ConsentLimits(settings.consent_max_depth, settings.consent_max_provisions),
        caller_keys=caller_keys,
        signatures="patient-key" if settings.consent_signatures == "patient-key" else "off",
        key_enrolment="patient" if settings.consent_key_enrolment == "patient" else "admin",
    )


def _caller_keys(ledger: LedgerService, wrap_key: bytes) -> Callable[[bytes], Awaitable[bytes]]:
    """A chain's audit evidence key, created on first use, stored wrapped under ``wrap_key``
    beside the ledger: the key a patient caller's tag is derived from (consent.callers), the
    one their shred deletes."""

    async def audit_key(pseudonym: bytes, candidate: bytes) -> bytes:
        return await (await ledger.store()).audit_key(pseudonym, candidate)

    async def audit_key_get(pseudonym: bytes) -> bytes | None:
        return await (await ledger.store()).audit_key_get(pseudonym)

    return PatientKeys(audit_key, wrap_key, audit_key_get=audit_key_get).key


def _upstream_factory(
    settings: Settings, upstream: httpx.AsyncBaseTransport | Upstream | None
) -> Callable[[], Upstream]:
    if isinstance(upstream, httpx.AsyncBaseTransport):
        transport = upstream
        return lambda: HttpxUpstream.from_transport(
            transport, connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout
        )
    if upstream is not None:
        ready = upstream
        return lambda: ready
    if settings.upstream_client == "httpx":
        return lambda: HttpxUpstream(
            httpx.AsyncClient(
                timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
                limits=httpx.Limits(max_connections=settings.upstream_pool_size),
                follow_redirects=False,
            )
        )

    if settings.upstream_client == "native":
        return lambda: NativeUpstream(
            settings.upstream,
            pool_size=settings.upstream_pool_size,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )

    def aiohttp_upstream() -> Upstream:
        # Imported here so that test runs injecting httpx never load aiohttp's client.
        from middleware.proxy.aiohttp_upstream import AiohttpUpstream  # noqa: PLC0415

        return AiohttpUpstream(
            settings.upstream,
            pool_size=settings.upstream_pool_size,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )

    return aiohttp_upstream


def _str_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
