"""Every provision dimension, one table each, written as R4 and as R5 and decided both ways.

Each case is (conditions of one rule, request, whether the rule matches). Every case runs four
times: R4 and R5, and with the rule as a permit exception to a deny base and as a deny
exception to a permit base, so a match must flip the answer and a miss must leave the base.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from middleware.consent import Defaults, Principal
from tests.unit.consent.builders import (
    CONF,
    HMARKT,
    LOINC,
    ROLE_CODE,
    TREAT,
    VERSIONS,
    actor,
    ask,
    coding,
    concept,
    flip,
    policy,
    resource,
    rule,
)

NPI = "http://hl7.org/fhir/sid/us-npi"
EX = "http://example.org/security"
PROFILE = "http://example.org/StructureDefinition/vital"


def data(meaning: str, reference: str) -> list[dict[str, Any]]:
    return [{"meaning": meaning, "reference": {"reference": reference}}]


# (id, rule conditions, request overrides for ask()/resource(), rule matches)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # period: the rule's own time frame; an end date includes that whole day
    ("period-current", {"period": {"start": "2024-01-01", "end": "2024-12-31"}}, {}, True),
    ("period-expired", {"period": {"end": "2024-05-31"}}, {}, False),
    ("period-end-day-inclusive", {"period": {"end": "2024-06-01"}}, {}, True),
    ("period-not-yet", {"period": {"start": "2024-06-02T00:00:00Z"}}, {}, False),
    # actor: by literal reference, membership, or logical identifier
    ("actor-reference", {"actor": [actor("Practitioner/dr")]}, {}, True),
    ("actor-someone-else", {"actor": [actor("Practitioner/nurse")]}, {}, False),
    (
        "actor-any-of-several",
        {"actor": [actor("Practitioner/nurse"), actor("Practitioner/dr")]},
        {},
        True,
    ),
    (
        "actor-absolute-url-with-history",
        {"actor": [actor("https://ehr.example/fhir/Practitioner/dr/_history/3")]},
        {},
        True,
    ),
    (
        "actor-organisation-of-principal",
        {"actor": [actor("Organization/hosp")]},
        {
            "who": Principal(
                reference="Practitioner/dr", memberships=frozenset({"Organization/hosp"})
            )
        },
        True,
    ),
    (
        "actor-identifier",
        {
            "actor": [
                {
                    "role": concept(ROLE_CODE, "PROV"),
                    "reference": {"identifier": {"system": NPI, "value": "123"}},
                }
            ]
        },
        {"who": Principal(identifiers=frozenset({(NPI, "123")}))},
        True,
    ),
    (
        "actor-identifier-other-system",
        {
            "actor": [
                {
                    "role": concept(ROLE_CODE, "PROV"),
                    "reference": {"identifier": {"system": NPI, "value": "123"}},
                }
            ]
        },
        {"who": Principal(identifiers=frozenset({("urn:other", "123")}))},
        False,
    ),
    # action (consentaction codes)
    ("action-listed", {"action": ["access"]}, {}, True),
    ("action-other", {"action": ["disclose"]}, {}, False),
    ("action-one-of-several", {"action": ["collect", "access"]}, {}, True),
    # purpose of use: any purpose of the request
    ("purpose-listed", {"purpose": ["TREAT"]}, {}, True),
    ("purpose-other", {"purpose": ["HMARKT"]}, {}, False),
    (
        "purpose-one-of-request",
        {"purpose": ["HMARKT"]},
        {"purposes": frozenset({TREAT, HMARKT})},
        True,
    ),
    ("purpose-request-has-none", {"purpose": ["TREAT"]}, {"purposes": frozenset()}, False),
    # class (R4) / resourceType + documentType (R5)
    ("type-listed", {"types": ["Observation"]}, {}, True),
    ("type-other", {"types": ["Condition"]}, {}, False),
    (
        "type-profile",
        {"types": [coding("urn:ietf:rfc:3986", PROFILE)]},
        {"profiles": frozenset({PROFILE})},
        True,
    ),
    (
        "type-coded-document-class",
        {"types": [coding(LOINC, "11488-4")]},
        {"codes": frozenset({(LOINC, "11488-4")})},
        True,
    ),
    # code: any coding of the resource, system and code
    (
        "code-listed",
        {"code": [concept(LOINC, "1234-5")]},
        {"codes": frozenset({(LOINC, "1234-5")})},
        True,
    ),
    (
        "code-same-code-other-system",
        {"code": [concept("http://snomed.info/sct", "1234-5")]},
        {"codes": frozenset({(LOINC, "1234-5")})},
        False,
    ),
    ("code-resource-has-none", {"code": [concept(LOINC, "1234-5")]}, {}, False),
    (
        "code-without-system-matches-any-system",
        {"code": [{"coding": [{"code": "1234-5"}]}]},
        {"codes": frozenset({(LOINC, "1234-5")})},
        True,
    ),
    # securityLabel, non-confidentiality labels: exact match
    (
        "label-present",
        {"securityLabel": [coding(EX, "VIP")]},
        {"security_labels": frozenset({(EX, "VIP")})},
        True,
    ),
    ("label-absent", {"securityLabel": [coding(EX, "VIP")]}, {}, False),
    # dataPeriod against the resource's clinical date
    (
        "dataperiod-inside",
        {"dataPeriod": {"start": "2020-01-01", "end": "2020-12-31"}},
        {"clinical_date": datetime(2020, 6, 1, tzinfo=UTC)},
        True,
    ),
    (
        "dataperiod-outside",
        {"dataPeriod": {"start": "2020-01-01", "end": "2020-12-31"}},
        {"clinical_date": datetime(2021, 1, 1, tzinfo=UTC)},
        False,
    ),
    # data with meaning
    ("data-instance", {"data": data("instance", "Observation/o1")}, {}, True),
    ("data-instance-other", {"data": data("instance", "Observation/o2")}, {}, False),
    (
        "data-related-referenced-by-named",
        {"data": data("related", "DiagnosticReport/r1")},
        {"referenced_by": frozenset({"DiagnosticReport/r1"})},
        True,
    ),
    (
        "data-related-not-a-dependent",
        {"data": data("related", "DiagnosticReport/r1")},
        {"references": frozenset({"DiagnosticReport/r1"})},
        False,
    ),
    (
        "data-dependents-refers-to-named",
        {"data": data("dependents", "Encounter/e1")},
        {"references": frozenset({"Encounter/e1"})},
        True,
    ),
    ("data-dependents-itself", {"data": data("dependents", "Observation/o1")}, {}, True),
    (
        "data-authoredby",
        {"data": data("authoredby", "Practitioner/x")},
        {"authors": frozenset({"Practitioner/x"})},
        True,
    ),
    (
        "data-authoredby-other",
        {"data": data("authoredby", "Practitioner/x")},
        {"authors": frozenset({"Practitioner/y"})},
        False,
    ),
    # several attributes AND together
    (
        "and-all-match",
        {"action": ["access"], "purpose": ["TREAT"], "types": ["Observation"]},
        {},
        True,
    ),
    (
        "and-one-fails",
        {"action": ["access"], "purpose": ["HMARKT"], "types": ["Observation"]},
        {},
        False,
    ),
    ("no-conditions", {}, {}, True),
]

_ASK_KEYS = ("who", "purposes")


def _ask(policies: list[Any], request: dict[str, Any]) -> str:
    asked = {k: v for k, v in request.items() if k in _ASK_KEYS}
    fields = {k: v for k, v in request.items() if k not in _ASK_KEYS}
    return ask(policies, target=resource(**fields), **asked).effect


@pytest.mark.parametrize("base", ["deny", "permit"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("conditions", "request_", "hit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_dimension(
    conditions: dict[str, Any], request_: dict[str, Any], hit: bool, version: str, base: str
) -> None:
    """A matching exception flips the base decision; a non-matching one leaves it."""
    consent = policy(version, base, rule(**conditions))
    assert _ask([consent], request_) == (flip(base) if hit else base)


# Confidentiality is a high-water mark: a permit's label is a ceiling, a deny's label a floor.
# (id, rule effect, label named by the rule, the resource's confidentiality or None, matches)
CONFIDENTIALITY: list[tuple[str, str, str, str | None, bool]] = [
    ("permit-R-reaches-N", "permit", "R", "N", True),
    ("permit-R-reaches-R", "permit", "R", "R", True),
    ("permit-R-not-V", "permit", "R", "V", False),
    ("permit-R-reaches-unlabelled", "permit", "R", None, True),
    ("permit-N-reaches-L", "permit", "N", "L", True),
    ("permit-L-not-unlabelled", "permit", "L", None, False),
    ("deny-R-not-N", "deny", "R", "N", False),
    ("deny-R-reaches-R", "deny", "R", "R", True),
    ("deny-R-reaches-V", "deny", "R", "V", True),
    ("deny-N-reaches-unlabelled", "deny", "N", None, True),
    ("deny-V-not-R", "deny", "V", "R", False),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("effect", "label", "level", "hit"),
    [c[1:] for c in CONFIDENTIALITY],
    ids=[c[0] for c in CONFIDENTIALITY],
)
def test_confidentiality_high_water_mark(
    effect: str, label: str, level: str | None, hit: bool, version: str
) -> None:
    """A permit naming a level reaches that level and below; a deny reaches it and above.

    (Only V needs explicit consent here, so a base permit may release R data.)"""
    consent = policy(version, flip(effect), rule(securityLabel=[coding(CONF, label)]))
    labels = frozenset({(CONF, level)}) if level else frozenset()
    defaults = Defaults(explicit_confidentiality="V")
    got = ask([consent], target=resource(security_labels=labels), defaults=defaults).effect
    assert got == (effect if hit else flip(effect))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("effect", "hit"), [("deny", True), ("permit", False)], ids=["deny", "permit"]
)
def test_unknown_clinical_date_matches_denies_only(effect: str, hit: bool, version: str) -> None:
    """A resource without a clinical date falls under dataPeriod denies, never dataPeriod permits."""
    consent = policy(version, flip(effect), rule(dataPeriod={"start": "2020-01-01"}))
    got = ask([consent], target=resource(clinical_date=None)).effect
    assert got == (effect if hit else flip(effect))


# R4 requires actor.reference, so actors by role alone exist only in R5.
ROLES: list[tuple[str, dict[str, Any], frozenset[tuple[str, str]], bool]] = [
    ("role-held", concept(ROLE_CODE, "PROV"), frozenset({(ROLE_CODE, "PROV")}), True),
    ("role-not-held", concept(ROLE_CODE, "PROV"), frozenset({(ROLE_CODE, "NURS")}), False),
    ("role-without-system", {"coding": [{"code": "PROV"}]}, frozenset({(ROLE_CODE, "PROV")}), True),
    ("principal-without-roles", concept(ROLE_CODE, "PROV"), frozenset(), False),
]


@pytest.mark.parametrize(("role", "held", "hit"), [c[1:] for c in ROLES], ids=[c[0] for c in ROLES])
def test_r5_actor_by_role(
    role: dict[str, Any], held: frozenset[tuple[str, str]], hit: bool
) -> None:
    """An actor given by role alone is every principal holding that role."""
    consent = policy("R5", "deny", rule(actor=[{"role": role}]))
    got = ask([consent], who=Principal(reference="Practitioner/dr", roles=held)).effect
    assert got == ("permit" if hit else "deny")


def test_actor_role_with_reference_is_not_required_of_principal() -> None:
    """With a reference, the actor's role (IRCP) says how it is involved; the principal needs
    only to be the referenced party."""
    consent = policy("R4", "permit", rule(actor=[actor("Practitioner/dr", role="IRCP")]))
    assert ask([consent], who=Principal(reference="Practitioner/dr")).effect == "deny"
