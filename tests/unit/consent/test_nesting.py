"""Nested provisions to three and four levels, R4 and R5 side by side, and R4's own base rules."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent import Defaults, Principal, parse_consent
from tests.unit.consent.builders import (
    ACT_CODE,
    HMARKT,
    PATIENT,
    TREAT,
    VERSIONS,
    actor,
    ask,
    coding,
    concept,
    consent,
    policy,
    resource,
    rule,
)

DR = Principal(reference="Practitioner/dr")
NURSE = Principal(reference="Practitioner/nurse")
EX = "http://example.org/security"

# Opt-out with exceptions, three levels: everything is shared, except for marketing; marketing
# is allowed for Dr, except Conditions.
THREE_LEVELS = (
    "permit",
    rule(
        rule(rule(types=["Condition"]), actor=[actor("Practitioner/dr")]),
        purpose=["HMARKT"],
    ),
)

# (id, who, purposes, resource type, expected effect, deciding path under R5)
THREE_LEVEL_CASES: list[tuple[str, Principal, frozenset[Any], str, str, str]] = [
    ("level0-base", NURSE, frozenset({TREAT}), "Observation", "permit", "Consent.decision"),
    (
        "level1-marketing-denied",
        NURSE,
        frozenset({HMARKT}),
        "Observation",
        "deny",
        "Consent.provision[0]",
    ),
    (
        "level2-dr-may-market",
        DR,
        frozenset({HMARKT}),
        "Observation",
        "permit",
        "Consent.provision[0].provision[0]",
    ),
    (
        "level3-not-conditions",
        DR,
        frozenset({HMARKT}),
        "Condition",
        "deny",
        "Consent.provision[0].provision[0].provision[0]",
    ),
    (
        "level3-needs-level2",
        NURSE,
        frozenset({HMARKT}),
        "Condition",
        "deny",
        "Consent.provision[0]",
    ),
]


def _r4_path(r5_path: str) -> str:
    """R4 nests everything under the one root provision; R5's base is Consent.decision."""
    if r5_path == "Consent.decision":
        return "Consent.provision"
    return r5_path.replace("Consent.provision[0]", "Consent.provision.provision[0]", 1)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("who", "purposes", "resource_type", "expected", "path"),
    [c[1:] for c in THREE_LEVEL_CASES],
    ids=[c[0] for c in THREE_LEVEL_CASES],
)
def test_three_levels(
    who: Principal,
    purposes: frozenset[Any],
    resource_type: str,
    expected: str,
    path: str,
    version: str,
) -> None:
    """The deepest matching provision decides, and the trace names it."""
    decision = ask(
        [policy(version, *THREE_LEVELS)],
        who=who,
        purposes=purposes,
        target=resource(resource_type),
    )
    assert decision.effect == expected
    assert decision.trace[0].provision_path == (path if version == "R5" else _r4_path(path))


# Opt-in with restrictions, four levels: Dr may see everything, except Conditions, which are
# allowed for treatment, except one code.
FOUR_LEVELS = (
    "deny",
    rule(
        rule(
            rule(rule(code=[concept("http://snomed.info/sct", "X")]), purpose=["TREAT"]),
            types=["Condition"],
        ),
        actor=[actor("Practitioner/dr")],
    ),
)
FOUR_LEVEL_CASES: list[tuple[str, Principal, frozenset[Any], str, frozenset[Any], str]] = [
    ("nurse-nothing", NURSE, frozenset({TREAT}), "Observation", frozenset(), "deny"),
    ("dr-observation", DR, frozenset({HMARKT}), "Observation", frozenset(), "permit"),
    ("dr-condition-not-treatment", DR, frozenset({HMARKT}), "Condition", frozenset(), "deny"),
    ("dr-condition-treatment", DR, frozenset({TREAT}), "Condition", frozenset(), "permit"),
    (
        "dr-condition-treatment-code-x",
        DR,
        frozenset({TREAT}),
        "Condition",
        frozenset({("http://snomed.info/sct", "X")}),
        "deny",
    ),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("who", "purposes", "resource_type", "codes", "expected"),
    [c[1:] for c in FOUR_LEVEL_CASES],
    ids=[c[0] for c in FOUR_LEVEL_CASES],
)
def test_four_levels(
    who: Principal,
    purposes: frozenset[Any],
    resource_type: str,
    codes: frozenset[Any],
    expected: str,
    version: str,
) -> None:
    """Each level is an exception to the one above, at any depth."""
    target = resource(resource_type, codes=codes)
    decision = ask([policy(version, *FOUR_LEVELS)], who=who, purposes=purposes, target=target)
    assert decision.effect == expected


# Siblings are alternatives; when they end in different effects, deny wins.
SIBLINGS = (
    "permit",
    rule(rule(types=["Claim"]), purpose=["HMARKT"]),
    rule(securityLabel=[coding(EX, "VIP")]),
)
SIBLING_CASES: list[tuple[str, frozenset[Any], str, frozenset[Any], str]] = [
    ("claims-for-marketing", frozenset({HMARKT}), "Claim", frozenset(), "permit"),
    ("other-for-marketing", frozenset({HMARKT}), "Observation", frozenset(), "deny"),
    ("vip-claim-for-marketing", frozenset({HMARKT}), "Claim", frozenset({(EX, "VIP")}), "deny"),
    ("vip-for-treatment", frozenset({TREAT}), "Observation", frozenset({(EX, "VIP")}), "deny"),
    ("plain-for-treatment", frozenset({TREAT}), "Observation", frozenset(), "permit"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("purposes", "resource_type", "labels", "expected"),
    [c[1:] for c in SIBLING_CASES],
    ids=[c[0] for c in SIBLING_CASES],
)
def test_siblings(
    purposes: frozenset[Any],
    resource_type: str,
    labels: frozenset[Any],
    expected: str,
    version: str,
) -> None:
    """An exception-to-an-exception in one branch does not cancel a sibling's exception."""
    target = resource(resource_type, security_labels=labels)
    assert ask([policy(version, *SIBLINGS)], purposes=purposes, target=target).effect == expected


# R4's own ways of stating the base: policyRule, root type, nested type or its absence.
OPTIN = {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]}
OPTOUT = {"coding": [{"system": ACT_CODE, "code": "OPTOUT"}]}
R4_OBSERVATIONS = {"class": [coding("http://hl7.org/fhir/resource-types", "Observation")]}


def r4(provision: dict[str, Any] | None, **top: Any) -> dict[str, Any]:
    body = consent("R4", "deny") | top
    if provision is None:
        del body["provision"]
    else:
        body["provision"] = provision
    return body


# (id, R4 consent, resource type, jurisdiction, expected)
R4_CASES: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("optin-policy-no-provision", r4(None, policyRule=OPTIN), "Observation", "opt-in", "permit"),
    ("optout-policy-no-provision", r4(None, policyRule=OPTOUT), "Observation", "opt-out", "deny"),
    (
        "optin-policy-root-deny-matches",
        r4({"type": "deny", **R4_OBSERVATIONS}, policyRule=OPTIN),
        "Observation",
        "opt-in",
        "deny",
    ),
    (
        "optin-policy-root-deny-misses-base-applies",
        r4({"type": "deny", **R4_OBSERVATIONS}, policyRule=OPTIN),
        "Condition",
        "opt-in",
        "permit",
    ),
    (
        "root-without-type-takes-policy",
        r4({"provision": [{"type": "deny", **R4_OBSERVATIONS}]}, policyRule=OPTIN),
        "Condition",
        "opt-in",
        "permit",
    ),
    (
        "no-base-root-misses-consent-silent-opt-in",
        r4({"type": "permit", **R4_OBSERVATIONS}),
        "Condition",
        "opt-in",
        "deny",
    ),
    (
        "no-base-root-misses-consent-silent-opt-out",
        r4({"type": "permit", **R4_OBSERVATIONS}),
        "Condition",
        "opt-out",
        "permit",
    ),
    (
        "nested-without-type-flips-parent",
        r4({"type": "permit", "provision": [R4_OBSERVATIONS]}),
        "Observation",
        "opt-out",
        "deny",
    ),
    (
        "nested-same-type-as-parent",
        r4({"type": "deny", "provision": [{"type": "deny", **R4_OBSERVATIONS}]}),
        "Observation",
        "opt-out",
        "deny",
    ),
    (
        "root-period-bounds-consent",
        r4({"type": "deny", "period": {"end": "2023-12-31"}}, policyRule=OPTIN),
        "Observation",
        "opt-out",
        "permit",
    ),
]


@pytest.mark.parametrize(
    ("raw", "resource_type", "jurisdiction", "expected"),
    [c[1:] for c in R4_CASES],
    ids=[c[0] for c in R4_CASES],
)
def test_r4_base_rules(
    raw: dict[str, Any], resource_type: str, jurisdiction: str, expected: str
) -> None:
    """policyRule opt-in/opt-out is the base; the root provision's type rules on top of it."""
    defaults = Defaults(jurisdiction=jurisdiction)  # type: ignore[arg-type]
    decision = ask([parse_consent(raw)], target=resource(resource_type), defaults=defaults)
    assert decision.effect == expected


def test_r5_effects_alternate_with_depth() -> None:
    """R5 provisions are "a negation of the previous level": odd depths oppose decision."""
    parsed = policy("R5", "permit", rule(rule(rule())))
    level1 = parsed.root.children[0]
    level2 = level1.children[0]
    level3 = level2.children[0]
    effects = [parsed.root.effect, level1.effect, level2.effect, level3.effect]
    assert effects == ["permit", "deny", "permit", "deny"]


def test_patient_reference_is_the_key() -> None:
    parsed = policy("R5", "permit", patient="https://ehr.example/fhir/Patient/p1")
    assert parsed.patient == PATIENT
