"""IHE BALP AuditEvents rendered from an entry's audit facts, when they are read.

:func:`render_events` is deterministic and pure: the same facts always give the same events,
equal to what the recorder built (and stored as a Bundle) before facts replaced events as the
ledger's evidence (golden tests in ``tests/unit/audit/test_render.py``). It reuses the BALP
builders of :mod:`middleware.audit.balp` and :mod:`middleware.audit.alerts`:

====================  ==========================================================================
event                 AuditEvents (https://profiles.ihe.net/ITI/BALP/)
====================  ==========================================================================
exchange              the AuthZconsent event when a consent decision was taken, then the RESTful
                      event of the exchange for the entry's patient
decision              the AuthZconsent event; without a decision, the RESTful event
outcome               the RESTful event with the upstream's status
break-glass-started   DCM 110113 / 110127 Emergency Override Started (tagged for review)
break-glass-stopped   DCM 110113 / 110138 Emergency Override Stopped
====================  ==========================================================================

A RESTful event carries a mapping-profile entity when the exchange went through a mapping
profile; an override event a ``reason`` entity when the caller stated one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from middleware.audit.alerts import break_glass_events, consent_decision_event
from middleware.audit.balp import exchange_events
from middleware.audit.facts import AuditFacts
from middleware.audit.parts import Json

__all__ = ["ENTITY_SYSTEM", "MAPPING_SYSTEM", "for_patient", "mapping_entity", "render_events"]

ENTITY_SYSTEM: Final = "https://consentry.dev/CodeSystem/audit-entity"
MAPPING_SYSTEM: Final = "https://consentry.dev/CodeSystem/mapping-profile"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def render_events(facts: AuditFacts) -> list[Json]:
    """The BALP AuditEvents of the entry recording ``facts`` (module docstring), fresh dicts in
    FHIR R4 element order. Raises :class:`ValueError` for facts no entry could hold (an
    exchange without its interaction, a query without its raw request)."""
    recorded = _EPOCH + timedelta(microseconds=facts.recorded_us)
    if facts.event == "break-glass-started":
        return [_override(facts, recorded, "started")]
    if facts.event == "break-glass-stopped":
        # break_glass_events renders any phase but "started" as stopped: a changed literal
        # here is an equivalent mutant.
        return [_override(facts, recorded, "stopped")]
    if facts.event == "outcome":
        return [_restful(facts, recorded)]
    authz = [] if facts.decision is None else [_authz(facts, recorded)]
    if facts.event == "decision":
        return authz or [_restful(facts, recorded)]
    return [*authz, _restful(facts, recorded)]


def _restful(facts: AuditFacts, recorded: datetime) -> Json:
    request = facts.request()
    if request is None:
        raise ValueError("an exchange's facts name its interaction")
    (event,) = exchange_events(
        request,
        identity=facts.identity(),
        patients=[] if facts.patient is None else [facts.patient],
        outcome_status=facts.status,
        recorded=recorded,
        request_id=facts.request_id,
        raw_request=facts.raw_request,
        gateway=facts.gateway,
        client_address=facts.client_address,
        resource_refs=facts.resource_refs,
    )
    if facts.mapping is not None:
        event["entity"].append(mapping_entity(facts.mapping))
    return event


def _authz(facts: AuditFacts, recorded: datetime) -> Json:
    assert facts.decision is not None
    return consent_decision_event(
        facts.decision.decision(),
        identity=facts.identity(),
        patient=facts.patient,
        recorded=recorded,
        request_id=facts.request_id,
        gateway=facts.gateway,
        client_address=facts.client_address,
    )


def _override(facts: AuditFacts, recorded: datetime, phase: Literal["started", "stopped"]) -> Json:
    identity = facts.identity()
    if identity is None:
        raise ValueError("a break-the-glass entry names its caller")
    (event,) = break_glass_events(
        phase,
        identity=identity,
        patients=[] if facts.patient is None else [facts.patient],
        recorded=recorded,
        request_id=facts.request_id,
        gateway=facts.gateway,
        client_address=facts.client_address,
    )
    if facts.reason is not None:
        # The caller's stated reason, for the reviewer (R4 AuditEvent.entity.detail).
        event["entity"].append(
            {
                "type": {"system": ENTITY_SYSTEM, "code": "reason"},
                "detail": [{"type": "reason", "valueString": facts.reason}],
            }
        )
    return event


def for_patient(event: Json) -> Json:
    """``event`` as a patient reader is shown it ("who looked at my record"): a copy without
    BALP ``entity[query]`` (the raw request, base64: a search's query string or ``POST
    _search`` form, which names every patient and criterion of a multi-patient search, not
    only this patient) and without any ``agent.network`` (the staff's workstation addresses).
    Who acted, when, what, why and the outcome stay; an auditor is served the full event."""
    kept = dict(event)
    if "entity" in event:
        kept["entity"] = [e for e in event["entity"] if "query" not in e]
    if "agent" in event:
        kept["agent"] = [
            {k: v for k, v in agent.items() if k != "network"} for agent in event["agent"]
        ]
    return kept


def mapping_entity(mapping: str) -> Json:
    """An entity naming the mapping profile and the digest of its files (R4 AuditEvent.entity
    with ``what.identifier`` and a ``detail``), so an auditor can tell which mapping shaped
    what was released or written."""
    profile, _, digest = mapping.partition(" ")
    return {
        "what": {"identifier": {"system": MAPPING_SYSTEM, "value": profile}},
        "type": {"system": ENTITY_SYSTEM, "code": "mapping-profile"},
        "detail": [{"type": "files-digest", "valueString": digest}],
    }
