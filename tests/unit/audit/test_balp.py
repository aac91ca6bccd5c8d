"""IHE BALP AuditEvents for one exchange (https://profiles.ihe.net/ITI/BALP/): the RESTful
patterns per interaction, the AuthZconsent decision event and break-the-glass alerts. Every
event produced here is also parsed as a FHIR R4 AuditEvent (R4B has R4's AuditEvent shape)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from middleware.audit.balp import (
    LEDGER_INDEX_DETAIL,
    REVIEW_TAG,
    AgentInfo,
    break_glass_events,
    consent_decision_event,
    exchange_events,
)
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, Obligation, TraceStep
from middleware.fhir.jsoncodec import decode, encode_canonical
from middleware.fhir.request import FhirRequest, Interaction, Level

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
TREAT = ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT")
WHEN = datetime(2025, 3, 1, 12, 30, 5, 123000, tzinfo=UTC)
GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
RID = "rid-0001"

USER = Identity(
    subject="user-42",
    issuer="https://idp.example",
    expires_at=1e10,
    client_id="app-1",
    fhir_user="Practitioner/pr1",
    purpose_of_use=(TREAT,),
    roles=frozenset({"nurse"}),
    token_id="jti-9",
)
BACKEND = Identity(
    subject="svc",
    issuer="https://idp.example",
    expires_at=1e10,
    scopes=(Scope("system", "Observation", frozenset("rs")),),
    client_id="backend-7",
    purpose_of_use=(TREAT,),
)


def valid(event: dict[str, Any]) -> dict[str, Any]:
    """Parse as R4 AuditEvent and survive canonical encoding unchanged."""
    AuditEvent.model_validate(event)
    assert decode(encode_canonical(event)) == event
    return event


def codes(concept: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["system"], c["code"]) for c in concept["coding"]]


def agent_by_code(event: dict[str, Any], code: str) -> dict[str, Any]:
    """The one agent whose type carries ``code``."""
    found: list[dict[str, Any]] = [
        a for a in event["agent"] if any(c[1] == code for c in codes(a["type"]))
    ]
    (agent,) = found
    return agent


def entities_by_role(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event["entity"] if e.get("role", {}).get("code") == role]


def request_id_entity(event: dict[str, Any]) -> dict[str, Any]:
    """BALP entity[transaction]: exactly one per event."""
    found: list[dict[str, Any]] = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
    (entity,) = found
    return entity


# --- the RESTful patterns ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    request: FhirRequest
    status: int
    subtype: str
    action: str
    outcome: str
    client_role: str  # DCM / custodian code of the client and the server
    server_role: str
    user_role: str  # v3 ParticipationType of the user
    profile: str | None
    raw: bytes = b"GET /fhir/Observation/o1 HTTP/1.1"
    refs: tuple[str, ...] = ()


READ = FhirRequest(
    Interaction.READ, "GET", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
SEARCH = FhirRequest(
    Interaction.SEARCH_TYPE,
    "GET",
    Level.TYPE,
    "Observation",
    b"patient=p1&code=http%3A%2F%2Floinc.org%7C2345-7",
    "Observation",
)
SEARCH_RAW = b"GET /fhir/Observation?patient=p1&code=http%3A%2F%2Floinc.org%7C2345-7"
CREATE = FhirRequest(Interaction.CREATE, "POST", Level.TYPE, "Observation", b"", "Observation")
UPDATE = FhirRequest(
    Interaction.UPDATE, "PUT", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
DELETE = FhirRequest(
    Interaction.DELETE, "DELETE", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)

CASES = [
    # Read: the client receives the data (110152 Destination), the server sends (110153).
    Case(READ, 200, "read", "R", "0", "110152", "110153", "IRCP", "PatientRead"),
    # Query: parameters flow to the server, so the roles swap; action Execute.
    Case(
        SEARCH,
        200,
        "search-type",
        "E",
        "0",
        "110153",
        "110152",
        "IRCP",
        "PatientQuery",
        raw=SEARCH_RAW,
    ),
    Case(
        CREATE,
        201,
        "create",
        "C",
        "0",
        "110153",
        "110152",
        "AUT",
        "PatientCreate",
        refs=("Observation/new1/_history/1",),
    ),
    Case(UPDATE, 200, "update", "U", "0", "110153", "110152", "AUT", "PatientUpdate"),
    Case(DELETE, 204, "delete", "D", "0", "110150", "custodian", "AUT", "PatientDelete"),
    # Failures are audited with the same shape; no BALP profile is claimed.
    Case(READ, 403, "read", "R", "4", "110152", "110153", "IRCP", None),
    Case(READ, 502, "read", "R", "8", "110152", "110153", "IRCP", None),
    Case(SEARCH, 0, "search-type", "E", "12", "110153", "110152", "IRCP", None, raw=SEARCH_RAW),
]
IDS = ["read", "search", "create", "update", "delete", "denied-read", "upstream-502", "no-response"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_exchange_event_follows_the_balp_pattern(case: Case) -> None:
    (event,) = exchange_events(
        case.request,
        identity=USER,
        patients=["p1"],
        outcome_status=case.status,
        recorded=WHEN,
        request_id=RID,
        raw_request=case.raw,
        gateway=GATEWAY,
        client_address="192.0.2.7",
        resource_refs=case.refs,
    )
    valid(event)
    assert event["type"]["code"] == "rest"
    assert event["subtype"] == [{"system": RESTFUL, "code": case.subtype}]
    assert event["action"] == case.action
    assert event["outcome"] == case.outcome
    assert event["recorded"] == "2025-03-01T12:30:05.123Z"
    assert ("outcomeDesc" in event) is (case.outcome != "0")
    profile = event.get("meta", {}).get("profile")
    assert profile == (
        None
        if case.profile is None
        else [
            f"https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.{case.profile}"
        ]
    )

    user = agent_by_code(event, case.user_role)
    assert user["requestor"] is True
    assert user["who"]["reference"] == "Practitioner/pr1"
    assert user["purposeOfUse"] == [{"coding": [{"system": TREAT[0], "code": TREAT[1]}]}]
    client = agent_by_code(event, case.client_role)
    assert client["requestor"] is False
    assert client["who"] == {"identifier": {"value": "app-1"}}
    assert client["network"] == {"address": "192.0.2.7", "type": "2"}
    server = agent_by_code(event, case.server_role)
    assert server["requestor"] is False
    assert server["network"] == {"address": "https://gw.example/fhir", "type": "5"}
    assert [a["requestor"] for a in event["agent"]].count(True) == 1

    (patient,) = entities_by_role(event, "1")
    assert patient["what"] == {"reference": "Patient/p1"}
    assert patient["type"]["code"] == "1"
    queries = entities_by_role(event, "24")
    if case.subtype == "search-type":
        (query,) = queries
        assert base64.b64decode(query["query"]) == case.raw
        assert entities_by_role(event, "4") == []
    else:
        assert queries == []
        (data,) = entities_by_role(event, "4")
        assert data["what"]["reference"] == (case.refs[0] if case.refs else "Observation/o1")
    assert request_id_entity(event)["what"] == {"identifier": {"value": RID}}


def test_two_patients_give_two_events_one_patient_each() -> None:
    events = exchange_events(
        SEARCH,
        identity=USER,
        patients=["p1", "Patient/p2", "p1"],
        outcome_status=200,
        recorded=WHEN,
        request_id=RID,
        raw_request=SEARCH_RAW,
        gateway=GATEWAY,
        client_address="gw-client.example",
    )
    assert len(events) == 2
    refs = [[e["what"]["reference"] for e in entities_by_role(valid(ev), "1")] for ev in events]
    assert refs == [["Patient/p1"], ["Patient/p2"]]
    assert all(request_id_entity(ev)["what"]["identifier"]["value"] == RID for ev in events)
    assert events[0]["agent"] is not events[1]["agent"]  # no shared mutable parts


def test_no_patient_gives_one_event_without_a_patient_entity() -> None:
    system_search = FhirRequest(Interaction.SEARCH_SYSTEM, "GET", Level.SYSTEM, "", b"_id=x")
    (event,) = exchange_events(
        system_search,
        identity=USER,
        patients=[],
        outcome_status=200,
        recorded=WHEN,
        request_id=RID,
        raw_request=b"GET /fhir?_id=x",
        gateway=GATEWAY,
        client_address=None,
    )
    valid(event)
    assert entities_by_role(event, "1") == []
    assert "meta" not in event  # BALP Query needs the client's network address


def test_backend_service_without_user_makes_the_client_the_requestor() -> None:
    (event,) = exchange_events(
        READ,
        identity=BACKEND,
        patients=["p1"],
        outcome_status=200,
        recorded=WHEN,
        request_id=RID,
        raw_request=b"GET",
        gateway=GATEWAY,
        client_address="2001:db8::1",
    )
    valid(event)
    client = agent_by_code(event, "110152")
    assert client["requestor"] is True
    assert client["network"]["type"] == "2"
    assert len(event["agent"]) == 2
    assert event["purposeOfEvent"] == [{"coding": [{"system": TREAT[0], "code": TREAT[1]}]}]


def test_unauthenticated_request_is_audited_with_an_unidentified_client() -> None:
    (event,) = exchange_events(
        READ,
        identity=None,
        patients=[],
        outcome_status=401,
        recorded=WHEN,
        request_id=RID,
        raw_request=b"GET",
        gateway=GATEWAY,
        client_address="host.example",
    )
    valid(event)
    assert event["outcome"] == "4"
    client = agent_by_code(event, "110152")
    assert client["who"] == {"display": "unidentified client"}
    assert client["network"]["type"] == "1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recorded": datetime(2025, 1, 1)}, "aware"),
        ({"request_id": ""}, "request_id"),
        ({"patients": ["Observation/1"]}, "patient"),
        ({"raw_request": b""}, "raw_request"),
    ],
    ids=["naive-time", "empty-request-id", "non-patient-reference", "query-without-raw"],
)
def test_bad_inputs_raise(change: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "identity": USER,
        "patients": ["p1"],
        "outcome_status": 200,
        "recorded": WHEN,
        "request_id": RID,
        "raw_request": SEARCH_RAW,
        "gateway": GATEWAY,
        "client_address": None,
    }
    with pytest.raises(ValueError, match=message):
        exchange_events(SEARCH, **{**args, **change})


def test_recorded_is_converted_to_utc() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=2)))
    (event,) = exchange_events(
        READ,
        identity=USER,
        patients=[],
        outcome_status=200,
        recorded=local,
        request_id=RID,
        raw_request=b"GET",
        gateway=GATEWAY,
        client_address=None,
    )
    assert event["recorded"] == "2025-03-01T12:30:05.123Z"


# --- consent decision (BALP AuthZconsent) ---------------------------------------------------

TRACE = (
    TraceStep("c-old", 3, None, "ignored: status inactive; only active consents count"),
    TraceStep("c1", 17, "provision[0]", "permit: deepest matching provision"),
    TraceStep("c2", None, "", "permit: base decision"),
    TraceStep(None, None, None, "permit: a consent permits (deny-overrides)"),
)


@pytest.mark.parametrize(
    ("decision", "outcome", "desc"),
    [
        (Decision("permit", (), TRACE), "0", "permit"),
        (Decision("permit", (Obligation("redact"),), TRACE), "0", "permit; obligations: redact"),
        (Decision("deny", (), TRACE), "8", "deny"),
    ],
    ids=["permit", "permit-redact", "deny"],
)
def test_consent_decision_event(decision: Decision, outcome: str, desc: str) -> None:
    event = valid(
        consent_decision_event(
            decision,
            identity=USER,
            patient="p1",
            recorded=WHEN,
            request_id=RID,
            gateway=GATEWAY,
            client_address="192.0.2.7",
        )
    )
    assert event["type"] == {"system": DCM, "code": "110113", "display": "Security Alert"}
    assert event["subtype"][0]["code"] == "AuthZ-Consent"
    assert (event["action"], event["outcome"], event["outcomeDesc"]) == ("E", outcome, desc)
    consents = [e for e in event["entity"] if e["type"]["code"] == "Consent"]
    assert [c["what"]["reference"] for c in consents] == ["Consent/c1", "Consent/c2"]
    assert consents[0]["detail"] == [{"type": LEDGER_INDEX_DETAIL, "valueString": "17"}]
    assert "detail" not in consents[1]
    token = next(e for e in event["entity"] if e["type"]["code"] == "UserOauthAgent")
    assert token["what"]["identifier"]["value"] == "urn:ietf:params:oauth:jti:jti-9"
    assert agent_by_code(event, "authserver")["requestor"] is False
    assert agent_by_code(event, "IRCP")["requestor"] is True
    assert request_id_entity(event)["what"]["identifier"]["value"] == RID


# --- break the glass ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "code"), [("started", "110127"), ("stopped", "110138")], ids=["start", "stop"]
)
def test_break_glass_events_are_tagged_for_review(phase: Any, code: str) -> None:
    events = break_glass_events(
        phase,
        identity=USER,
        patients=["p1", "p2"],
        recorded=WHEN,
        request_id=RID,
        gateway=GATEWAY,
        client_address=None,
    )
    assert len(events) == 2
    for event in map(valid, events):
        assert event["type"]["code"] == "110113"
        assert event["subtype"] == [
            {"system": DCM, "code": code, "display": event["subtype"][0]["display"]}
        ]
        assert event["meta"]["tag"] == [REVIEW_TAG]
        assert len(entities_by_role(event, "1")) == 1
