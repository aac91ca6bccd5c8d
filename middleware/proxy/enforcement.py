"""The enforced exchange: identify the caller, run the pipeline, record the audit trail.

The second of a request's three stages: for every request but the CapabilityStatement the
ASGI edge (:mod:`middleware.proxy.handler`) calls :meth:`Enforcement.run`, which calls the
pipeline, which reaches the upstream only through the forwarder
(:class:`~middleware.proxy.forwarder.UpstreamForwarder`) injected here at construction and
bound to each exchange. Nothing here calls back into the edge.

1. **identify**: the bearer token is verified (:class:`~middleware.auth.verify.TokenVerifier`;
   401 without a valid one) and becomes a :class:`~middleware.pipeline.caller.Caller`; the
   edge does this first (:meth:`Enforcement.identify`), before reading the body;
2. **enforce**: :class:`~middleware.pipeline.dispatch.Pipeline` decides, forwards and filters;
3. **audit**: before the answer is returned for release, its audit entries are committed to
   the ledger (:class:`~middleware.proxy.exchange_audit.ExchangeAudit`); a write's decision
   was committed before it was forwarded (the write half records through the same
   :class:`ExchangeAudit`). Refused and failed requests are recorded too, once the caller
   proved who it is: a 401 is not (an unauthenticated request touches no record and names
   nobody; recording each would let anyone grow the append-only ledger without bound). When
   the ledger cannot commit, :class:`~middleware.errors.ServiceUnavailable` replaces the
   answer: nothing is released.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from middleware.audit.recorder import AuditRecorder
from middleware.auth.identity import Identity
from middleware.errors import GatewayError
from middleware.fhir.request import FhirRequest
from middleware.ops.metrics import Metrics
from middleware.ops.tracing import current
from middleware.pipeline.breakglass import Session, requested_reason
from middleware.pipeline.caller import caller_of
from middleware.pipeline.dispatch import Pipeline
from middleware.pipeline.exchange import Answer, Ask, Forwarder, Upstreamed
from middleware.pipeline.idmap import IdEdge
from middleware.pipeline.judge import Trail
from middleware.proxy.exchange_audit import ExchangeAudit, final_phase, raw_request
from middleware.proxy.exchange_log import ExchangeLog
from middleware.proxy.forwarder import UpstreamForwarder
from middleware.proxy.glass_stops import GlassStops
from middleware.types import Scope

__all__ = ["Enforcement", "TokenCheck"]


class TokenCheck(Protocol):
    """What the enforcement needs of :class:`~middleware.auth.verify.TokenVerifier`."""

    async def verify(self, authorization: str | None) -> Identity: ...

    def proved(self, authorization: str | None) -> bool: ...


class Enforcement:
    """Identify, enforce, audit (module docstring). Every part comes in built: ``pipeline``
    (its halves built on one another), ``audit`` (which the write halves record through
    too), ``forwarder``; ``ids`` maps client ids at the upstream edge; ``metrics`` counts
    consent decisions."""

    def __init__(
        self,
        *,
        verifier: TokenCheck,
        pipeline: Pipeline,
        audit: ExchangeAudit,
        forwarder: UpstreamForwarder,
        metrics: Metrics,
        gateway_base: str,
        ids: IdEdge | None = None,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.verifier = verifier
        #: Raises ServiceUnavailable when the ledger would refuse this exchange's entries
        #: (its queue full, its writer not startable): checked first, so such a request costs
        #: no upstream call and no pipeline work (pushback, 503 with Retry-After).
        self.admit = admit
        self.pipeline = pipeline
        self.audit = audit
        self.forwarder = forwarder
        self.metrics = metrics
        self.ids = ids
        self._gateway_base = gateway_base.rstrip("/")
        sessions = pipeline.reads.break_glass
        #: Records the break-the-glass stops (its sweep started by the app; None: no sessions).
        self.glass_stops = (
            None
            if sessions is None
            else GlassStops(audit.recorder, sessions, pipeline.reads.wall_clock)
        )

    @property
    def recorder(self) -> AuditRecorder:
        """The audit recorder the exchanges are recorded on."""
        return self.audit.recorder

    async def identify(self, headers: dict[str, str]) -> Identity:
        """The caller the request's bearer token proves (401 / 503 from the verifier)."""
        return await self.verifier.verify(headers.get("authorization"))

    def proved(self, headers: dict[str, str]) -> bool:
        """Whether the request's bearer token verified before and has not expired (no token
        work is done; :meth:`identify` still decides)."""
        return self.verifier.proved(headers.get("authorization"))

    async def record_refused(self, scope: Scope, *, rid: str, status: int) -> None:
        """Record a request the edge refused before enforcing it (see
        :meth:`ExchangeAudit.record_refused`)."""
        await self.audit.record_refused(scope, rid=rid, status=status)

    async def run(
        self,
        scope: Scope,
        *,
        request: FhirRequest,
        body: bytes,
        headers: dict[str, str],
        log: ExchangeLog,
        identity: Identity | None = None,
    ) -> Answer:
        """The answer to release for one classified request; raises :class:`GatewayError`
        (already audited, when the caller was identified) for every refusal. ``log`` is the
        edge's record of the exchange (request id; upstream time is added to it);
        ``identity`` the caller the edge already verified (else the token is verified here)."""
        if self.admit is not None:
            await self.admit()
        client_host: str | None = (scope.get("client") or (None,))[0]
        rid = log.rid
        log.audited = True  # from here every outcome is recorded below
        raw = raw_request(scope, body if request.via_post else b"")
        ask: Ask | None = None
        await self._close_expired(rid, client_host)
        try:
            if identity is None:
                identity = await self.identify(headers)
            caller = caller_of(identity)
            emergency = requested_reason(headers, caller)
            ask = Ask(
                request=request,
                body=body,
                headers=headers,
                caller=caller,
                forward=self._forwarder(headers, client_host, log),
                self_url=self._self_url(request),
                request_id=rid,
                raw_request=raw,
                client_address=client_host,
                trail=Trail(emergency=emergency is not None),
            )
            answer = await self.pipeline.run(ask)
            await self._open_sessions(ask, emergency)
        except Exception as error:
            # Refusals, and failures the gateway did not foresee (recorded as the 500 the
            # edge will answer): both are on the ledger before anything is answered. A
            # caller that did not prove who it is costs nothing durable (module docstring).
            if identity is None:
                raise
            status = error.status if isinstance(error, GatewayError) else 500
            await self.audit.record_refusal(request, identity, ask, status, rid, raw, client_host)
            raise
        finally:
            if ask is not None:
                _tally(ask.trail, log, self.metrics)
        await self.audit.record(ask, answer.status, final_phase(ask))
        return answer

    async def _open_sessions(self, ask: Ask, reason: str | None) -> None:
        """Start (and record, before anything is released) the emergency sessions this
        exchange's overrides opened. Only a request giving the reason opens one: without it,
        an override came from a session open at the decision, never renewed (R7b-2)."""
        reads = self.pipeline.reads
        sessions = reads.break_glass
        if sessions is None or reason is None or not ask.trail.overridden:
            return
        opened: list[Session] = []
        try:
            # open() drops what it claimed when it fails; what it opened is dropped below
            # unless its start is durable, on every path out, cancellation included (R7b-1).
            opened = await sessions.open(
                ask.caller, sorted(ask.trail.overridden), reads.wall_clock()
            )
            if not opened:
                return
            indexes = await self.recorder.record_break_glass(
                "started",
                identity=ask.caller.identity,
                patients=[session.patient for session in opened],
                request_id=ask.request_id,
                client_address=ask.client_address,
                reason=reason,
            )
        except BaseException:
            # Emergency access only once its start is durable: nothing honours a
            # session whose start the ledger did not take (the header is needed again).
            sessions.abandon(opened)
            raise
        await sessions.begin(opened)  # honoured from here (R7b-3); these very ones (R7c-1)
        if self.glass_stops is not None:  # any process may now record their stops
            await self.glass_stops.started(ask.caller, opened, indexes)

    async def _close_expired(self, rid: str, client_host: str | None) -> None:
        """Record the stop of every emergency session of this process whose time is over."""
        stops = self.glass_stops
        if stops is not None and stops.sessions.holding():
            await stops.close_expired(rid, client_host)

    def _forwarder(
        self, client: dict[str, str], client_host: str | None, log: ExchangeLog
    ) -> Forwarder:
        """The forwarder bound to this exchange (the pipeline's seam), through the id
        mapping when one is on."""
        forward = _bound(self.forwarder, client, client_host, log)
        return forward if self.ids is None else self.ids.wrap(forward)

    def _self_url(self, request: FhirRequest) -> str:
        url = f"{self._gateway_base}/{request.path}" if request.path else self._gateway_base
        return f"{url}?{request.query.decode('ascii')}" if request.query else url


def _tally(trail: Trail, log: ExchangeLog, metrics: Metrics) -> None:
    """Count the exchange's consent decisions by effect, and mark it consent-denied when a
    deny stood (not overridden by break-the-glass): its 403 or 404 is then the consent's.
    The request's trace span gets the same effect and how many patients were decided."""
    decided = 0
    for patient, decision in trail.decisions.items():
        if decision is None:  # the caller's own record: no consent is consulted
            continue
        decided += 1
        metrics.observe_decision(decision.effect)
        if not decision.permitted and patient not in trail.overridden:
            log.consent_denied = True
    if decided:
        marks = current()
        marks.set("consentry.patients", decided)
        marks.set("consentry.decision", "deny" if log.consent_denied else "permit")


def _bound(
    forwarder: UpstreamForwarder,
    client: dict[str, str],
    client_host: str | None,
    log: ExchangeLog,
) -> Forwarder:
    async def forward(
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        client_headers: bool = True,
    ) -> Upstreamed:
        return await forwarder.forward(
            method,
            target,
            client=client,
            client_host=client_host,
            log=log,
            body=body,
            headers=headers,
            client_headers=client_headers,
        )

    return forward
