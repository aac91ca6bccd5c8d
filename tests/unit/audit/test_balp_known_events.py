"""Whole BALP AuditEvents compared with events written out by hand from the specifications.

``test_balp.py`` checks the patterns piece by piece; these known answers pin every element of
a few complete events, so a changed code, display, system, agent or entity cannot go unseen
(mutation testing found the codings' systems and displays, the user agent's ``who`` and roles,
and the break-the-glass agents and source unasserted). The expected values come from the code
systems, not from our output: DICOM PS3.16 (DCM 110113 Security Alert, 110127/110138
Emergency Override Started/Stopped, 110150 Application, 110152 Destination Role ID, 110153
Source Role ID), HL7 terminology (audit-event-type ``rest`` "Restful Operation",
audit-entity-type 1 Person and 2 System Object, object-role 1 Patient, 4 Domain Resource and
24 Query, security-source-type 4 Application Server and 6 Security Server,
extra-security-role-type ``authserver``, provenance-participant-type ``custodian``,
network-type 1 Machine Name, 2 IP Address and 5 URI), and IHE BALP 1.1 (profiles
https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.*, AuthZsubType
``AuthZ-Consent``, UserAgentTypes ``UserOauthAgent``, BasicAuditEntityType ``XrequestId``).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from middleware.audit.balp import (
    AgentInfo,
    break_glass_events,
    consent_decision_event,
    exchange_events,
)
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, Obligation, TraceStep
from middleware.fhir.request import FhirRequest, Interaction, Level

Json = dict[str, Any]

WHEN = datetime(2025, 3, 1, 12, 30, 5, 123000, tzinfo=UTC)
RECORDED = "2025-03-01T12:30:05.123Z"
GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
RID = "rid-0001"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

USER = Identity(
    subject="user-42",
    issuer="https://idp.example",
    expires_at=1e10,
    client_id="app-1",
    fhir_user="Practitioner/pr1",
    purpose_of_use=((ACT_REASON, "TREAT"),),
    roles=frozenset({"nurse", "doctor"}),
    token_id="jti-9",
)
BACKEND = Identity(
    subject="svc",
    issuer="https://idp.example",
    expires_at=1e10,
    scopes=(Scope("system", "Observation", frozenset("rs")),),
    client_id="backend-7",
    purpose_of_use=((ACT_REASON, "ETREAT"),),
)

# --- the parts, written out from the code systems ------------------------------------------

DCM = "http://dicom.nema.org/resources/ontology/DCM"
GATEWAY_WHO: Json = {
    "identifier": {"system": "urn:ietf:rfc:3986", "value": "https://gw.example/fhir"},
    "display": "consentry-gw",
}
TREAT: Json = {"coding": [{"system": ACT_REASON, "code": "TREAT"}]}
ETREAT: Json = {"coding": [{"system": ACT_REASON, "code": "ETREAT"}]}


def dcm(code: str, display: str) -> Json:
    return {"system": DCM, "code": code, "display": display}


def user_agent(code: str, display: str) -> Json:
    """USER as BALP agent[user]: fhirUser and iss + sub, roles sorted, purposes of use."""
    return {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": code,
                    "display": display,
                }
            ]
        },
        "role": [{"text": "doctor"}, {"text": "nurse"}],
        "who": {
            "reference": "Practitioner/pr1",
            "identifier": {"system": "https://idp.example", "value": "user-42"},
        },
        "requestor": True,
        "purposeOfUse": [TREAT],
    }


def client_agent(type_: Json, who: Json, *, requestor: bool, network: Json | None) -> Json:
    agent: Json = {"type": {"coding": [type_]}, "who": who, "requestor": requestor}
    if network is not None:
        agent["network"] = network
    return agent


def server_agent(type_: Json) -> Json:
    return {
        "type": {"coding": [type_]},
        "who": GATEWAY_WHO,
        "requestor": False,
        "network": {"address": "https://gw.example/fhir", "type": "5"},
    }


AUTHSERVER: Json = {
    "type": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                "code": "authserver",
                "display": "authorization server",
            }
        ]
    },
    "who": GATEWAY_WHO,
    "requestor": False,
}


def source(code: str, display: str) -> Json:
    return {
        "site": "consentry-gw",
        "observer": GATEWAY_WHO,
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": code,
                "display": display,
            }
        ],
    }


ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"


def patient(ref: str) -> Json:
    return {
        "what": {"reference": ref},
        "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
        "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
    }


def data(ref: str) -> Json:
    return {
        "what": {"reference": ref},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
    }


TRANSACTION: Json = {
    "what": {"identifier": {"value": RID}},
    "type": {
        "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
        "code": "XrequestId",
    },
}
REST: Json = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "Restful Operation",
}
PROFILE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."

# --- RESTful exchanges --------------------------------------------------------------------

SEARCH = FhirRequest(
    Interaction.SEARCH_TYPE, "GET", Level.TYPE, "Observation", b"patient=p1", "Observation"
)
SEARCH_RAW = b"GET /fhir/Observation?patient=p1"
DELETE = FhirRequest(
    Interaction.DELETE, "DELETE", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
UPDATE = FhirRequest(
    Interaction.UPDATE, "PUT", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
SYSTEM_SEARCH = FhirRequest(Interaction.SEARCH_SYSTEM, "GET", Level.SYSTEM, "", b"_id=x")

PATIENT_QUERY: Json = {
    "resourceType": "AuditEvent",
    "meta": {"profile": [PROFILE + "PatientQuery"]},
    "type": REST,
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}],
    "action": "E",
    "recorded": RECORDED,
    "outcome": "0",
    "agent": [
        user_agent("IRCP", "information recipient"),
        # BALP Query: the client is the source of the parameters, the server their destination
        client_agent(
            dcm("110153", "Source Role ID"),
            {"identifier": {"value": "app-1"}},
            requestor=False,
            network={"address": "192.0.2.7", "type": "2"},
        ),
        server_agent(dcm("110152", "Destination Role ID")),
    ],
    "source": source("4", "Application Server"),
    "entity": [
        patient("Patient/p1"),
        {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64.b64encode(SEARCH_RAW).decode(),
        },
        TRANSACTION,
    ],
}

PATIENT_UPDATE: Json = {
    "resourceType": "AuditEvent",
    "meta": {"profile": [PROFILE + "PatientUpdate"]},
    "type": REST,
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "update"}],
    "action": "U",
    "recorded": RECORDED,
    "outcome": "0",
    "agent": [
        # BALP writes: the user is the author (v3 ParticipationType AUT "author (originator)")
        user_agent("AUT", "author (originator)"),
        client_agent(
            dcm("110153", "Source Role ID"),
            {"identifier": {"value": "app-1"}},
            requestor=False,
            network={"address": "192.0.2.7", "type": "2"},
        ),
        server_agent(dcm("110152", "Destination Role ID")),
    ],
    "source": source("4", "Application Server"),
    "entity": [patient("Patient/p1"), data("Observation/o1"), TRANSACTION],
}

QUERY_WITHOUT_PATIENT: Json = {
    "resourceType": "AuditEvent",
    "meta": {"profile": [PROFILE + "Query"]},  # no patient: BALP Query, not PatientQuery
    "type": REST,
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-system"}],
    "action": "E",
    "recorded": RECORDED,
    "outcome": "0",
    "purposeOfEvent": [ETREAT],
    "agent": [
        client_agent(
            dcm("110153", "Source Role ID"),
            {"identifier": {"value": "backend-7"}},
            requestor=True,
            network={"address": "192.0.2.7", "type": "2"},
        ),
        server_agent(dcm("110152", "Destination Role ID")),
    ],
    "source": source("4", "Application Server"),
    "entity": [
        {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64.b64encode(b"GET /fhir?_id=x").decode(),
        },
        TRANSACTION,
    ],
}

FAILED_BACKEND_DELETE: Json = {
    "resourceType": "AuditEvent",  # failed: no profile claimed
    "type": REST,
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "delete"}],
    "action": "D",
    "recorded": RECORDED,
    "outcome": "8",
    "outcomeDesc": "HTTP 500",
    # no user agent: the token's purposes describe the whole event
    "purposeOfEvent": [ETREAT],
    "agent": [
        client_agent(
            dcm("110150", "Application"),
            {"identifier": {"value": "backend-7"}},
            requestor=True,
            network={"address": "client.example", "type": "1"},
        ),
        server_agent(
            {
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "code": "custodian",
                "display": "Custodian",
            }
        ),
    ],
    "source": source("4", "Application Server"),
    "entity": [data("Observation/o1"), TRANSACTION],
}


@pytest.mark.parametrize(
    ("request_", "identity", "patients", "status", "raw", "client", "expected"),
    [
        (SEARCH, USER, ["p1", "Patient/p1"], 200, SEARCH_RAW, "192.0.2.7", PATIENT_QUERY),
        (UPDATE, USER, ["p1"], 200, b"PUT", "192.0.2.7", PATIENT_UPDATE),
        (SYSTEM_SEARCH, BACKEND, [], 200, b"GET /fhir?_id=x", "192.0.2.7", QUERY_WITHOUT_PATIENT),
        (DELETE, BACKEND, [], 500, b"DELETE", "client.example", FAILED_BACKEND_DELETE),
    ],
    ids=["patient-query", "patient-update", "query-without-patient", "failed-backend-delete"],
)
def test_exchange_event_is_the_known_event(
    request_: FhirRequest,
    identity: Identity,
    patients: list[str],
    status: int,
    raw: bytes,
    client: str,
    expected: Json,
) -> None:
    events = exchange_events(
        request_,
        identity=identity,
        patients=patients,
        outcome_status=status,
        recorded=WHEN,
        request_id=RID,
        raw_request=raw,
        gateway=GATEWAY,
        client_address=client,
    )
    assert events == [expected]


# --- consent decisions (BALP AuthZconsent) ------------------------------------------------

TRACE = (
    TraceStep("c-old", 3, None, "ignored: status inactive"),
    TraceStep("c1", 17, "provision[0]", "permit: deepest matching provision"),
    TraceStep("Consent/c2", None, "", "permit: base decision"),
    TraceStep("c1", 17, "provision[1]", "permit: again"),  # relied on once
    TraceStep(None, None, None, "permit: a consent permits"),
)
CONSENT_TYPE: Json = {
    "system": "http://hl7.org/fhir/resource-types",
    "code": "Consent",
    "display": "Consent",
}
AUTHZ_CONSENT: Json = {
    "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType",
    "code": "AuthZ-Consent",
}
CONSENTS: list[Json] = [
    {
        "what": {"reference": "Consent/c1"},
        "type": CONSENT_TYPE,
        "detail": [{"type": "ledger-index", "valueString": "17"}],
    },
    {"what": {"reference": "Consent/c2"}, "type": CONSENT_TYPE},
]

PERMIT_WITH_OBLIGATIONS: Json = {
    "resourceType": "AuditEvent",
    "type": dcm("110113", "Security Alert"),
    "subtype": [AUTHZ_CONSENT],
    "action": "E",
    "recorded": RECORDED,
    "outcome": "0",
    "outcomeDesc": "permit; obligations: redact, notify",
    "agent": [
        user_agent("IRCP", "information recipient"),
        client_agent(
            dcm("110150", "Application"),
            {"identifier": {"value": "app-1"}},
            requestor=False,
            network={"address": "192.0.2.7", "type": "2"},
        ),
        AUTHSERVER,
    ],
    "source": source("6", "Security Server"),
    "entity": [
        patient("Patient/p1"),
        *CONSENTS,
        {
            "what": {"identifier": {"value": "urn:ietf:params:oauth:jti:jti-9"}},
            "type": {
                "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes",
                "code": "UserOauthAgent",
            },
        },
        TRANSACTION,
    ],
}
ANONYMOUS_DENY: Json = {
    "resourceType": "AuditEvent",
    "type": dcm("110113", "Security Alert"),
    "subtype": [AUTHZ_CONSENT],
    "action": "E",
    "recorded": RECORDED,
    "outcome": "8",
    "outcomeDesc": "deny",
    "agent": [
        client_agent(
            dcm("110150", "Application"),
            {"display": "unidentified client"},
            requestor=True,
            network=None,
        ),
        AUTHSERVER,
    ],
    "source": source("6", "Security Server"),
    "entity": [*CONSENTS, TRANSACTION],
}
BACKEND_PERMIT: Json = {
    "resourceType": "AuditEvent",
    "type": dcm("110113", "Security Alert"),
    "subtype": [AUTHZ_CONSENT],
    "action": "E",
    "recorded": RECORDED,
    "outcome": "0",
    "outcomeDesc": "permit",
    "purposeOfEvent": [ETREAT],  # no user agent to carry the token's purposes
    "agent": [
        client_agent(
            dcm("110150", "Application"),
            {"identifier": {"value": "backend-7"}},
            requestor=True,
            network=None,
        ),
        AUTHSERVER,
    ],
    "source": source("6", "Security Server"),
    "entity": [patient("Patient/p1"), *CONSENTS, TRANSACTION],
}


@pytest.mark.parametrize(
    ("decision", "identity", "patient_", "client", "expected"),
    [
        (
            Decision("permit", (Obligation("redact"), Obligation("notify")), TRACE),
            USER,
            "Patient/p1",
            "192.0.2.7",
            PERMIT_WITH_OBLIGATIONS,
        ),
        (Decision("deny", (), TRACE), None, None, None, ANONYMOUS_DENY),
        (Decision("permit", (), TRACE), BACKEND, "p1", None, BACKEND_PERMIT),
    ],
    ids=["permit-with-obligations", "anonymous-deny", "backend-permit"],
)
def test_consent_decision_event_is_the_known_event(
    decision: Decision,
    identity: Identity | None,
    patient_: str | None,
    client: str | None,
    expected: Json,
) -> None:
    event = consent_decision_event(
        decision,
        identity=identity,
        patient=patient_,
        recorded=WHEN,
        request_id=RID,
        gateway=GATEWAY,
        client_address=client,
    )
    assert event == expected


# --- break the glass ------------------------------------------------------------------------

REVIEW: Json = {
    "system": "https://consentry.dev/fhir/CodeSystem/audit-flag",
    "code": "review",
    "display": "Needs review",
}


def break_glass(
    subtype: Json, agents: list[Json], entities: list[Json], purpose: list[Json] | None
) -> Json:
    event: Json = {
        "resourceType": "AuditEvent",
        "meta": {"tag": [REVIEW]},
        "type": dcm("110113", "Security Alert"),
        "subtype": [subtype],
        "action": "E",
        "recorded": RECORDED,
        "outcome": "0",
    }
    if purpose is not None:
        event["purposeOfEvent"] = purpose
    event |= {"agent": agents, "source": source("6", "Security Server"), "entity": entities}
    return event


STARTED_BY_USER = break_glass(
    dcm("110127", "Emergency Override Started"),
    [
        user_agent("IRCP", "information recipient"),
        client_agent(
            dcm("110150", "Application"),
            {"identifier": {"value": "app-1"}},
            requestor=False,
            network={"address": "192.0.2.7", "type": "2"},
        ),
        AUTHSERVER,
    ],
    [patient("Patient/p1"), TRANSACTION],
    None,
)
STOPPED_BY_BACKEND = break_glass(
    dcm("110138", "Emergency Override Stopped"),
    [
        client_agent(
            dcm("110150", "Application"),
            {"identifier": {"value": "backend-7"}},
            requestor=True,
            network=None,
        ),
        AUTHSERVER,
    ],
    [TRANSACTION],
    [ETREAT],
)


@pytest.mark.parametrize(
    ("phase", "identity", "patients", "client", "expected"),
    [
        ("started", USER, ["p1", "Patient/p1"], "192.0.2.7", STARTED_BY_USER),
        ("stopped", BACKEND, [], None, STOPPED_BY_BACKEND),
    ],
    ids=["started-by-user-for-a-patient", "stopped-by-backend-without-patient"],
)
def test_break_glass_event_is_the_known_event(
    phase: Any, identity: Identity, patients: list[str], client: str | None, expected: Json
) -> None:
    events = break_glass_events(
        phase,
        identity=identity,
        patients=patients,
        recorded=WHEN,
        request_id=RID,
        gateway=GATEWAY,
        client_address=client,
    )
    assert events == [expected]
