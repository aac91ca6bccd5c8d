"""Golden tests: the BALP AuditEvents rendered from an entry's audit facts equal, exactly, what
the recorder built on the hot path before facts replaced events as the evidence.

The known answer is the old event building, kept verbatim in ``old_events.py`` (it calls the
BALP builders with the exchange itself, not with facts). Each case goes the whole way the
evidence goes: planned facts, encoded, decoded, rendered. The index row of each entry says
what its last rendered event says (type, subtype, action, outcome)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit.facts import decode_facts, encode_facts, row_of
from middleware.audit.parts import AgentInfo
from middleware.audit.plan import Exchange, Phase, plan, plan_break_glass
from middleware.audit.render import render_events
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, Obligation, TraceStep
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.leaf import micros
from tests.unit.audit.old_events import old_break_glass, old_plan

WHEN = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

USER = Identity(
    subject="user-42",
    issuer="https://idp.example",
    expires_at=1e10,
    scopes=(Scope("user", "Observation", frozenset("rs")),),
    client_id="app-1",
    fhir_user="Practitioner/pr1",
    purpose_of_use=((ACT, "TREAT"), (ACT, "ETREAT")),
    roles=frozenset({"nurse", "doctor"}),
    token_id="jti-9",
)
BACKEND = Identity(  # a backend service: no user agent, purposes on the event
    subject="svc",
    issuer="https://idp.example",
    expires_at=1e10,
    scopes=(Scope("system", "*", frozenset("rs")),),
    client_id="etl",
    purpose_of_use=((ACT, "HOPERAT"),),
)
PATIENT_APP = Identity(  # a patient app, no fhirUser, no jti
    subject="me",
    issuer="https://idp.example",
    expires_at=1e10,
    scopes=(Scope("patient", "*", frozenset("rs")),),
    patient="p1",
)

READ = FhirRequest(
    Interaction.READ, "GET", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
VREAD = FhirRequest(
    Interaction.VREAD, "GET", Level.INSTANCE, "Observation/o1/_history/3", b"",
    "Observation", "o1", "3",
)  # fmt: skip
SEARCH = FhirRequest(
    Interaction.SEARCH_TYPE, "GET", Level.TYPE, "Observation", b"code=x", "Observation"
)
SEARCH_RAW = b"GET /fhir/Observation?code=x&patient=p1"
CREATE = FhirRequest(Interaction.CREATE, "POST", Level.TYPE, "Observation", b"", "Observation")
UPDATE = FhirRequest(
    Interaction.UPDATE, "PUT", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
DELETE = FhirRequest(
    Interaction.DELETE, "DELETE", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
INVALID = FhirRequest(Interaction.INVALID, "GET", Level.SYSTEM, "")
BATCH = FhirRequest(Interaction.BATCH, "POST", Level.SYSTEM, "")

PERMIT = Decision(
    "permit",
    trace=(
        TraceStep("c1", 7, "Consent.provision", "permit"),
        TraceStep("Consent/c2", None, "Consent.provision.provision[0]", "permit"),
        TraceStep("c3", 40, None, "inactive"),  # ignored: no provision reached
        TraceStep("c1", 7, "Consent.provision", "again"),  # repeated: once
    ),
)
REDACT = Decision("permit", obligations=(Obligation("redact"), Obligation("x")), trace=PERMIT.trace)
DENY = Decision("deny", trace=(TraceStep("c4", 3, "Consent.provision", "deny"),))
DEFAULT_DENY = Decision("deny", trace=(TraceStep(None, None, None, "opt-in default"),))


def x(request: FhirRequest = READ, **overrides: Any) -> Exchange:
    values: dict[str, Any] = {
        "request": request,
        "identity": USER,
        "status": 200,
        "request_id": "rid-0001",
        "raw_request": SEARCH_RAW if request in (SEARCH, INVALID) else b"",
        "client_address": "192.0.2.7",
    }
    values.update(overrides)
    return Exchange(**values)


P1, P2 = "Patient/p1", "Patient/p2"
CASES: list[tuple[str, Exchange, Phase]] = [
    # reads and searches, answered
    ("read", x(decisions={P1: PERMIT}, released=frozenset({P1})), "exchange"),
    ("vread", x(VREAD, decisions={P1: PERMIT}, released=frozenset({P1})), "exchange"),
    ("read-own-record", x(identity=PATIENT_APP, decisions={P1: None}, released={P1}), "exchange"),
    ("read-redacted", x(decisions={"p1": REDACT}, released={"p1"}, narrowed=True), "exchange"),
    ("read-backend", x(identity=BACKEND, decisions={P1: PERMIT}, released={P1}), "exchange"),
    ("read-no-address", x(client_address=None, decisions={P1: PERMIT}, released={P1}), "exchange"),
    ("read-hostname", x(client_address="client.example", decisions={P1: None}), "exchange"),
    (
        "search-several-patients",
        x(
            SEARCH,
            decisions={P2: PERMIT, P1: DENY},
            released=frozenset({P2}),
            resource_refs=("Observation/o2", "Observation/o3"),
            narrowed=True,
        ),
        "exchange",
    ),
    ("search-no-patient", x(SEARCH, resource_refs=("Observation/o9",)), "exchange"),
    ("search-empty", x(SEARCH, decisions={P1: PERMIT}, released=frozenset()), "exchange"),
    # refusals
    ("denied-read", x(status=404, decisions={P1: DENY}), "exchange"),
    ("default-deny", x(status=403, decisions={P1: DEFAULT_DENY}), "exchange"),
    ("unauthenticated-401", x(identity=None, status=401), "exchange"),
    ("invalid-request-400", x(INVALID, identity=None, status=400), "exchange"),
    ("upstream-error-502", x(status=502, decisions={P1: PERMIT}, released={P1}), "exchange"),
    ("no-response", x(status=0, decisions={P1: PERMIT}), "exchange"),
    # mapping provenance and break-the-glass on an exchange
    (
        "mapping",
        x(decisions={P1: PERMIT}, released={P1}, mapping="acme-v2 sha256:" + "ab" * 32),
        "exchange",
    ),
    ("break-glass-exchange", x(decisions={P1: PERMIT}, released={P1}, break_glass=True), "exchange"),
    # writes: decision, then outcome
    ("create-decision", x(CREATE, decisions={P1: PERMIT}), "decision"),
    ("create-decision-deny", x(CREATE, status=403, decisions={P1: DENY}), "decision"),
    ("create-decision-none", x(CREATE, decisions={P1: None}), "decision"),
    ("create-decision-no-patient", x(CREATE), "decision"),
    ("create-outcome", x(CREATE, status=201, decisions={P1: PERMIT}, resource_refs=("Observation/n1",)), "outcome"),
    ("update-outcome", x(UPDATE, decisions={P1: PERMIT}), "outcome"),
    ("update-outcome-rejected", x(UPDATE, status=412, decisions={P1: PERMIT}), "outcome"),
    ("delete-outcome", x(DELETE, status=204, decisions={P1: PERMIT}), "outcome"),
    ("delete-decision", x(DELETE, decisions={P1: DENY, P2: PERMIT}), "decision"),
    (
        "batch-outcome-mapped",
        x(BATCH, decisions={P1: PERMIT}, resource_refs=("Observation/a", "Condition/b"), mapping="m sha256:00"),
        "outcome",
    ),
]  # fmt: skip


def through_evidence(facts: Any) -> Any:
    """The facts as the evidence keeps them: encoded, then decoded."""
    return decode_facts(encode_facts(facts))


@pytest.mark.parametrize(("exchange", "phase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rendering_equals_the_events_the_recorder_built(exchange: Exchange, phase: Phase) -> None:
    expected = old_plan(exchange, phase, WHEN, GATEWAY)
    planned = plan(exchange, phase, micros(WHEN), GATEWAY)
    assert [p.facts.patient for p in planned] == [patient for patient, _ in expected]
    got = [render_events(through_evidence(p.facts)) for p in planned]
    assert got == [events for _, events in expected]


@pytest.mark.parametrize(("exchange", "phase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_index_row_says_what_the_last_rendered_event_says(
    exchange: Exchange, phase: Phase
) -> None:
    for p in plan(exchange, phase, micros(WHEN), GATEWAY):
        row = row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=None)
        last = render_events(p.facts)[-1]
        subtype = last.get("subtype", [{}])[0].get("code")
        event_type = f"{last['type']['system']}|{last['type']['code']}"
        assert (row.event_type, row.subtype, row.action, row.outcome) == (
            event_type,
            subtype,
            last["action"],
            last["outcome"],
        )
        assert row.recorded_us == micros(WHEN)
        assert row.patient == p.facts.patient
        assert row.kind == p.kind
        assert row.flags == p.flags
        assert row.break_glass == exchange.break_glass


BREAK_GLASS = [
    ("started-with-reason", "started", [P1, "p2"], "unconscious patient in ED"),
    ("started-no-reason", "started", ["p1"], None),
    ("stopped", "stopped", [P1], None),
    ("started-repeated-patient", "started", [P1, "p1"], "again"),
    ("stopped-backend", "stopped", [P2], 'tricky "quotes" \u00e9\u00e8 \U0001f600'),
]


@pytest.mark.parametrize(
    ("phase", "patients", "reason"), [c[1:] for c in BREAK_GLASS], ids=[c[0] for c in BREAK_GLASS]
)
def test_break_glass_rendering_equals_the_events_the_recorder_built(
    phase: Any, patients: list[str], reason: str | None
) -> None:
    identity = BACKEND if "backend" in str(reason) else USER
    common: dict[str, Any] = {
        "identity": identity,
        "request_id": "rid-7",
        "gateway": GATEWAY,
        "client_address": "192.0.2.7",
        "reason": reason,
    }
    distinct = list(dict.fromkeys(p.removeprefix("Patient/") for p in patients))
    expected = old_break_glass(phase, patients=distinct, recorded=WHEN, **common)
    planned = plan_break_glass(phase, patients=patients, recorded_us=micros(WHEN), **common)
    assert [render_events(through_evidence(p.facts)) for p in planned] == [[e] for e in expected]
    for p in planned:
        row = row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=None)
        (event,) = render_events(p.facts)
        assert row.subtype == event["subtype"][0]["code"]
        assert row.break_glass
        assert row.action == event["action"] == "E"


def test_rendering_is_deterministic_and_fresh() -> None:
    """Rendering twice gives equal events, and changing one rendering changes nothing else."""
    (p,) = plan(CASES[0][1], "exchange", micros(WHEN), GATEWAY)
    first, second = render_events(p.facts), render_events(p.facts)
    assert first == second
    first[0]["entity"].clear()
    assert render_events(p.facts) == second


def test_a_caller_kind_is_kept_not_guessed() -> None:
    """A backend service's purposes describe the event (no user agent); the same purposes
    on a user sit on the user agent: the facts keep which it was."""
    (backend,) = plan(x(identity=BACKEND), "exchange", micros(WHEN), GATEWAY)
    user = replace(backend.facts, caller=replace(backend.facts.caller, kind="user"))  # type: ignore[type-var]
    assert "purposeOfEvent" in render_events(backend.facts)[-1]
    assert "purposeOfEvent" not in render_events(user)[-1]


_REQUESTS = [READ, VREAD, SEARCH, CREATE, UPDATE, DELETE, INVALID, BATCH]
_DECISIONS = [None, PERMIT, REDACT, DENY, DEFAULT_DENY]
exchanges = st.builds(
    x,
    request=st.sampled_from(_REQUESTS),
    identity=st.sampled_from([None, USER, BACKEND, PATIENT_APP]),
    status=st.sampled_from([0, 200, 201, 204, 304, 400, 401, 403, 404, 412, 500, 502, 999]),
    decisions=st.dictionaries(
        st.sampled_from(["p1", "Patient/p2", "p-3.x"]), st.sampled_from(_DECISIONS), max_size=3
    ),
    released=st.sets(st.sampled_from(["Patient/p1", "p2", "Patient/p-3.x"])).map(frozenset),
    resource_refs=st.lists(
        st.sampled_from(["Observation/a", "Condition/b/_history/2"]), max_size=2
    ),
    narrowed=st.booleans(),
    break_glass=st.booleans(),
    mapping=st.none() | st.just("acme sha256:01"),
    client_address=st.sampled_from([None, "", "192.0.2.7", "2001:db8::1", "host.example"]),
)


@given(exchanges, st.sampled_from(["exchange", "decision", "outcome"]))
def test_any_exchange_renders_as_the_recorder_built_it(exchange: Exchange, phase: Phase) -> None:
    """Property over exchanges the table does not list: same patients, same events."""
    expected = old_plan(exchange, phase, WHEN, GATEWAY)
    planned = plan(exchange, phase, micros(WHEN), GATEWAY)
    assert [render_events(through_evidence(p.facts)) for p in planned] == [
        events for _, events in expected
    ]
