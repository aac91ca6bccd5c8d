"""A consent that names an organization, a care team, a group, a practitioner role or a
related person applies to a caller whose token says it acts for that party, and only to them.

The caller is built as enforcement builds it (claims -> :class:`Identity` ->
:func:`principal_of`): the organization claim when it is ``Organization/<id>``, a
``fhirUser`` that is a PractitionerRole, and the configured memberships claim. Before, the
principal carried no membership: a deny naming ``Organization/org1`` let that organization's
practitioner through. The explanation names the membership that made a provision apply.
"""

from __future__ import annotations

from typing import Any

import pytest

from middleware.auth.identity import ClaimError, IdentityRules, identity_from_claims
from middleware.consent.explain import explain
from middleware.consent.explainio import render_explanation
from middleware.consent.principals import principal_of
from middleware.consent.request import Principal
from middleware.pipeline.caller import caller_of
from tests.unit.consent.builders import ACT_CODE, VERSIONS, actor, ask, policy, rule

RULES = IdentityRules(membership_claim="consentry.memberships")
ETREAT = (ACT_CODE, "ETREAT")
TREAT = (ACT_CODE, "TREAT")


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "u1", "iss": "https://idp", "exp": 4e9, "scope": "user/*.rs"} | extra


#: kind -> (the party a consent names, claims of a member, claims of a non-member: one who
#: acts for another party of the same kind)
KINDS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "Organization": (
        "Organization/org1",
        _claims(fhirUser="Practitioner/dr", organization="Organization/org1"),
        _claims(fhirUser="Practitioner/dr", organization="Organization/org2"),
    ),
    "PractitionerRole-fhirUser": (
        "PractitionerRole/pr1",
        _claims(fhirUser="PractitionerRole/pr1"),
        _claims(fhirUser="PractitionerRole/pr2"),
    ),
    "PractitionerRole-claim": (
        "PractitionerRole/pr1",
        _claims(fhirUser="Practitioner/dr", consentry={"memberships": ["PractitionerRole/pr1"]}),
        _claims(fhirUser="Practitioner/dr", consentry={"memberships": ["PractitionerRole/pr2"]}),
    ),
    "CareTeam": (
        "CareTeam/ct1",
        _claims(fhirUser="Practitioner/dr", consentry={"memberships": ["CareTeam/ct1"]}),
        _claims(fhirUser="Practitioner/dr", consentry={"memberships": ["CareTeam/ct2"]}),
    ),
    "Group": (
        "Group/g1",
        _claims(fhirUser="Practitioner/dr", consentry={"memberships": "Group/g0 Group/g1"}),
        _claims(fhirUser="Practitioner/dr", consentry={"memberships": "Group/g0"}),
    ),
    "RelatedPerson": (
        "RelatedPerson/rp1",
        _claims(fhirUser="Person/x", consentry={"memberships": ["RelatedPerson/rp1"]}),
        _claims(fhirUser="Person/x", consentry={"memberships": ["RelatedPerson/rp9"]}),
    ),
}


def _principal(claims: dict[str, Any]) -> Principal:
    identity = identity_from_claims(claims, RULES)
    principal = caller_of(identity).principal
    assert principal == principal_of(identity)  # enforcement and $explain: one principal
    return principal


# (scenario, base decision, rules as a function of the named party, purpose,
#  effect for a member, effect for a non-member)
SCENARIOS = [
    # opt-out consent denying the party
    ("deny-party", "permit", lambda p: (rule(actor=[actor(p)]),), TREAT, "deny", "permit"),
    # opt-in consent permitting the party only
    ("permit-party", "deny", lambda p: (rule(actor=[actor(p)]),), TREAT, "permit", "deny"),
    # deny the party except in an emergency (nested permit): for treatment, denied ...
    (
        "nested-treat",
        "permit",
        lambda p: (rule(rule(purpose=["ETREAT"]), actor=[actor(p)]),),
        TREAT,
        "deny",
        "permit",
    ),
    # ... and permitted in an emergency
    (
        "nested-etreat",
        "permit",
        lambda p: (rule(rule(purpose=["ETREAT"]), actor=[actor(p)]),),
        ETREAT,
        "permit",
        "permit",
    ),
    # permit the party, except data it may not see for marketing-like purposes: nested deny
    (
        "nested-deny-in-permit",
        "deny",
        lambda p: (rule(rule(purpose=["TREAT"]), actor=[actor(p)]),),
        TREAT,
        "deny",
        "deny",
    ),
    (
        "nested-permit-branch",
        "deny",
        lambda p: (rule(rule(purpose=["TREAT"]), actor=[actor(p)]),),
        ETREAT,
        "permit",
        "deny",
    ),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    ("base", "rules", "purpose", "member_effect", "other_effect"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_a_consent_naming_a_party_applies_to_its_members_only(
    version: str,
    kind: str,
    base: str,
    rules: Any,
    purpose: tuple[str, str],
    member_effect: str,
    other_effect: str,
) -> None:
    party, member, other = KINDS[kind]
    policies = [policy(version, base, *rules(party))]
    purposes = frozenset({purpose})
    assert ask(policies, who=_principal(member), purposes=purposes).effect == member_effect
    assert ask(policies, who=_principal(other), purposes=purposes).effect == other_effect


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if k != "PractitionerRole-fhirUser"))
def test_the_explanation_names_the_membership_that_matched(kind: str) -> None:
    party, member, other = KINDS[kind]
    policies = [policy("R4", "permit", rule(actor=[actor(party)]), consent_id="c9")]
    principal = _principal(member)
    decision = ask(policies, who=principal)
    steps = explain(decision, principal, policies)["trace"]
    decided = [step for step in steps if step.get("consent") == "c9"]
    assert decided == [
        {
            "reason": "deny: deepest matching provision",
            "consent": "c9",
            "provision": decided[0]["provision"],
            "memberships": [party],
        }
    ]
    # a non-member's trace names no membership; without the principal, none either
    assert all(
        "memberships" not in s
        for s in explain(ask(policies, who=_principal(other)), _principal(other), policies)["trace"]
    )
    assert all("memberships" not in s for s in explain(decision)["trace"])


def test_a_nested_decision_names_the_membership_of_its_ancestor() -> None:
    party, member, _ = KINDS["CareTeam"]
    policies = [
        policy("R4", "permit", rule(rule(purpose=["ETREAT"]), actor=[actor(party)]), consent_id="c")
    ]
    principal = _principal(member)
    decision = ask(policies, who=principal, purposes=frozenset({ETREAT}))
    assert decision.effect == "permit"
    steps = [s for s in explain(decision, principal, policies)["trace"] if "provision" in s]
    assert [s["memberships"] for s in steps] == [[party]]


def test_a_plain_organization_name_is_no_membership() -> None:
    principal = _principal(_claims(fhirUser="Practitioner/dr", organization="St Elsewhere"))
    assert principal.memberships == frozenset()


@pytest.mark.parametrize(
    "value",
    [
        ["Practitioner/dr"],  # a user, not something one acts for
        ["Patient/p1"],
        ["CareTeam/ct1", 7],
        ["https://other.example/fhir/CareTeam/ct1"],  # absolute: another server's record
        ["CareTeam/../Patient/p1"],
        ["CareTeam/.."],
        {"CareTeam": "ct1"},
        [f"Group/g{i}" for i in range(65)],  # more than the bound
    ],
    ids=[
        "practitioner",
        "patient",
        "non-string",
        "absolute",
        "dot-segments",
        "dots-id",
        "object",
        "too-many",
    ],
)
def test_a_malformed_memberships_claim_refuses_the_token(value: object) -> None:
    with pytest.raises(ClaimError, match=r"consentry\.memberships"):
        identity_from_claims(_claims(consentry={"memberships": value}), RULES)


def test_without_a_configured_claim_memberships_are_not_read() -> None:
    claims = _claims(fhirUser="Practitioner/dr", consentry={"memberships": ["CareTeam/ct1"]})
    assert identity_from_claims(claims).memberships == frozenset()
    assert identity_from_claims(claims, RULES).memberships == frozenset({"CareTeam/ct1"})


def test_a_parameters_explanation_carries_the_membership() -> None:
    party, member, _ = KINDS["Organization"]
    policies = [policy("R5", "permit", rule(actor=[actor(party)]), consent_id="c1")]
    principal = _principal(member)
    decision = ask(policies, who=principal)
    rendered = render_explanation(
        decision, ["Patient/p1"], parameters=True, principal=principal, policies=policies
    )
    traces = [p["part"] for p in rendered["parameter"] if p["name"] == "trace"]
    named = [part for parts in traces for part in parts if part["name"] == "membership"]
    assert named == [{"name": "membership", "valueReference": {"reference": party}}]
    plain = render_explanation(decision, ["Patient/p1"], parameters=False)
    assert all("memberships" not in step for step in plain["trace"])
