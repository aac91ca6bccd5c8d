"""Invariants of the decision, over random provision trees (up to three levels) and requests."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.consent import Defaults, Principal
from middleware.consent.decide import Decision
from tests.unit.consent.builders import (
    ACT_CODE,
    actor,
    ask,
    coding,
    policy,
    resource,
    rule,
)

EX = "http://example.org/security"
ACTORS = ("Practitioner/dr", "Practitioner/nurse")
PURPOSES = ("TREAT", "HMARKT")
TYPES = ("Observation", "Condition")
EFFECTS = ("permit", "deny")
INACTIVE = ("draft", "inactive", "entered-in-error")


def _some(values: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True)


conditions = st.fixed_dictionaries(
    {},
    optional={
        "actor": _some(ACTORS).map(lambda refs: [actor(r) for r in refs]),
        "purpose": _some(PURPOSES),
        "types": _some(TYPES),
        "securityLabel": st.just([coding(EX, "VIP")]),
    },
)


def trees(depth: int, *, r4_effects: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A rule with up to ``depth`` levels below it; R4 rules may state any effect."""
    effect = st.sampled_from((*EFFECTS, None)) if r4_effects else st.none()
    kids = st.lists(trees(depth - 1, r4_effects=r4_effects), max_size=2) if depth else st.just([])
    return st.builds(lambda c, k, e: rule(*k, effect=e, **c), conditions, kids, effect)


r5_rules = st.lists(trees(2, r4_effects=False), max_size=3)
r4_rules = st.lists(trees(2, r4_effects=True), max_size=3)
defaults = st.builds(
    Defaults,
    jurisdiction=st.sampled_from(("opt-in", "opt-out")),
    combining=st.sampled_from(("deny-overrides", "permit-overrides")),
    uncovered=st.sampled_from(("deny", "redact")),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    labels = {(EX, "VIP")} if draw(st.booleans()) else set()
    if draw(st.booleans()):
        labels.add((ACT_CODE, "HIV"))
    return {
        "who": Principal(reference=draw(st.sampled_from(ACTORS))),
        "purposes": frozenset((ACT_CODE, p) for p in draw(st.sets(st.sampled_from(PURPOSES)))),
        "target": resource(draw(st.sampled_from(TYPES)), security_labels=frozenset(labels)),
    }


def _nodes(rules: list[dict[str, Any]], implied: str) -> list[tuple[list[dict[str, Any]], str]]:
    """Every children list in a rule forest, with the effect a new member of it would imply."""
    found = [(rules, implied)]
    for node in rules:
        effect = node["effect"] or implied
        found += _nodes(node["children"], "deny" if effect == "permit" else "permit")
    return found


def _same(a: Decision, b: Decision) -> bool:
    return (a.effect, a.obligations) == (b.effect, b.obligations)


@settings(deadline=None, max_examples=150)
@given(decision=st.sampled_from(EFFECTS), rules=r5_rules, request=requests(), config=defaults)
def test_r4_and_r5_agree(
    decision: str, rules: list[dict[str, Any]], request: dict[str, Any], config: Defaults
) -> None:
    """The same scenario written as R4 and as R5 gets the same decision."""
    r4 = ask([policy("R4", decision, *rules)], defaults=config, **request)
    r5 = ask([policy("R5", decision, *rules)], defaults=config, **request)
    assert _same(r4, r5)


@settings(deadline=None, max_examples=150)
@given(
    decision=st.sampled_from(EFFECTS),
    rules=r4_rules,
    extra=conditions,
    request=requests(),
    config=defaults,
    data=st.data(),
)
def test_adding_a_deny_never_permits_r4(
    decision: str,
    rules: list[dict[str, Any]],
    extra: dict[str, Any],
    request: dict[str, Any],
    config: Defaults,
    data: st.DataObject,
) -> None:
    """Adding a deny provision anywhere can never turn a deny into a permit."""
    before = ask([policy("R4", decision, *rules)], defaults=config, **request)
    grown = copy.deepcopy(rules)
    siblings, _ = data.draw(
        st.sampled_from(_nodes(grown, "deny" if decision == "permit" else "permit"))
    )
    siblings.append(rule(effect="deny", **extra))
    after = ask([policy("R4", decision, *grown)], defaults=config, **request)
    if before.effect == "deny":
        assert after.effect == "deny"


@settings(deadline=None, max_examples=150)
@given(
    decision=st.sampled_from(EFFECTS),
    rules=r5_rules,
    other=r5_rules,
    extra=conditions,
    request=requests(),
    config=defaults,
    data=st.data(),
)
def test_adding_a_deny_never_permits_r5(
    decision: str,
    rules: list[dict[str, Any]],
    other: list[dict[str, Any]],
    extra: dict[str, Any],
    request: dict[str, Any],
    config: Defaults,
    data: st.DataObject,
) -> None:
    """R5 provisions under a permit are denies; adding one, to one of several consents, can
    never turn a deny into a permit."""
    neighbour = policy("R5", "permit", *other, consent_id="c2")
    before = ask([policy("R5", decision, *rules), neighbour], defaults=config, **request)
    grown = copy.deepcopy(rules)
    slots = [
        s
        for s, implied in _nodes(grown, "deny" if decision == "permit" else "permit")
        if implied == "deny"
    ]
    if not slots:  # a deny decision with no permit provision: nothing to add a deny under
        return
    data.draw(st.sampled_from(slots)).append(rule(**extra))
    after = ask([policy("R5", decision, *grown), neighbour], defaults=config, **request)
    if before.effect == "deny":
        assert after.effect == "deny"


@settings(deadline=None, max_examples=100)
@given(
    version=st.sampled_from(("R4", "R5")),
    status=st.sampled_from(INACTIVE),
    decision=st.sampled_from(EFFECTS),
    rules=r5_rules,
    others=st.lists(st.tuples(st.sampled_from(EFFECTS), r5_rules), max_size=2),
    request=requests(),
    config=defaults,
)
def test_a_consent_that_is_not_active_changes_nothing(
    version: str,
    status: str,
    decision: str,
    rules: list[dict[str, Any]],
    others: list[tuple[str, list[dict[str, Any]]]],
    request: dict[str, Any],
    config: Defaults,
) -> None:
    """A revoked (inactive), draft or entered-in-error consent never permits: deciding with it
    gives what deciding without it gives, and alone it leaves an opt-in jurisdiction at deny."""
    revoked = policy(version, decision, *rules, status=status, consent_id="revoked")
    rest = [policy("R5", d, *r, consent_id=f"c{i}") for i, (d, r) in enumerate(others)]
    assert _same(
        ask([*rest, revoked], defaults=config, **request), ask(rest, defaults=config, **request)
    )
    assert ask([revoked], defaults=Defaults(jurisdiction="opt-in"), **request).effect == "deny"


@settings(deadline=None, max_examples=100)
@given(
    consents=st.lists(st.tuples(st.sampled_from(EFFECTS), r5_rules), min_size=1, max_size=3),
    request=requests(),
    config=defaults,
)
def test_decisions_are_deterministic(
    consents: list[tuple[str, list[dict[str, Any]]]], request: dict[str, Any], config: Defaults
) -> None:
    """Same inputs, same decision (trace included); the order of consents changes only the trace."""
    policies = [policy("R5", d, *r, consent_id=f"c{i}") for i, (d, r) in enumerate(consents)]
    first = ask(policies, defaults=config, **request)
    assert ask(policies, defaults=config, **request) == first
    assert _same(ask(policies[::-1], defaults=config, **request), first)
