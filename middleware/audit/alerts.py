"""Security-alert AuditEvents: consent decisions and break-the-glass (pure, no clock).

Both are DICOM 110113 "Security Alert" events (http://dicom.nema.org/resources/ontology/DCM)
with ``action`` E, recorded by the gateway as a security server (security-source-type 6):

* :func:`consent_decision_event` follows IHE BALP AuthZconsent (subtype
  ``AuthZsubType#AuthZ-Consent``, https://profiles.ihe.net/ITI/BALP/StructureDefinition-IHE.BasicAudit.AuthZconsent.html);
* :func:`break_glass_events` uses the DICOM subtypes 110127 Emergency Override Started and
  110138 Emergency Override Stopped (PS3.16 CID 403, "Security Alert Event Type Codes").

Use them through :mod:`middleware.audit.balp`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, Literal

from middleware.audit.parts import (
    DCM,
    OUTCOME_SERIOUS_FAILURE,
    OUTCOME_SUCCESS,
    AgentInfo,
    Json,
    agents,
    coding,
    complete,
    instant,
    patient_entity,
    patient_reference,
    source,
    transaction_entity,
)
from middleware.auth.identity import Identity
from middleware.consent.decide import Decision

__all__ = [
    "LEDGER_INDEX_DETAIL",
    "REVIEW_TAG",
    "break_glass_events",
    "consent_decision_event",
    "relied_on",
]

_AUTHZ_SUBTYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
_USER_AGENT_TYPES: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
_SECURITY_ROLE: Final = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
_RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"

LEDGER_INDEX_DETAIL: Final = "ledger-index"
"""``entity.detail.type`` on a Consent entity of a consent decision event: its
``valueString`` is the decimal index of the ledger leaf that recorded the consent version the
decision relied on, so an auditor can fetch that leaf and its inclusion proof."""

REVIEW_TAG: Final = coding(
    "https://consentry.dev/fhir/CodeSystem/audit-flag", "review", "Needs review"
)
"""The ``meta.tag`` on every break-glass event. A tag rather than a security label or an
entity detail: FHIR R4 Meta.tag is the element for process and workflow, and a review queue
can then select them with ``_tag``."""


def consent_decision_event(
    decision: Decision,
    *,
    identity: Identity | None,
    patient: str | None,
    recorded: datetime,
    request_id: str,
    gateway: AgentInfo,
    client_address: str | None,
) -> Json:
    """The BALP AuthZconsent event of one consent decision about ``patient``.

    ``outcome`` is ``0`` for permit and ``8`` for deny (BALP's deny example); ``outcomeDesc``
    is the effect plus any obligation codes (``permit; obligations: redact``), never the trace
    reasons, which can reveal sensitivity labels. Each consent the decision relied on (a trace
    step that reached a provision; ignored and not-applicable consents are left out) becomes
    an entity ``Consent/<id>`` carrying a :data:`LEDGER_INDEX_DETAIL` detail when its ledger
    index is known. The token's ``jti`` is BALP's ``entity[token]``. The gateway is the
    ``authserver`` agent. Deviation from AuthZconsent, whose entity slicing is closed: the
    ``X-Request-Id`` entity is added to tie the decision to its exchange, and no userorg agent
    is written (the token names none); so no ``meta.profile`` is claimed.
    """
    entities = [] if patient is None else [patient_entity(patient_reference(patient))]
    entities += [_consent_entity(cid, index) for cid, index in relied_on(decision)]
    if identity is not None and identity.token_id is not None:
        entities.append(_token_entity(identity.token_id))
    entities.append(transaction_entity(request_id))
    desc: str = decision.effect
    if decision.obligations:
        desc += "; obligations: " + ", ".join(o.code for o in decision.obligations)
    event: Json = {
        "resourceType": "AuditEvent",
        "type": coding(DCM, "110113", "Security Alert"),
        "subtype": [coding(_AUTHZ_SUBTYPE, "AuthZ-Consent")],
        "action": "E",
        "recorded": instant(recorded),
        "outcome": OUTCOME_SUCCESS if decision.permitted else OUTCOME_SERIOUS_FAILURE,
        "outcomeDesc": desc,
    }
    parties = _security_agents(identity, client_address, gateway)
    src = source(gateway, "6", "Security Server")
    return complete(event, identity=identity, agents=parties, source=src, entities=entities)


def break_glass_events(
    phase: Literal["started", "stopped"],
    *,
    identity: Identity,
    patients: Sequence[str],
    recorded: datetime,
    request_id: str,
    gateway: AgentInfo,
    client_address: str | None,
) -> list[Json]:
    """Emergency-override (break-the-glass) events: subtype 110127 when ``phase`` is
    ``started``, 110138 when ``stopped``; one per distinct patient (ids or ``Patient/<id>``),
    or one without a patient. Each is tagged :data:`REVIEW_TAG` so the override is reviewed
    after the fact. The user's purposes of use (e.g. v3 ActReason ETREAT or BTG) are kept on
    the user agent; the gateway, which let the override through, is the ``authserver``."""
    subtype = (
        coding(DCM, "110127", "Emergency Override Started")
        if phase == "started"
        else coding(DCM, "110138", "Emergency Override Stopped")
    )
    targets: list[str | None] = list(dict.fromkeys(patient_reference(p) for p in patients))
    events: list[Json] = []
    for patient in targets or [None]:
        entities = [] if patient is None else [patient_entity(patient)]
        entities.append(transaction_entity(request_id))
        event: Json = {
            "resourceType": "AuditEvent",
            "meta": {"tag": [dict(REVIEW_TAG)]},
            "type": coding(DCM, "110113", "Security Alert"),
            "subtype": [dict(subtype)],
            "action": "E",
            "recorded": instant(recorded),
            "outcome": OUTCOME_SUCCESS,
        }
        parties = _security_agents(identity, client_address, gateway)
        src = source(gateway, "6", "Security Server")
        events.append(
            complete(event, identity=identity, agents=parties, source=src, entities=entities)
        )
    return events


def _security_agents(
    identity: Identity | None, client_address: str | None, gateway: AgentInfo
) -> list[Json]:
    # BALP AuthZconsent: user IRCP, client DCM 110150 Application, authorizer authserver
    # without a network address.
    return agents(
        identity,
        participation=("IRCP", "information recipient"),
        client_type=coding(DCM, "110150", "Application"),
        client_address=client_address,
        gateway=gateway,
        server_type=coding(_SECURITY_ROLE, "authserver", "authorization server"),
        server_network=False,  # equivalent mutant: None (gateway_agent only tests its truth)
    )


def relied_on(decision: Decision) -> list[tuple[str, int | None]]:
    """The consents ``decision`` relied on, as ``(consent id, ledger index or None)`` pairs in
    trace order without repeats: the trace steps that reached a provision. Consents that were
    ignored (not active, out of period, another patient) or did not apply carry no provision
    path and are left out."""
    pairs = (
        (step.consent_id, step.ledger_index)
        for step in decision.trace
        if step.consent_id is not None and step.provision_path is not None
    )
    return list(dict.fromkeys(pairs))


def _consent_entity(consent_id: str, ledger_index: int | None) -> Json:
    ref = consent_id if consent_id.startswith("Consent/") else f"Consent/{consent_id}"
    entity: Json = {
        "what": {"reference": ref},
        "type": coding(_RESOURCE_TYPES, "Consent", "Consent"),
    }
    if ledger_index is not None:
        entity["detail"] = [{"type": LEDGER_INDEX_DETAIL, "valueString": str(ledger_index)}]
    return entity


def _token_entity(jti: str) -> Json:
    # BALP AuthZconsent entity[token]: UserOauthAgent; the jti as an RFC 3553 URN.
    return {
        "what": {"identifier": {"value": f"urn:ietf:params:oauth:jti:{jti}"}},
        "type": coding(_USER_AGENT_TYPES, "UserOauthAgent"),
    }
