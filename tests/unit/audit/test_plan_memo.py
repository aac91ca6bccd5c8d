"""plan() remembers the Caller and DecisionFacts of the identity and decision objects it saw
(audit/plan.py ``_CALLERS`` and ``_DECISIONS``, each a :class:`RecentByIdentity`): the
remembered facts are the ones made afresh, an object is never answered for another one (not
even an equal one), an entry keeps its object alive, and the memory is bounded."""

from __future__ import annotations

import sys
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from middleware.audit import plan as plan_module
from middleware.audit.facts import Caller, DecisionFacts
from middleware.audit.plan import Exchange, plan, plan_break_glass
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, Obligation, TraceStep
from tests.unit.audit.test_plan_mutants import GATEWAY, READ

text = st.text(max_size=8)
identities = st.builds(
    Identity,
    subject=text.filter(bool),
    issuer=text.filter(bool),
    expires_at=st.just(1e10),
    scopes=st.just((Scope("user", "*", frozenset("rs")),)),
    client_id=st.none() | text,
    fhir_user=st.none() | text.map(lambda s: f"Practitioner/p{s}"),
    patient=st.none() | text,
    purpose_of_use=st.lists(st.tuples(text, text), max_size=3).map(tuple),
    roles=st.frozensets(text, max_size=3),
    token_id=st.none() | text,
    organization=st.none() | text,
)
decisions = st.builds(
    Decision,
    effect=st.sampled_from(["permit", "deny"]),
    obligations=st.lists(st.builds(Obligation, text.filter(bool)), max_size=2).map(tuple),
    trace=st.lists(
        st.builds(
            TraceStep,
            text.filter(bool),
            st.none() | st.integers(0, 2**40),
            st.none() | text,
            text,
        ),
        max_size=3,
    ).map(tuple),
)


def _exchange(identity: Identity, decision: Decision) -> Exchange:
    return Exchange(
        request=READ,
        identity=identity,
        status=200,
        request_id="rid-memo",
        raw_request=b"GET /fhir/Observation/o1",
        client_address=None,
        decisions={"Patient/p1": decision},
        released=frozenset({"Patient/p1"}),
    )


@given(identities, decisions)
def test_remembered_facts_are_the_facts_made_afresh(identity: Identity, decision: Decision) -> None:
    x = _exchange(identity, decision)
    first = plan(x, "exchange", 1, GATEWAY)
    again = plan(x, "exchange", 1, GATEWAY)  # from memory now
    assert again == first
    (entry,) = again
    assert entry.facts.caller == Caller.of(identity)
    assert entry.facts.decision == DecisionFacts.of(decision)
    assert entry.consent == DecisionFacts.of(decision).consent_index
    (glass,) = plan_break_glass(
        "started",
        identity=identity,
        patients=["Patient/p1"],
        recorded_us=1,
        request_id="rid-memo",
        gateway=GATEWAY,
        client_address=None,
        reason=None,
    )
    assert glass.facts.caller == Caller.of(identity)


@given(identities, decisions)
def test_a_different_object_gets_its_own_facts(identity: Identity, decision: Decision) -> None:
    """An object seen before never answers for another one of a different subject or effect."""
    plan(_exchange(identity, decision), "exchange", 1, GATEWAY)
    other_identity = replace(identity, subject=identity.subject + "-other")
    other_decision = replace(decision, effect="deny" if decision.permitted else "permit")
    (entry,) = plan(_exchange(other_identity, other_decision), "exchange", 1, GATEWAY)
    assert entry.facts.caller == Caller.of(other_identity)
    assert entry.facts.decision == DecisionFacts.of(other_decision)
    assert entry.consent == DecisionFacts.of(other_decision).consent_index


@given(identities, decisions)
def test_an_equal_but_distinct_object_gets_its_facts_made_afresh(
    identity: Identity, decision: Decision
) -> None:
    """Objects are told apart by ``is``, never by equality: an equal copy of an identity and
    of a decision seen before gets facts made anew (new objects, equal to the first ones)."""
    (first,) = plan(_exchange(identity, decision), "exchange", 1, GATEWAY)
    twin_identity, twin_decision = replace(identity), replace(decision)
    assert twin_identity == identity
    assert twin_identity is not identity
    assert twin_decision == decision
    assert twin_decision is not decision
    (entry,) = plan(_exchange(twin_identity, twin_decision), "exchange", 1, GATEWAY)
    assert entry.facts.caller is not first.facts.caller
    assert entry.facts.caller == first.facts.caller
    assert entry.facts.decision is not first.facts.decision
    assert entry.facts.decision == first.facts.decision
    (again,) = plan(_exchange(twin_identity, twin_decision), "exchange", 1, GATEWAY)
    assert again.facts.caller is entry.facts.caller  # the twin's own facts, remembered
    assert again.facts.decision is entry.facts.decision


def test_an_entry_keeps_its_objects_alive() -> None:
    """The memo holds the identity and the decision it remembers facts of (their ``id`` cannot
    be reused while the entry stands): once the caller's exchange and entries are gone, one
    reference more than before plan() remains."""
    identity = Identity(subject="alive", issuer="https://idp.example", expires_at=1e10)
    decision = Decision("permit")
    before = sys.getrefcount(identity), sys.getrefcount(decision)
    plan(_exchange(identity, decision), "exchange", 1, GATEWAY)
    assert plan_module._CALLERS.holds(identity)
    assert plan_module._DECISIONS.holds(decision)
    after = sys.getrefcount(identity), sys.getrefcount(decision)
    assert after == (before[0] + 1, before[1] + 1)


def test_the_memory_keeps_the_last_1024_objects_oldest_first_out() -> None:
    base = Identity(subject="s", issuer="https://idp.example", expires_at=1e10)
    made = [replace(base, subject=f"s{n}") for n in range(1025)]
    for identity in made:
        plan(_exchange(identity, Decision("permit")), "exchange", 1, GATEWAY)
    assert len(plan_module._CALLERS) == 1024
    assert not plan_module._CALLERS.holds(made[0])  # alive in `made`: its id is not reused
    assert all(plan_module._CALLERS.holds(identity) for identity in made[1:])
