"""The enforced exchange: identify the caller, run the pipeline, record the audit trail.

For every request but the CapabilityStatement the proxy calls :meth:`Enforcement.run`:

1. **identify**: the bearer token is verified (:class:`~middleware.auth.verify.TokenVerifier`;
   401 without a valid one) and becomes a :class:`~middleware.pipeline.caller.Caller`; the
   proxy does this first (:meth:`Enforcement.identify`), before reading the body;
2. **enforce**: :class:`~middleware.pipeline.flow.Flow` decides, forwards through the proxy's
   :meth:`~middleware.proxy.handler.ProxyHandler.forward` and filters;
3. **audit**: before the answer is returned for release, its IHE BALP AuditEvents are
   committed to the ledger (:class:`~middleware.audit.recorder.AuditRecorder`); a write's
   decision was committed before it was forwarded (the pipeline calls :meth:`record`). Refused
   and failed requests are recorded too, once the caller proved who it is: a 401 is not (an
   unauthenticated request touches no record and names nobody; recording each would let
   anyone grow the append-only ledger without bound). When the ledger cannot commit,
   :class:`~middleware.errors.ServiceUnavailable` replaces the answer: nothing is released.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from middleware.audit.recorder import AuditRecorder, Exchange, Phase
from middleware.auth.identity import Identity
from middleware.errors import GatewayError
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.pipeline.breakglass import requested_reason
from middleware.pipeline.caller import caller_of
from middleware.pipeline.exchange import Answer, Ask, Forwarder, Upstreamed
from middleware.pipeline.flow import Flow
from middleware.pipeline.idmap import IdEdge
from middleware.pipeline.judge import Trail
from middleware.types import Scope

if TYPE_CHECKING:
    from middleware.ops.metrics import Metrics
    from middleware.proxy.handler import ExchangeLog, ProxyHandler

__all__ = ["Enforcement", "TokenCheck"]

#: Interactions whose audit events list the released resources one by one (a search's answer
#: is named by its query instead, as BALP Query does).
_NAMED_RESOURCES: Final = frozenset(
    {
        Interaction.READ,
        Interaction.VREAD,
        Interaction.HISTORY_INSTANCE,
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.PATCH,
        Interaction.DELETE,
    }
)


class TokenCheck(Protocol):
    """What the enforcement needs of :class:`~middleware.auth.verify.TokenVerifier`."""

    async def verify(self, authorization: str | None) -> Identity: ...

    def proved(self, authorization: str | None) -> bool: ...


class Enforcement:
    """Identify, enforce, audit (module docstring)."""

    def __init__(
        self,
        *,
        verifier: TokenCheck,
        flow: Flow,
        recorder: AuditRecorder,
        gateway_base: str,
        ids: IdEdge | None = None,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.verifier = verifier
        #: Raises ServiceUnavailable when the ledger would refuse this exchange's entries
        #: (its queue full, its writer not startable): checked first, so such a request costs
        #: no upstream call and no pipeline work (pushback, 503 with Retry-After).
        self.admit = admit
        self.flow = flow
        self.recorder = recorder
        self.ids = ids
        self._gateway_base = gateway_base.rstrip("/")

    async def identify(self, headers: dict[str, str]) -> Identity:
        """The caller the request's bearer token proves (401 / 503 from the verifier)."""
        return await self.verifier.verify(headers.get("authorization"))

    def proved(self, headers: dict[str, str]) -> bool:
        """Whether the request's bearer token verified before and has not expired (no token
        work is done; :meth:`identify` still decides)."""
        return self.verifier.proved(headers.get("authorization"))

    async def run(
        self,
        scope: Scope,
        *,
        request: FhirRequest,
        body: bytes,
        headers: dict[str, str],
        log: ExchangeLog,
        proxy: ProxyHandler,
        identity: Identity | None = None,
    ) -> Answer:
        """The answer to release for one classified request; raises :class:`GatewayError`
        (already audited, when the caller was identified) for every refusal. ``log`` is the
        proxy's record of the exchange (request id; upstream time is added to it);
        ``identity`` the caller the proxy already verified (else the token is verified here)."""
        if self.admit is not None:
            await self.admit()
        client_host: str | None = (scope.get("client") or (None,))[0]
        rid = log.rid
        log.audited = True  # from here every outcome is recorded below
        raw_request = _raw_request(scope, body if request.via_post else b"")
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
                forward=self._forwarder(proxy, headers, client_host, log),
                self_url=self._self_url(request),
                request_id=rid,
                raw_request=raw_request,
                client_address=client_host,
            )
            ask.trail.emergency = emergency is not None
            answer = await self.flow.run(ask)
            await self._open_sessions(ask, emergency)
        except Exception as error:
            # Refusals, and failures the gateway did not foresee (recorded as the 500 the
            # proxy will answer): both are on the ledger before anything is answered. A
            # caller that did not prove who it is costs nothing durable (module docstring).
            if identity is None:
                raise
            await self._record_refusal(
                request,
                identity=identity,
                ask=ask,
                status=error.status if isinstance(error, GatewayError) else 500,
                rid=rid,
                raw_request=raw_request,
                client_host=client_host,
            )
            raise
        finally:
            if ask is not None:
                _tally(ask.trail, log, proxy.metrics)
        await self.record(ask, answer.status, _final_phase(ask))
        return answer

    async def _open_sessions(self, ask: Ask, reason: str | None) -> None:
        """Start (and record, before anything is released) the emergency sessions this
        exchange's overrides opened."""
        sessions = self.flow.break_glass
        if sessions is None or not ask.trail.overridden:
            return
        opened = sessions.open(ask.caller, sorted(ask.trail.overridden), self.flow.wall_clock())
        if opened:
            await self.recorder.record_break_glass(
                "started",
                identity=ask.caller.identity,
                patients=opened,
                request_id=ask.request_id,
                client_address=ask.client_address,
                reason=reason,
            )

    async def _close_expired(self, rid: str, client_host: str | None) -> None:
        """Record the stop of every emergency session whose time is over."""
        sessions = self.flow.break_glass
        if sessions is None:
            return
        for session in sessions.expire(self.flow.wall_clock()):
            await self.recorder.record_break_glass(
                "stopped",
                identity=session.identity,
                patients=[session.patient],
                request_id=rid,
                client_address=client_host,
            )

    async def record(self, ask: Ask, status: int, phase: Phase) -> None:
        """Commit ``phase`` of ``ask``'s exchange to the ledger (raises ServiceUnavailable)."""
        trail = ask.trail
        intent = trail.intent if phase == "outcome" else None
        await self.recorder.record(_exchange(ask, status), phase, intent=intent)
        if phase == "decision":
            trail.decision_recorded = True
        elif intent is not None:
            trail.intent = None

    async def intend(self, ask: Ask, probe: str, created: bool) -> None:
        """Before a write whose decision is recorded is forwarded: keep its outcome entries
        for each way it can end, with ``probe`` (``audit.recorder.AuditRecorder.intend``), so
        a gateway killed before the outcome is recorded is reconciled at its next start
        (``proxy.reconcile``). Not with an id mapping: the probe would name client ids."""
        if self.ids is not None:
            return
        applied = 201 if created else 200
        variants = {name: _exchange(ask, status) for name, status in _variants(applied)}
        ask.trail.intent = await self.recorder.intend(variants, probe)

    async def _record_refusal(
        self,
        request: FhirRequest,
        *,
        identity: Identity | None,
        ask: Ask | None,
        status: int,
        rid: str,
        raw_request: bytes,
        client_host: str | None,
    ) -> None:
        if ask is not None:
            await self.record(ask, status, _final_phase(ask))
            return
        await self._record_bare(request, identity, status, rid, raw_request, client_host)

    async def record_refused(self, scope: Scope, *, rid: str, status: int) -> None:
        """Record a request refused before it could be classified or enforced (a path
        trick, a method-override header, a body that is not FHIR JSON...): no identity was
        checked, no patient touched; the raw request is kept (BALP ``entity[query]``)."""
        method = str(scope["method"])
        request = FhirRequest(
            interaction=Interaction.INVALID, method=method, level=Level.SYSTEM, path=""
        )
        client_host = (scope.get("client") or (None,))[0]
        await self._record_bare(request, None, status, rid, _raw_request(scope, b""), client_host)

    async def _record_bare(  # noqa: PLR0917 - the fields of the one record it writes
        self,
        request: FhirRequest,
        identity: Identity | None,
        status: int,
        rid: str,
        raw_request: bytes,
        client_host: str | None,
    ) -> None:
        """Record an exchange refused before the pipeline had a caller: no patient touched."""
        await self.recorder.record(
            Exchange(
                request=request,
                identity=identity,
                status=status,
                request_id=rid,
                raw_request=raw_request,
                client_address=client_host,
            ),
            "exchange",
        )

    def _forwarder(
        self, proxy: ProxyHandler, client: dict[str, str], client_host: str | None, log: ExchangeLog
    ) -> Forwarder:
        forward = _bound(proxy, client, client_host, log)
        return forward if self.ids is None else self.ids.wrap(forward)

    def _self_url(self, request: FhirRequest) -> str:
        url = f"{self._gateway_base}/{request.path}" if request.path else self._gateway_base
        return f"{url}?{request.query.decode('ascii')}" if request.query else url


def _variants(applied: int) -> tuple[tuple[str, int], ...]:
    """How an interrupted write is recorded once reconciled: the upstream has it (its success
    status), does not have it (504: the gateway never had the upstream's answer), or cannot
    tell (502)."""
    return (("applied", applied), ("absent", 504), ("unknown", 502))


def _exchange(ask: Ask, status: int) -> Exchange:
    """``ask``'s exchange as the audit records it, answered ``status``."""
    trail = ask.trail
    refs: Sequence[str] = trail.refs if ask.request.interaction in _NAMED_RESOURCES else ()
    return Exchange(
        request=ask.request,
        identity=ask.caller.identity,
        status=status,
        request_id=ask.request_id,
        raw_request=ask.raw_request,
        client_address=ask.client_address,
        decisions=dict(trail.decisions),
        released=frozenset(trail.released) if status < 400 else frozenset(),
        resource_refs=tuple(refs),
        narrowed=trail.narrowed,
        break_glass=trail.break_glass,
        mapping=trail.mapping,
    )


def _tally(trail: Trail, log: ExchangeLog, metrics: Metrics) -> None:
    """Count the exchange's consent decisions by effect, and mark it consent-denied when a
    deny stood (not overridden by break-the-glass): its 403 or 404 is then the consent's."""
    for patient, decision in trail.decisions.items():
        if decision is None:  # the caller's own record: no consent is consulted
            continue
        metrics.observe_decision(decision.effect)
        if not decision.permitted and patient not in trail.overridden:
            log.consent_denied = True


def _final_phase(ask: Ask) -> Phase:
    return "outcome" if ask.trail.decision_recorded else "exchange"


def _raw_request(scope: Scope, form: bytes) -> bytes:
    """The request line's target as received (BALP ``entity[query]``), and a search form."""
    target = bytes(scope.get("raw_path") or scope["path"].encode("utf-8"))
    query = bytes(scope.get("query_string", b""))
    method = str(scope["method"]).encode("ascii")
    raw = method + b" " + target + (b"?" + query if query else b"")
    return raw + b"\r\n\r\n" + form if form else raw


def _bound(
    proxy: ProxyHandler, client: dict[str, str], client_host: str | None, log: ExchangeLog
) -> Forwarder:
    async def forward(
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        client_headers: bool = True,
    ) -> Upstreamed:
        return await proxy.forward(
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
