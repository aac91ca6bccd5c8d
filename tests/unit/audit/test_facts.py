"""Audit facts encoding: canonical (equal facts, equal bytes), compact, versioned, and strict on
the way back (anything but the bytes encode_facts writes is a ValueError)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit.facts import (
    FACTS_VERSION,
    AuditFacts,
    Caller,
    DecisionFacts,
    decode_facts,
    encode_facts,
    row_of,
)
from middleware.audit.parts import AgentInfo
from middleware.auth.identity import Identity, IdentityKind
from middleware.fhir.request import Interaction
from middleware.ledger.leaf import EntryFlag, EntryKind

GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

FACTS = AuditFacts(
    event="exchange",
    recorded_us=1_740_832_205_123_456,
    request_id="rid-1",
    gateway=GATEWAY,
    interaction=Interaction.VREAD,
    resource_type="Observation",
    resource_id="o1",
    version_id="3",
    caller=Caller(
        "user-42",
        "https://idp.example",
        "user",
        "app-1",
        "Practitioner/pr1",
        None,
        ((ACT, "TREAT"),),
        ("doctor", "nurse"),
        "jti-9",
        "Organization/org-1",
    ),
    client_address="192.0.2.7",
    status=200,
    patient="Patient/p1",
    resource_refs=("Observation/o1/_history/3",),
    raw_request=b"",
    decision=DecisionFacts("permit", ("redact",), (("c1", 7), ("Consent/c2", None))),
    mapping="acme sha256:00",
)

text = st.text(max_size=12)
opt = st.none() | text
ids = st.from_regex(r"[A-Za-z0-9\-.]{1,20}", fullmatch=True)
callers = st.builds(
    Caller,
    subject=text,
    issuer=text,
    kind=st.sampled_from(["patient", "user", "system", "none"]),
    client_id=opt,
    fhir_user=opt,
    patient=opt,
    purposes=st.lists(st.tuples(text, text), max_size=3).map(tuple),
    roles=st.sets(text, max_size=3).map(lambda s: tuple(sorted(s))),
    token_id=opt,
    organization=opt,
)
decisions = st.builds(
    DecisionFacts,
    effect=st.sampled_from(["permit", "deny"]),
    obligations=st.lists(text, max_size=2).map(tuple),
    relied_on=st.lists(st.tuples(text, st.none() | st.integers(0, 2**62)), max_size=3).map(tuple),
)
facts_st = st.builds(
    AuditFacts,
    event=st.sampled_from(
        ["exchange", "decision", "outcome", "break-glass-started", "break-glass-stopped"]
    ),
    recorded_us=st.integers(0, 2**62),
    request_id=text.filter(bool),
    gateway=st.builds(AgentInfo, base_url=text.filter(bool), name=text.filter(bool)),
    interaction=st.sampled_from(list(Interaction)),
    resource_type=opt,
    resource_id=opt,
    version_id=opt,
    caller=st.none() | callers,
    client_address=opt,
    status=st.integers(0, 999),
    patient=st.none() | ids.map(lambda i: f"Patient/{i}"),
    resource_refs=st.lists(text, max_size=3).map(tuple),
    raw_request=st.binary(max_size=40),
    decision=st.none() | decisions,
    mapping=opt,
    reason=opt,
)
facts_st = facts_st | facts_st.map(
    lambda f: replace(f, interaction=None, resource_type=None, resource_id=None, version_id=None)
)


@given(facts_st)
def test_facts_round_trip_and_equal_facts_give_equal_bytes(facts: AuditFacts) -> None:
    data = encode_facts(facts)
    assert decode_facts(data) == facts
    assert encode_facts(decode_facts(data)) == data


@given(facts_st, st.data())
def test_a_changed_byte_never_decodes_to_the_same_facts(facts: AuditFacts, data: Any) -> None:
    """Flip any byte: decode_facts raises ValueError or returns other facts (never the same,
    never another exception)."""
    raw = bytearray(encode_facts(facts))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        other = decode_facts(bytes(raw))
    except ValueError:
        return
    assert other != facts


def test_the_encoding_is_compact() -> None:
    """A read with a caller, a decision and a mapping: a few hundred bytes (the BALP Bundle it
    replaces was ~4.6 KB)."""
    assert len(encode_facts(FACTS)) < 400


def test_the_encoding_starts_with_its_version() -> None:
    assert msgspec.msgpack.decode(encode_facts(FACTS))[0] == FACTS_VERSION == 1


def _wire(**changes: Any) -> bytes:
    """The encoding of FACTS with positional fields of the top-level array replaced."""
    wire = list(msgspec.msgpack.decode(encode_facts(FACTS)))
    for position, value in changes.items():
        wire[int(position.removeprefix("f"))] = value
    return msgspec.msgpack.encode(wire)


MALFORMED = [
    ("empty", b""),
    ("not-msgpack", b"\xc1"),
    ("json-bundle", b'{"resourceType":"Bundle"}'),
    ("unknown-version", _wire(f0=2)),
    ("unknown-event", _wire(f1="party")),
    ("negative-time", _wire(f2=-1)),
    ("empty-request-id", _wire(f3="")),
    ("float-time", _wire(f2=1.5)),
    ("unknown-interaction", _wire(f5=["dance", None, None, None])),
    ("unknown-caller-kind", _wire(f6=["s", "i", "robot", None, None, None, [], [], None, None])),
    ("roles-unsorted", _wire(f6=["s", "i", "user", None, None, None, [], ["b", "a"], None, None])),
    # a caller array without the organization (the layout before it was appended) is refused
    ("caller-without-organization", _wire(f6=["s", "i", "user", None, None, None, [], [], None])),
    ("organization-not-text", _wire(f6=["s", "i", "user", None, None, None, [], [], None, 7])),
    ("status-too-big", _wire(f8=1000)),
    ("bad-patient", _wire(f9="Practitioner/x")),
    ("raw-request-as-text", _wire(f11="GET /")),
    ("unknown-effect", _wire(f12=["maybe", [], []])),
    ("negative-ledger-index", _wire(f12=["permit", [], [["c1", -1]]])),
    ("missing-field", msgspec.msgpack.encode(list(msgspec.msgpack.decode(encode_facts(FACTS)))[:-1])),
    ("extra-field", msgspec.msgpack.encode([*msgspec.msgpack.decode(encode_facts(FACTS)), None])),
    ("trailing-bytes", encode_facts(FACTS) + b"\x00"),
    ("non-minimal-int", encode_facts(FACTS).replace(b"\x9f\x01", b"\x9f\xcc\x01", 1)),
]  # fmt: skip


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_anything_else_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_facts(data)


def test_an_unknown_version_says_so() -> None:
    with pytest.raises(ValueError, match="unknown audit facts version 2"):
        decode_facts(_wire(f0=2))


IDP = "https://idp.example"
OBS, OBS_1 = ("Observation",), ("Observation/o1",)


def _caller(kind: IdentityKind, fhir_user: str | None, patient: str | None) -> AuditFacts:
    """FACTS with a caller of ``kind`` naming ``fhir_user`` and launch ``patient``."""
    assert FACTS.caller is not None
    caller = replace(FACTS.caller, kind=kind, fhir_user=fhir_user, patient=patient)
    return replace(FACTS, caller=caller)


ROWS = [
    ("user", FACTS, "Practitioner/pr1", ("Observation",), ("Observation/o1",)),
    (
        "no-fhir-user",
        replace(FACTS, caller=replace(FACTS.caller, fhir_user=None)),  # type: ignore[type-var]
        "https://idp.example#user-42",
        ("Observation",),
        ("Observation/o1",),
    ),
    ("unauthenticated", replace(FACTS, caller=None), None, ("Observation",), ("Observation/o1",)),
    # A patient-context token without fhirUser, even about its own launch patient, keeps the
    # login: a clinician's EHR-launched app has a launch patient and patient/ scopes too, so
    # only fhirUser makes the patient the agent (45 CFR 164.528(a)(1)(ii) is not presumed).
    ("patient-own-record", _caller("patient", None, "p1"), f"{IDP}#user-42", OBS, OBS_1),
    ("patient-own-fhir-user", _caller("patient", "Patient/p1", "p1"), "Patient/p1", OBS, OBS_1),
    ("patient-other-record", _caller("patient", None, "p2"), f"{IDP}#user-42", OBS, OBS_1),
    (
        "patient-with-fhir-user",
        _caller("patient", "RelatedPerson/r1", "p1"),
        "RelatedPerson/r1",
        OBS,
        OBS_1,
    ),
    ("user-with-launch-patient", _caller("user", None, "p1"), f"{IDP}#user-42", OBS, OBS_1),
    (
        "own-target",
        replace(FACTS, resource_refs=(), interaction=Interaction.READ, version_id=None),
        "Practitioner/pr1",
        ("Observation",),
        ("Observation/o1",),
    ),
    (
        "search-refs",
        replace(
            FACTS,
            interaction=Interaction.SEARCH_TYPE,
            resource_id=None,
            resource_refs=("Condition/c1", "Observation/o2", "Condition/c1"),
        ),
        "Practitioner/pr1",
        ("Condition", "Observation"),
        ("Condition/c1", "Observation/o2"),
    ),
]


@pytest.mark.parametrize(
    ("facts", "agent", "types", "entities"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_row_of_fills_the_index_fields(
    facts: AuditFacts, agent: str | None, types: tuple[str, ...], entities: tuple[str, ...]
) -> None:
    flags = EntryFlag.PERMIT | EntryFlag.NARROWED
    row = row_of(facts, kind=EntryKind.DISCLOSURE, flags=flags, pseudonym=b"\x01" * 16)
    assert row.agent == agent
    assert row.resource_types == types
    assert row.entities == entities
    assert (row.kind, row.flags, row.pseudonym) == (5, 5, b"\x01" * 16)
    assert row.recorded_us == facts.recorded_us
    assert row.request_id == "rid-1"
    assert row.patient == "Patient/p1"
    assert not row.break_glass
    assert not row.shredded
    assert row.organization == (None if facts.caller is None else "Organization/org-1")
    if facts.caller is not None:
        assert row.roles == ("doctor", "nurse")
        assert row.client == "app-1"
        assert row.purposes == (f"{ACT}|TREAT",)
    else:
        assert (row.roles, row.client, row.purposes) == ((), None, ())


ORGANIZATIONS = [
    ("reference", "Organization/org-1"),
    ("plain-name", "Acme Health Plan"),
    ("none", None),
]


@pytest.mark.parametrize(
    "organization", [o[1] for o in ORGANIZATIONS], ids=[o[0] for o in ORGANIZATIONS]
)
def test_the_callers_organization_survives_encoding_and_fills_the_row(
    organization: str | None,
) -> None:
    """The organization claim travels Identity -> Caller -> bytes -> Caller -> AuditRow."""
    identity = Identity(subject="s", issuer=IDP, expires_at=0.0, organization=organization)
    caller = Caller.of(identity)
    assert caller.identity().organization == organization
    facts = decode_facts(encode_facts(replace(FACTS, caller=caller)))
    assert facts.caller is not None
    assert facts.caller.organization == organization
    row = row_of(facts, kind=EntryKind.DISCLOSURE, flags=0, pseudonym=None)
    assert row.organization == organization
