"""The recorder's event building as it was before audit facts (kept verbatim, trimmed to the
events): the independent known answer of the golden rendering tests in ``test_render.py``.
Never import this from ``middleware``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from middleware.audit.alerts import break_glass_events, consent_decision_event
from middleware.audit.balp import exchange_events
from middleware.audit.parts import AgentInfo, Json, patient_reference
from middleware.audit.plan import Exchange, Phase
from middleware.auth.identity import Identity
from middleware.consent.decide import Decision

_ENTITY_SYSTEM = "https://consentry.dev/CodeSystem/audit-entity"
_MAPPING_SYSTEM = "https://consentry.dev/CodeSystem/mapping-profile"


def old_plan(
    exchange: Exchange, phase: Phase, recorded: datetime, gateway: AgentInfo
) -> list[tuple[str | None, list[Json]]]:
    """(patient, events) of each entry, in order: the old ``recorder._plan``."""
    x = exchange
    released = {patient_reference(p) for p in x.released}
    targets: list[tuple[str | None, Decision | None]] = [
        (patient_reference(p), d) for p, d in x.decisions.items()
    ] or [(None, None)]

    def restful(patient: str | None, refs: Sequence[str]) -> Json:
        (event,) = exchange_events(
            x.request,
            identity=x.identity,
            patients=[] if patient is None else [patient],
            outcome_status=x.status,
            recorded=recorded,
            request_id=x.request_id,
            raw_request=x.raw_request,
            gateway=gateway,
            client_address=x.client_address,
            resource_refs=refs,
        )
        if x.mapping is not None:
            event["entity"].append(_mapping_entity(x.mapping))
        return event

    def authz(patient: str | None, decision: Decision | None) -> list[Json]:
        if decision is None:
            return []
        event = consent_decision_event(
            decision,
            identity=x.identity,
            patient=patient,
            recorded=recorded,
            request_id=x.request_id,
            gateway=gateway,
            client_address=x.client_address,
        )
        return [event]

    plans: list[tuple[str | None, list[Json]]] = []
    for patient, decision in targets:
        if phase == "exchange":
            disclosed = x.status < 400 and (patient is None or patient in released)
            refs = x.resource_refs if disclosed or patient is None else ()
            events = [*authz(patient, decision), restful(patient, refs)]
        elif phase == "decision":
            events = authz(patient, decision) or [restful(patient, x.resource_refs)]
        else:
            events = [restful(patient, x.resource_refs)]
        plans.append((patient, events))
    return plans


def old_break_glass(
    phase: str,
    *,
    identity: Identity,
    patients: Sequence[str],
    recorded: datetime,
    request_id: str,
    gateway: AgentInfo,
    client_address: str | None,
    reason: str | None,
) -> list[Json]:
    """The events of the old ``record_break_glass``, one per patient."""
    events = break_glass_events(
        phase,  # type: ignore[arg-type]
        identity=identity,
        patients=[patient_reference(p) for p in patients],
        recorded=recorded,
        request_id=request_id,
        gateway=gateway,
        client_address=client_address,
    )
    if reason is not None:
        for event in events:
            event["entity"].append(
                {
                    "type": {"system": _ENTITY_SYSTEM, "code": "reason"},
                    "detail": [{"type": "reason", "valueString": reason}],
                }
            )
    return events


def _mapping_entity(mapping: str) -> Json:
    profile, _, digest = mapping.partition(" ")
    return {
        "what": {"identifier": {"system": _MAPPING_SYSTEM, "value": profile}},
        "type": {"system": _ENTITY_SYSTEM, "code": "mapping-profile"},
        "detail": [{"type": "files-digest", "valueString": digest}],
    }
