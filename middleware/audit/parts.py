"""Code systems and the small element builders the BALP AuditEvents are made of.

Every builder returns a fresh plain ``dict`` whose keys follow the element order of the FHIR R4
AuditEvent JSON (http://hl7.org/fhir/R4/auditevent.html), so events can be encoded canonically
without a model. Codes are those of IHE Basic Audit Log Patterns (BALP) 1.1
(https://profiles.ihe.net/ITI/BALP/), DICOM PS3.16 (``DCM``) and the HL7 terminology it names.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from middleware.auth.identity import Identity

__all__ = [
    "AUDIT_ENTITY_TYPE",
    "BALP_ENTITY_TYPE",
    "BALP_PROFILE",
    "DCM",
    "FHIR_ID",
    "OBJECT_ROLE",
    "OUTCOME_MAJOR_FAILURE",
    "OUTCOME_MINOR_FAILURE",
    "OUTCOME_SERIOUS_FAILURE",
    "OUTCOME_SUCCESS",
    "PARTICIPATION",
    "SECURITY_SOURCE_TYPE",
    "AgentInfo",
    "Json",
    "agents",
    "client_agent",
    "coding",
    "complete",
    "concept",
    "gateway_agent",
    "has_user",
    "instant",
    "outcome_for_status",
    "patient_entity",
    "patient_reference",
    "purposes",
    "source",
    "transaction_entity",
    "user_agent",
]

Json = dict[str, Any]

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
AUDIT_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
# BALP terms.fsh: CodeSystem BasicAuditEntityType, code XrequestId.
BALP_ENTITY_TYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_PROFILE: Final = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
_URI_SYSTEM: Final = "urn:ietf:rfc:3986"

# AuditEvent.outcome, http://terminology.hl7.org/CodeSystem/audit-event-outcome (R4 binding).
OUTCOME_SUCCESS: Final = "0"
OUTCOME_MINOR_FAILURE: Final = "4"
OUTCOME_SERIOUS_FAILURE: Final = "8"
OUTCOME_MAJOR_FAILURE: Final = "12"

#: The FHIR ``id`` datatype (R4 §2.24.0.1).
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """The gateway as an audit participant: its public FHIR base URL and a display name."""

    base_url: str
    name: str

    def __post_init__(self) -> None:
        if not self.base_url or not self.name:
            raise ValueError("AgentInfo needs a base URL and a name")


def coding(system: str, code: str, display: str | None = None) -> Json:
    """A FHIR Coding; ``display`` is left out when None."""
    out: Json = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None) -> Json:
    """A CodeableConcept holding one Coding."""
    return {"coding": [coding(system, code, display)]}


def instant(recorded: datetime) -> str:
    """``recorded`` as a FHIR ``instant`` in UTC with milliseconds; a naive datetime raises
    :class:`ValueError` (an instant must carry its zone, R4 §2.24.0.1)."""
    if recorded.tzinfo is None or recorded.utcoffset() is None:
        raise ValueError("recorded must be an aware datetime")
    text = recorded.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def outcome_for_status(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 1xx-3xx success ``0``, 4xx minor failure ``4``,
    5xx serious failure ``8``; anything else (no response was produced) major failure ``12``."""
    if 100 <= status < 400:
        return OUTCOME_SUCCESS
    if 400 <= status < 500:
        return OUTCOME_MINOR_FAILURE
    if 500 <= status < 600:
        return OUTCOME_SERIOUS_FAILURE
    return OUTCOME_MAJOR_FAILURE


def patient_reference(patient: str) -> str:
    """``Patient/<id>`` for a bare id or a ``Patient/<id>`` reference; anything else raises
    :class:`ValueError` (the entity's ``what`` must be a Reference(Patient) in BALP)."""
    ident = patient.removeprefix("Patient/")
    if not FHIR_ID.fullmatch(ident):
        raise ValueError("patient must be a FHIR id or Patient/<id>")
    return f"Patient/{ident}"


def has_user(identity: Identity | None) -> bool:
    """True when the caller includes a person (BALP ``agent[user]``): any verified identity
    except a backend service speaking only for itself (SMART ``system/`` scopes)."""
    return identity is not None and identity.kind != "system"


def purposes(identity: Identity | None) -> list[Json]:
    """The identity's purposes of use as CodeableConcepts (IHE IUA, ITI-71 ``purpose_of_use``)."""
    if identity is None:
        return []
    return [concept(system, code) for system, code in identity.purpose_of_use]


def user_agent(identity: Identity, participation: str, display: str) -> Json:
    """BALP ``agent[user]``: the person, ``requestor: true``; roles and purposes from the token.

    ``who`` names the ``fhirUser`` when known and always the token's ``iss`` + ``sub``.
    """
    who: Json = {}
    if identity.fhir_user is not None:
        who["reference"] = identity.fhir_user
    who["identifier"] = {"system": identity.issuer, "value": identity.subject}
    agent: Json = {"type": concept(PARTICIPATION, participation, display)}
    if identity.roles:
        agent["role"] = [{"text": role} for role in sorted(identity.roles)]
    agent["who"] = who
    agent["requestor"] = True
    if identity.purpose_of_use:
        agent["purposeOfUse"] = purposes(identity)
    return agent


def client_agent(
    identity: Identity | None,
    client_address: str | None,
    type_: Json,
    *,
    requestor: bool,
) -> Json:
    """BALP ``agent[client]``: the app (OAuth ``client_id``), with the network address the
    connection came from."""
    client_id = identity.client_id if identity is not None else None
    who: Json = (
        {"identifier": {"value": client_id}}
        if client_id is not None
        else {"display": "unidentified client"}
    )
    agent: Json = {"type": {"coding": [dict(type_)]}, "who": who, "requestor": requestor}
    if client_address:
        agent["network"] = {"address": client_address, "type": _address_type(client_address)}
    return agent


def gateway_agent(gateway: AgentInfo, type_: Json, *, network: bool = True) -> Json:
    """The gateway as ``agent[server]`` (or BALP AuthZ ``agent[authorizer]``, no network)."""
    agent: Json = {
        "type": {"coding": [dict(type_)]},
        "who": _gateway_who(gateway),
        "requestor": False,
    }
    if network:
        agent["network"] = {"address": gateway.base_url, "type": "5"}  # network-type 5: URI
    return agent


def source(gateway: AgentInfo, source_type: str, display: str) -> Json:
    """AuditEvent.source: the gateway observed and recorded the event."""
    return {
        "site": gateway.name,
        "observer": _gateway_who(gateway),
        "type": [coding(SECURITY_SOURCE_TYPE, source_type, display)],
    }


def agents(
    identity: Identity | None,
    *,
    participation: tuple[str, str],
    client_type: Json,
    client_address: str | None,
    gateway: AgentInfo,
    server_type: Json,
    server_network: bool = True,
) -> list[Json]:
    """The agents of one event, in order: the user (``participation`` is its v3
    ParticipationType code and display) when :func:`has_user`, the client app, the gateway.

    Exactly one agent is the requestor: the user, or the client app when there is no user.
    """
    user = has_user(identity)
    out = [user_agent(identity, *participation)] if identity is not None and user else []
    out.append(client_agent(identity, client_address, client_type, requestor=not user))
    out.append(gateway_agent(gateway, server_type, network=server_network))
    return out


def complete(
    event: Json,
    *,
    identity: Identity | None,
    agents: list[Json],
    source: Json,
    entities: list[Json],
) -> Json:
    """Append ``purposeOfEvent``, ``agent``, ``source`` and ``entity`` to ``event`` in element
    order and return it. Without a user agent the token's purposes of use describe the whole
    event (``purposeOfEvent``); with one they sit on the user (BALP ``agent[user].purposeOfUse``).
    """
    if not has_user(identity) and purposes(identity):
        event["purposeOfEvent"] = purposes(identity)
    event["agent"] = agents
    event["source"] = source
    event["entity"] = entities
    return event


def patient_entity(reference: str) -> Json:
    """BALP ``entity[patient]``: audit-entity-type 1 Person, object-role 1 Patient."""
    return {
        "what": {"reference": reference},
        "type": coding(AUDIT_ENTITY_TYPE, "1", "Person"),
        "role": coding(OBJECT_ROLE, "1", "Patient"),
    }


def transaction_entity(request_id: str) -> Json:
    """BALP ``entity[transaction]``: the ``X-Request-Id`` that ties the exchange's events
    together (and to the gateway's logs)."""
    if not request_id:
        raise ValueError("request_id must not be empty")
    return {
        "what": {"identifier": {"value": request_id}},
        "type": coding(BALP_ENTITY_TYPE, "XrequestId"),
    }


def _gateway_who(gateway: AgentInfo) -> Json:
    return {
        "identifier": {"system": _URI_SYSTEM, "value": gateway.base_url},
        "display": gateway.name,
    }


@functools.lru_cache(maxsize=4096)
def _address_type(address: str) -> str:
    # http://hl7.org/fhir/network-type: 2 IP Address, 1 Machine Name.
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"
