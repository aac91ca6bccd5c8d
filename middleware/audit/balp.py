"""FHIR R4 AuditEvents for one exchange, following IHE Basic Audit Log Patterns (BALP) 1.1.

Pure: no I/O and no clock; ``recorded`` comes in as an argument. Each function returns plain
dicts in FHIR JSON element order, ready for :func:`middleware.fhir.jsoncodec.encode_canonical`.

* :func:`exchange_events`: the BALP RESTful patterns (Read, Query, Create, Update, Delete and
  their Patient variants, https://profiles.ihe.net/ITI/BALP/content.html#3573-basic-audit-log-patterns),
  one event per patient touched (BALP PatientQuery: "one AuditEvent is created for every
  Patient"), or one event without a patient entity when none is touched.
* :func:`consent_decision_event` and :func:`break_glass_events` (defined in
  :mod:`middleware.audit.alerts`, re-exported here): the DCM 110113 Security Alert events.

Failures and denials are audited with the same shapes: the outcome says what happened.
``meta.profile`` names a BALP profile only when the event conforms to it (successful, client
address known, one data entity where the profile requires one); BALP's RESTful profiles fix
``outcome`` to success, so a failed exchange never claims one.

PHI: these events name patients and resources, as an audit record must. They belong in the
AuditEvent store only; what goes to the transparency ledger is another module's business.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from middleware.audit.alerts import (
    LEDGER_INDEX_DETAIL,
    REVIEW_TAG,
    break_glass_events,
    consent_decision_event,
)
from middleware.audit.parts import (
    BALP_PROFILE,
    DCM,
    OUTCOME_SUCCESS,
    AgentInfo,
    Json,
    agents,
    coding,
    complete,
    instant,
    outcome_for_status,
    patient_entity,
    patient_reference,
    source,
    transaction_entity,
)
from middleware.auth.identity import Identity
from middleware.fhir.request import FhirRequest, Interaction

__all__ = [
    "LEDGER_INDEX_DETAIL",
    "REVIEW_TAG",
    "AgentInfo",
    "break_glass_events",
    "consent_decision_event",
    "exchange_events",
    "interaction_codes",
    "is_query",
]

_AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_RESTFUL: Final = "http://hl7.org/fhir/restful-interaction"
_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"

_Flow = Literal["pull", "push", "delete"]


@dataclass(frozen=True, slots=True)
class _Shape:
    subtype: str | None  # restful-interaction code; None: not a FHIR interaction
    action: str  # AuditEvent.action: C R U D E
    flow: _Flow  # which DICOM roles client and server take
    query: bool  # BALP entity[query] with the raw request
    profile: str | None  # BALP profile name, without the Patient prefix


_SHAPES: Final = {
    Interaction.READ: _Shape("read", "R", "pull", False, "Read"),
    Interaction.VREAD: _Shape("vread", "R", "pull", False, "Read"),
    Interaction.HISTORY_INSTANCE: _Shape("history-instance", "R", "pull", False, None),
    Interaction.CAPABILITIES: _Shape("capabilities", "R", "pull", False, None),
    Interaction.SEARCH_TYPE: _Shape("search-type", "E", "push", True, "Query"),
    Interaction.SEARCH_SYSTEM: _Shape("search-system", "E", "push", True, "Query"),
    # R4 restful-interaction has no compartment code: a compartment search is a type search.
    Interaction.SEARCH_COMPARTMENT: _Shape("search-type", "E", "push", True, "Query"),
    Interaction.HISTORY_TYPE: _Shape("history-type", "E", "push", True, None),
    Interaction.HISTORY_SYSTEM: _Shape("history-system", "E", "push", True, None),
    Interaction.CREATE: _Shape("create", "C", "push", False, "Create"),
    Interaction.UPDATE: _Shape("update", "U", "push", False, "Update"),
    Interaction.PATCH: _Shape("patch", "U", "push", False, "Update"),
    Interaction.DELETE: _Shape("delete", "D", "delete", False, "Delete"),
    Interaction.BATCH: _Shape("batch", "E", "push", False, None),
    Interaction.TRANSACTION: _Shape("transaction", "E", "push", False, None),
    Interaction.OPERATION: _Shape("operation", "E", "push", False, None),
    # R4 defines GraphQL as the $graphql operation; its query string is the query.
    Interaction.GRAPHQL: _Shape("operation", "E", "push", True, None),
    # Refused before classification: a RESTful event with no interaction, the raw request kept.
    Interaction.INVALID: _Shape(None, "E", "push", True, None),
}

# BALP: Read puts the client as DCM 110152 Destination Role ID and the server as 110153
# Source Role ID (data flows to the client); Query/Create/Update the other way round
# (parameters flow to the server); Delete uses 110150 Application and provenance custodian.
_ROLES: Final[dict[_Flow, tuple[Json, Json]]] = {
    "pull": (coding(DCM, "110152", "Destination Role ID"), coding(DCM, "110153", "Source Role ID")),
    "push": (coding(DCM, "110153", "Source Role ID"), coding(DCM, "110152", "Destination Role ID")),
    "delete": (
        coding(DCM, "110150", "Application"),
        coding(
            "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "custodian",
            "Custodian",
        ),
    ),
}


def interaction_codes(interaction: Interaction) -> tuple[str | None, str]:
    """The RESTful event's ``subtype`` code (restful-interaction; None when not a FHIR
    interaction) and ``action`` for ``interaction``: what the audit index records of it."""
    shape = _SHAPES[interaction]
    return shape.subtype, shape.action


def is_query(interaction: Interaction) -> bool:
    """Whether the RESTful event of ``interaction`` carries BALP ``entity[query]`` (the raw
    request, which must then not be empty)."""
    return _SHAPES[interaction].query


def exchange_events(
    request: FhirRequest,
    *,
    identity: Identity | None,
    patients: Sequence[str],
    outcome_status: int,
    recorded: datetime,
    request_id: str,
    raw_request: bytes,
    gateway: AgentInfo,
    client_address: str | None,
    resource_refs: Sequence[str] = (),
) -> list[Json]:
    """The BALP RESTful AuditEvents of one exchange: one per distinct patient in ``patients``
    (ids or ``Patient/<id>``, order kept), or a single event without a patient entity.

    ``outcome_status`` is the HTTP status sent to the client (see
    :func:`~middleware.audit.parts.outcome_for_status`). ``raw_request`` is the request as
    received (for a search: target and query, plus the form body of ``POST _search``); it is
    base64-encoded into ``entity[query]`` for query interactions, where it must not be empty.
    ``resource_refs`` become Domain Resource entities; when empty, the request's own
    ``Type/id[/_history/vid]`` is used if it names one. Every event carries them all: to
    split resources by patient, call once per patient. Raises :class:`ValueError` for a naive
    ``recorded``, an empty ``request_id``, a malformed patient or a missing query.
    """
    shape = _SHAPES[request.interaction]
    if shape.query and not raw_request:
        raise ValueError("raw_request is required for a query interaction")
    refs = list(resource_refs) or _own_reference(request)
    targets: list[str | None] = list(dict.fromkeys(patient_reference(p) for p in patients))
    return [
        _exchange_event(
            shape,
            request,
            identity=identity,
            patient=patient,
            outcome=outcome_for_status(outcome_status),
            status=outcome_status,
            recorded=recorded,
            request_id=request_id,
            raw_request=raw_request,
            gateway=gateway,
            client_address=client_address,
            refs=refs,
        )
        for patient in targets or [None]
    ]


def _exchange_event(
    shape: _Shape,
    request: FhirRequest,
    *,
    identity: Identity | None,
    patient: str | None,
    outcome: str,
    status: int,
    recorded: datetime,
    request_id: str,
    raw_request: bytes,
    gateway: AgentInfo,
    client_address: str | None,
    refs: list[str],
) -> Json:
    client_type, server_type = _ROLES[shape.flow]
    # BALP: the user of a Read/Query is IRCP; a write's comes from DataSources (AUT author).
    # Displays are v3 ParticipationType's (terminology.hl7.org).
    participation = (
        ("AUT", "author (originator)") if request.is_write else ("IRCP", "information recipient")
    )
    parties = agents(
        identity,
        participation=participation,
        client_type=client_type,
        client_address=client_address,
        gateway=gateway,
        server_type=server_type,
    )
    entities = [] if patient is None else [patient_entity(patient)]
    entities += [_data_entity(ref) for ref in refs]
    if shape.query:
        entities.append(_query_entity(raw_request))
    entities.append(transaction_entity(request_id))
    event: Json = {"resourceType": "AuditEvent"}
    conforms = shape.profile is not None and outcome == OUTCOME_SUCCESS and bool(client_address)
    if conforms and (shape.query or len(refs) == 1):
        name = f"Patient{shape.profile}" if patient is not None else f"{shape.profile}"
        event["meta"] = {"profile": [BALP_PROFILE + name]}
    event["type"] = coding(_AUDIT_EVENT_TYPE, "rest", "Restful Operation")
    if shape.subtype is not None:
        event["subtype"] = [coding(_RESTFUL, shape.subtype)]
    event["action"] = shape.action
    event["recorded"] = instant(recorded)
    event["outcome"] = outcome
    if outcome != OUTCOME_SUCCESS:
        event["outcomeDesc"] = f"HTTP {status}"
    src = source(gateway, "4", "Application Server")
    return complete(event, identity=identity, agents=parties, source=src, entities=entities)


def _own_reference(request: FhirRequest) -> list[str]:
    if request.resource_type is None or request.resource_id is None:
        return []
    ref = f"{request.resource_type}/{request.resource_id}"
    return [ref if request.version_id is None else f"{ref}/_history/{request.version_id}"]


def _data_entity(reference: str) -> Json:
    # BALP entity[data]: audit-entity-type 2 System Object, role from RestObjectRoles (4).
    return {
        "what": {"reference": reference},
        "type": coding(_ENTITY_TYPE, "2", "System Object"),
        "role": coding(_OBJECT_ROLE, "4", "Domain Resource"),
    }


def _query_entity(raw_request: bytes) -> Json:
    # BALP entity[query]: object-role 24 Query, the raw request base64-encoded as received.
    return {
        "type": coding(_ENTITY_TYPE, "2", "System Object"),
        "role": coding(_OBJECT_ROLE, "24", "Query"),
        # equivalent mutant: decode("ASCII") (codec names ignore case)
        "query": base64.b64encode(raw_request).decode("ascii"),
    }
