"""Audit facts and their rendering (audit/facts.py, audit/render.py), pinned where mutation
testing found the round-trip and golden tests blind: the reason each malformed encoding gives,
what the stand-ins rebuilt from facts carry (and do not), the index row of an override and of a
request without references, an override without a patient, a mapping without its digest."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest

from middleware.audit.facts import (
    AuditFacts,
    Caller,
    DecisionFacts,
    decode_facts,
    encode_facts,
    row_of,
)
from middleware.audit.parts import AgentInfo
from middleware.audit.render import ENTITY_SYSTEM, MAPPING_SYSTEM, mapping_entity, render_events
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import TraceStep
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.leaf import EntryFlag, EntryKind

GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
DCM = "http://dicom.nema.org/resources/ontology/DCM"
CALLER = Caller("me", "https://idp.example", "patient", "app-1", None, "p1", (), (), "jti-1")
FACTS = AuditFacts(
    event="exchange",
    recorded_us=1_740_832_205_123_456,
    request_id="rid-1",
    gateway=GATEWAY,
    interaction=Interaction.READ,
    resource_type="Observation",
    resource_id="o1",
    caller=CALLER,
    status=200,
    patient="Patient/p1",
    raw_request=b"GET /fhir/Observation/o1",
)


def _wire(facts: AuditFacts = FACTS, **changes: Any) -> bytes:
    """The encoding of ``facts`` with positional fields of the top-level array replaced."""
    wire = list(msgspec.msgpack.decode(encode_facts(facts)))
    for position, value in changes.items():
        wire[int(position.removeprefix("f"))] = value
    return msgspec.msgpack.encode(wire)


# Each refusal names its reason (decode_facts' contract: a ValueError, never anything else);
# the known answers are the module's messages, and where they are told apart.
REFUSALS = [
    ("not-msgpack", b"\xc1", "audit facts are not MessagePack"),
    # another version whose layout this one cannot read: named, not "malformed"
    ("future-version-layout", msgspec.msgpack.encode([2, "exchange"]), "unknown audit facts version 2"),
    ("version-1-wrong-layout", msgspec.msgpack.encode([1, "exchange"]), "malformed audit facts"),
    ("version-not-an-int", msgspec.msgpack.encode(["x", 2]), "malformed audit facts"),
    ("version-a-bool", msgspec.msgpack.encode([True]), "malformed audit facts"),
    ("empty-array", msgspec.msgpack.encode([]), "malformed audit facts"),
    ("a-map", msgspec.msgpack.encode({"a": 1}), "malformed audit facts"),
    ("unknown-event", _wire(f1="party"), "malformed audit facts: unknown event"),
    ("negative-time", _wire(f2=-1), "malformed audit facts: time, request id or status out of range"),
    ("status-1000", _wire(f8=1000), "malformed audit facts: time, request id or status out of range"),
    ("caller-kind", _wire(f6=["s", "i", "robot", None, None, None, [], [], None, None]), "malformed audit facts: unknown caller kind"),
    ("roles-repeated", _wire(f6=["s", "i", "user", None, None, None, [], ["a", "a"], None, None]), "malformed audit facts: roles are sorted and distinct"),
    ("effect", _wire(f12=["maybe", [], []]), "malformed audit facts: unknown decision effect"),
    ("ledger-index", _wire(f12=["permit", [], [["c1", -1]]]), "malformed audit facts: a ledger index is not negative"),
    ("bare-patient-id", _wire(f9="p1"), "malformed audit facts: a patient is Patient/<id>"),
    ("non-minimal-int", encode_facts(FACTS).replace(b"\x9f\x01", b"\x9f\xcc\x01", 1), "audit facts are not in their canonical encoding"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_each_refused_encoding_names_its_reason(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        decode_facts(data)
    assert str(refused.value) == message


def test_ledger_index_zero_is_a_ledger_index() -> None:
    """The first entry of a ledger is index 0: a consent recorded there can be relied on."""
    facts = replace(FACTS, decision=DecisionFacts("permit", (), (("c1", 0),)))
    assert decode_facts(encode_facts(facts)) == facts


def test_only_the_current_version_is_written() -> None:
    with pytest.raises(ValueError, match=r"^only the current facts version is written$"):
        encode_facts(replace(FACTS, version=2))


def test_facts_without_an_interaction_name_no_resource() -> None:
    with pytest.raises(ValueError, match=r"^facts without an interaction name no resource$"):
        replace(FACTS, interaction=None, resource_id=None)


# --- what the stand-ins rebuilt from facts carry


def test_a_caller_keeps_the_launch_patient_both_ways() -> None:
    identity = Identity(
        subject="me",
        issuer="https://idp.example",
        expires_at=1e10,
        scopes=(Scope("patient", "*", frozenset("rs")),),
        patient="p1",
    )
    caller = Caller.of(identity)
    assert caller.patient == "p1"
    assert caller.identity().patient == "p1"


def test_a_rebuilt_identity_expired_at_the_epoch() -> None:
    """The stand-in renders a past caller; it must never pass as a live token."""
    assert CALLER.identity().expires_at == 0.0


def test_a_rebuilt_decision_keeps_no_provision_path_or_reason() -> None:
    """Trace reasons can reveal sensitivity labels (DecisionFacts): the rebuilt trace names the
    consents only, with empty path and reason."""
    decision = DecisionFacts("deny", ("x",), (("c1", 3), ("c2", None))).decision()
    assert decision.trace == (TraceStep("c1", 3, "", ""), TraceStep("c2", None, "", ""))


def test_a_rebuilt_request_carries_only_what_the_builders_read() -> None:
    assert FACTS.request() == FhirRequest(
        Interaction.READ, "", Level.SYSTEM, "", b"", "Observation", "o1", None
    )


# --- the index row


@pytest.mark.parametrize(
    ("event", "subtype"),
    [("break-glass-started", "110127"), ("break-glass-stopped", "110138")],
    ids=["started", "stopped"],
)
def test_an_override_row_is_a_successful_security_alert(event: str, subtype: str) -> None:
    facts = AuditFacts(
        event=event,  # type: ignore[arg-type]
        recorded_us=1,
        request_id="rid-1",
        gateway=GATEWAY,
        caller=CALLER,
        patient="Patient/p1",
    )
    row = row_of(facts, kind=int(EntryKind.ACCESS_DECISION), flags=0, pseudonym=None)
    assert (row.event_type, row.subtype, row.action, row.outcome, row.break_glass) == (
        f"{DCM}|110113",
        subtype,
        "E",
        "0",
        True,
    )


def test_a_row_of_an_exchange_without_its_interaction_says_why() -> None:
    facts = replace(FACTS, interaction=None, resource_type=None, resource_id=None)
    with pytest.raises(ValueError, match=r"^an exchange's facts name its interaction$"):
        row_of(facts, kind=0, flags=int(EntryFlag.PERMIT), pseudonym=None)


@pytest.mark.parametrize(
    ("facts", "entities"),
    [
        # a type-level request without references names no resource ("Observation/None")
        (replace(FACTS, interaction=Interaction.SEARCH_TYPE, resource_id=None), ()),
        # references given replace the request's own target
        (replace(FACTS, resource_refs=("Observation/o2",)), ("Observation/o2",)),
        (FACTS, ("Observation/o1",)),
    ],
    ids=["type-level-no-refs", "refs-over-own-target", "own-target"],
)
def test_row_entities_are_the_references_else_the_own_target(
    facts: AuditFacts, entities: tuple[str, ...]
) -> None:
    assert row_of(facts, kind=0, flags=0, pseudonym=None).entities == entities


# --- rendering


def test_rendering_an_exchange_without_its_interaction_says_why() -> None:
    facts = replace(FACTS, interaction=None, resource_type=None, resource_id=None)
    with pytest.raises(ValueError, match=r"^an exchange's facts name its interaction$"):
        render_events(facts)


def test_rendering_an_override_without_its_caller_says_why() -> None:
    facts = AuditFacts(event="break-glass-started", recorded_us=1, request_id="r", gateway=GATEWAY)
    with pytest.raises(ValueError, match=r"^a break-the-glass entry names its caller$"):
        render_events(facts)


def test_an_override_without_a_patient_renders_without_a_patient_entity() -> None:
    facts = AuditFacts(
        event="break-glass-stopped", recorded_us=1, request_id="r", gateway=GATEWAY, caller=CALLER
    )
    (event,) = render_events(facts)
    assert [e["type"]["code"] for e in event["entity"]] == ["XrequestId"]
    assert event["subtype"][0]["code"] == "110138"


def test_a_mapping_without_a_digest_still_names_its_profile() -> None:
    assert mapping_entity("acme") == {
        "what": {"identifier": {"system": MAPPING_SYSTEM, "value": "acme"}},
        "type": {"system": ENTITY_SYSTEM, "code": "mapping-profile"},
        "detail": [{"type": "files-digest", "valueString": ""}],
    }


def test_a_row_carries_the_index_it_is_given() -> None:
    """``reindex`` knows each entry's index and builds its row with it."""
    assert row_of(FACTS, kind=0, flags=0, pseudonym=None, index=5).index == 5
