"""What the ledger records of one enforced exchange: the one place an
:class:`~middleware.audit.plan.Exchange` is made of an :class:`~middleware.pipeline.exchange.Ask`.

:class:`ExchangeAudit` is built at wiring time over the audit recorder, before the pipeline
halves that record through it (:class:`~middleware.pipeline.writes.Writes` records a write's
decision and keeps its intent before forwarding it; :class:`~middleware.pipeline.bundles.Bundles`
records each batch entry) and the enforcement stage (:mod:`middleware.proxy.enforcement`:
the exchange's final phase, refusals). It calls only the recorder; each commit is a trace's
``audit`` span (:mod:`middleware.ops.tracing`).

What an exchange's entries name of the resources it touched is decided in
:mod:`middleware.audit.entities` (:func:`exchange_of` takes the resources through its
:func:`~middleware.audit.entities.named_resources`; the plan names them, per patient, by
phase); the patients whose data reached the client are kept only when the answer is a success.
"""

from __future__ import annotations

from middleware.audit.entities import named_resources
from middleware.audit.recorder import AuditRecorder, Exchange, Phase
from middleware.auth.identity import Identity
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ops.tracing import stage
from middleware.pipeline.exchange import Ask
from middleware.types import Scope

__all__ = ["ExchangeAudit", "exchange_of", "final_phase", "raw_request"]


class ExchangeAudit:
    """Records the phases of enforced exchanges on ``recorder``'s ledger (module docstring).
    ``ids_mapped``: client ids differ from the upstream's (an id mapping is on), so no write
    intent is kept (its probe would name client ids)."""

    def __init__(self, recorder: AuditRecorder, *, ids_mapped: bool = False) -> None:
        self.recorder = recorder
        self._ids_mapped = ids_mapped

    async def record(self, ask: Ask, status: int, phase: Phase) -> None:
        """Commit ``phase`` of ``ask``'s exchange to the ledger (raises ServiceUnavailable)."""
        trail = ask.trail
        intent = trail.intent if phase == "outcome" else None
        with stage("audit") as marks:
            marks.set("consentry.audit.phase", phase)
            await self.recorder.record(exchange_of(ask, status), phase, intent=intent)
        if phase == "decision":
            trail.decision_committed()
        elif intent is not None:
            trail.intent_closed()

    async def intend(self, ask: Ask, probe: str, created: bool) -> None:
        """Before a write whose decision is recorded is forwarded: keep its outcome entries
        for each way it can end, with ``probe`` (``audit.recorder.AuditRecorder.intend``), so
        a gateway killed before the outcome is recorded is reconciled at its next start
        (``proxy.reconcile``). Not with an id mapping: the probe would name client ids."""
        if self._ids_mapped:
            return
        applied = 201 if created else 200
        variants = {name: exchange_of(ask, status) for name, status in _variants(applied)}
        ask.trail.intent_kept(await self.recorder.intend(variants, probe))

    async def record_refusal(  # noqa: PLR0917 - the fields of the one record it writes
        self,
        request: FhirRequest,
        identity: Identity | None,
        ask: Ask | None,
        status: int,
        rid: str,
        raw: bytes,
        client_host: str | None,
    ) -> None:
        """Record a refused or failed exchange: through its ``ask`` when the pipeline had
        one, else bare (refused before the pipeline had a caller: no patient touched)."""
        if ask is not None:
            await self.record(ask, status, final_phase(ask))
            return
        await self._record_bare(request, identity, status, rid, raw, client_host)

    async def record_refused(self, scope: Scope, *, rid: str, status: int) -> None:
        """Record a request refused before it could be classified or enforced (a path
        trick, a method-override header, a body that is not FHIR JSON...): no identity was
        checked, no patient touched; the raw request is kept (BALP ``entity[query]``)."""
        method = str(scope["method"])
        request = FhirRequest(
            interaction=Interaction.INVALID, method=method, level=Level.SYSTEM, path=""
        )
        client_host = (scope.get("client") or (None,))[0]
        await self._record_bare(request, None, status, rid, raw_request(scope, b""), client_host)

    async def _record_bare(  # noqa: PLR0917 - the fields of the one record it writes
        self,
        request: FhirRequest,
        identity: Identity | None,
        status: int,
        rid: str,
        raw: bytes,
        client_host: str | None,
    ) -> None:
        exchange = Exchange(
            request=request,
            identity=identity,
            status=status,
            request_id=rid,
            raw_request=raw,
            client_address=client_host,
        )
        with stage("audit") as marks:
            marks.set("consentry.audit.phase", "exchange")
            await self.recorder.record(exchange, "exchange")


def exchange_of(ask: Ask, status: int) -> Exchange:
    """``ask``'s exchange as the audit records it, answered ``status`` (module docstring)."""
    trail = ask.trail
    return Exchange(
        request=ask.request,
        identity=ask.caller.identity,
        status=status,
        request_id=ask.request_id,
        raw_request=ask.raw_request,
        client_address=ask.client_address,
        decisions=dict(trail.decisions),
        released=frozenset(trail.released) if status < 400 else frozenset(),
        resource_refs=named_resources(ask.request.interaction, trail.refs),
        narrowed=trail.narrowed,
        break_glass=trail.break_glass,
        mapping=trail.mapping,
    )


def final_phase(ask: Ask) -> Phase:
    """``outcome`` when the exchange's decision was recorded before forwarding, else
    ``exchange``."""
    return "outcome" if ask.trail.decision_recorded else "exchange"


def raw_request(scope: Scope, form: bytes) -> bytes:
    """The request line's target as received (BALP ``entity[query]``), and a search form."""
    target = bytes(scope.get("raw_path") or scope["path"].encode("utf-8"))
    query = bytes(scope.get("query_string", b""))
    method = str(scope["method"]).encode("ascii")
    raw = method + b" " + target + (b"?" + query if query else b"")
    return raw + b"\r\n\r\n" + form if form else raw


def _variants(applied: int) -> tuple[tuple[str, int], ...]:
    """How an interrupted write is recorded once reconciled: the upstream has it (its success
    status), does not have it (504: the gateway never had the upstream's answer), or cannot
    tell (502)."""
    return (("applied", applied), ("absent", 504), ("unknown", 502))
