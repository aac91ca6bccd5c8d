"""Parsing: version detection, every problem of an invalid Consent, and the policy built."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from middleware.consent import InvalidConsent, parse_consent
from middleware.consent.model import CodingSet, Period
from middleware.errors import UnprocessableEntity
from tests.unit.consent.builders import ACT_CODE, PATIENT, coding, concept, consent, rule

CONSENT_R4 = "http://hl7.org/fhir/StructureDefinition/Consent|4.0.1"
CONSENT_R5 = "http://hl7.org/fhir/StructureDefinition/Consent|5.0.0"


def _without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


# (id, consent, explicit version, detected version)
DETECTION: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("content-r4", consent("R4", "permit"), None, "R4"),
    ("content-r5", consent("R5", "permit"), None, "R5"),
    (
        "content-r5-decision-only",
        _without(consent("R5", "permit"), "subject") | {"subject": {"reference": PATIENT}},
        None,
        "R5",
    ),
    ("profile-r4", consent("R4", "permit", meta={"profile": [CONSENT_R4]}), None, "R4"),
    (
        "profile-r4b",
        consent("R4", "permit", meta={"profile": [CONSENT_R4.replace("4.0.1", "4.3.0")]}),
        None,
        "R4",
    ),
    ("profile-r5", consent("R5", "permit", meta={"profile": [CONSENT_R5]}), None, "R5"),
    ("explicit-r4b", consent("R4", "permit"), "R4B", "R4"),
    ("explicit-number", consent("R5", "permit"), "5.0.0", "R5"),
]


@pytest.mark.parametrize(
    ("raw", "version", "expected"), [c[1:] for c in DETECTION], ids=[c[0] for c in DETECTION]
)
def test_version_detection(raw: dict[str, Any], version: str | None, expected: str) -> None:
    assert parse_consent(raw, version=version).version == expected


def test_explicit_version_wins_over_content() -> None:
    """An R5 Consent read as R4 is invalid R4, not silently R5."""
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(consent("R5", "permit"), version="R4")
    assert any(issue.startswith("Consent.decision:") for issue in caught.value.issues)


def test_unsupported_explicit_version_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unsupported FHIR version"):
        parse_consent(consent("R5", "permit"), version="STU3")


def _r5(**changes: Any) -> dict[str, Any]:
    return (
        consent("R5", "deny", rule(actor=[{"reference": {"reference": "Practitioner/dr"}}]))
        | changes
    )


def _r4(**changes: Any) -> dict[str, Any]:
    return consent("R4", "permit") | changes


def _r5_provision(**fields: Any) -> dict[str, Any]:
    return consent("R5", "deny") | {"provision": [fields]}


# (id, consent, the start of one issue it must produce)
PROBLEMS: list[tuple[str, dict[str, Any], str]] = [
    ("not-a-consent", _r5(resourceType="Patient"), "Consent.resourceType: must be 'Consent'"),
    ("mixed-versions", _r5(patient={"reference": PATIENT}), "Consent: mixes R4 elements (patient)"),
    (
        "undetectable",
        {"resourceType": "Consent", "id": "x", "status": "active"},
        "Consent: cannot tell R4 from R5",
    ),
    (
        "profiles-disagree",
        _r5(meta={"profile": [CONSENT_R4, CONSENT_R5]}),
        "Consent.meta.profile: names both",
    ),
    ("no-id", _without(_r5(), "id"), "Consent.id: required"),
    ("bad-status", _r5(status="revoked"), "Consent.status: must be one of"),
    ("r4-status-in-r5", _r5(status="proposed"), "Consent.status: must be one of"),
    ("r5-no-decision", _without(_r5(), "decision"), "Consent.decision: required"),
    ("r5-bad-decision", _r5(decision="allow"), "Consent.decision: must be 'permit' or 'deny'"),
    (
        "r5-subject-not-patient",
        _r5(subject={"reference": "Group/g1"}),
        "Consent.subject: must be a literal reference",
    ),
    (
        "r5-subject-by-identifier",
        _r5(subject={"identifier": {"value": "1"}}),
        "Consent.subject: must be a literal",
    ),
    ("r4-no-patient", _without(_r4(), "patient"), "Consent.patient: must be a literal reference"),
    ("r4-missing-scope", _without(_r4(), "scope"), "Consent.scope: Field required"),
    (
        "r4-no-base",
        _r4(provision={"purpose": [coding(ACT_CODE, "TREAT")]}),
        "Consent.provision.type: absent",
    ),
    ("r4-nothing", _without(_r4(), "provision"), "Consent.provision: absent"),
    ("r4-bad-type", _r4(provision={"type": "allow"}), "Consent.provision.type: must be"),
    (
        "r4-bad-nested-type",
        _r4(provision={"type": "permit", "provision": [{"type": "maybe"}]}),
        "Consent.provision.provision[0].type: must be",
    ),
    (
        "r4-optin-and-optout",
        _r4(policyRule={"coding": [coding(ACT_CODE, "OPTIN"), coding(ACT_CODE, "OPTOUT")]}),
        "Consent.policyRule: names both",
    ),
    ("r5-provision-type", _r5_provision(type="permit"), "Consent.provision[0].type: Extra inputs"),
    (
        "r5-expression-not-fhirpath",
        _r5_provision(expression={"language": "text/cql", "expression": "true"}),
        "Consent.provision[0].expression.language: only text/fhirpath",
    ),
    (
        "period-reversed",
        _r5_provision(period={"start": "2024-02-01", "end": "2024-01-01"}),
        "Consent.provision[0].period: start must not be after end",
    ),
    (
        "period-not-fhir",
        _r5_provision(period={"start": "2024-02-30"}),
        "Consent.provision[0].period.start:",
    ),
    (
        "datetime-without-zone",
        _r5(period={"start": "2024-01-01T10:00:00"}),
        "Consent.period.start:",
    ),
    ("actor-nobody", _r5_provision(actor=[{}]), "Consent.provision[0].actor[0]: names neither"),
    (
        "actor-display-only",
        _r5_provision(actor=[{"reference": {"display": "Dr"}}]),
        "Consent.provision[0].actor[0].reference: needs",
    ),
    (
        "actor-identifier-no-system",
        _r5_provision(actor=[{"reference": {"identifier": {"value": "1"}}}]),
        "Consent.provision[0].actor[0].reference: needs",
    ),
    (
        "data-bad-meaning",
        _r5_provision(data=[{"meaning": "all", "reference": {"reference": "Observation/1"}}]),
        "Consent.provision[0].data[0].meaning: must be",
    ),
    (
        "data-by-identifier",
        _r5_provision(data=[{"reference": {"identifier": {"system": "s", "value": "1"}}}]),
        "Consent.provision[0].data[0].reference: needs",
    ),
    (
        "coding-without-code",
        _r5_provision(purpose=[{"system": ACT_CODE}]),
        "Consent.provision[0].purpose[0]: a coding without a code",
    ),
    (
        "concept-text-only",
        _r5_provision(action=[{"text": "read"}]),
        "Consent.provision[0].action[0]: needs a coding",
    ),
    (
        "nested-problem-path",
        _r5_provision(provision=[{"provision": [{"purpose": [{"display": "x"}]}]}]),
        "Consent.provision[0].provision[0].provision[0].purpose[0]:",
    ),
]


@pytest.mark.parametrize(("raw", "issue"), [c[1:] for c in PROBLEMS], ids=[c[0] for c in PROBLEMS])
def test_problem_is_named(raw: dict[str, Any], issue: str) -> None:
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(raw)
    assert any(found.startswith(issue) for found in caught.value.issues), caught.value.issues


def test_every_problem_is_listed_in_one_422() -> None:
    raw = _r5(status="revoked", decision="allow") | {"subject": {"reference": "Group/1"}}
    raw["provision"][0]["actor"] = [{}]
    raw["provision"][0]["dataPeriod"] = {"start": "2024", "end": "2023"}
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(raw)
    error = caught.value
    assert isinstance(error, UnprocessableEntity)
    assert error.status == 422
    assert [issue.split(":")[0] for issue in error.issues] == [
        "Consent.status",
        "Consent.subject",
        "Consent.decision",
        "Consent.provision[0].actor[0]",
        "Consent.provision[0].dataPeriod",
    ]
    assert error.diagnostics.startswith("Invalid Consent (5 problems): Consent.status")
    for issue in error.issues:
        assert issue in error.diagnostics


def test_structure_and_semantic_problems_together() -> None:
    raw = _r5(status=7) | {"decision": "allow"}
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(raw)
    assert "Consent.status: Input should be a valid string" in caught.value.issues
    assert "Consent.decision: must be 'permit' or 'deny'" in caught.value.issues


def test_not_an_object() -> None:
    with pytest.raises(InvalidConsent) as caught:
        parse_consent([])  # type: ignore[arg-type]
    assert caught.value.issues == ("Consent: expected a JSON object",)


def test_input_is_not_modified() -> None:
    raw = consent(
        "R4",
        "deny",
        rule(
            rule(purpose=["TREAT"]),
            actor=[{"role": concept(ACT_CODE, "X"), "reference": {"reference": "Practitioner/1"}}],
        ),
    )
    before = copy.deepcopy(raw)
    parse_consent(raw)
    assert raw == before


def test_policy_fields() -> None:
    """Built from the submitted JSON: codings as tuples, references normalised, R4 root period
    lifted to the policy, categories from scope and category."""
    raw = consent(
        "R4",
        "permit",
        rule(
            action=["access"],
            purpose=["HMARKT"],
            data=[
                {
                    "meaning": "related",
                    "reference": {"reference": "http://x/fhir/DiagnosticReport/r1/_history/2"},
                }
            ],
        ),
        consent_id="k1",
    )
    raw["provision"]["period"] = {"start": "2024-01-01", "end": "2024-12-31"}
    parsed = parse_consent(raw, ledger_index=3)
    assert (parsed.consent_id, parsed.patient, parsed.status, parsed.version) == (
        "k1",
        PATIENT,
        "active",
        "R4",
    )
    assert parsed.ledger_index == 3
    assert parsed.period is not None
    assert parsed.period == parsed.root.children[0].period
    assert ("http://loinc.org", "59284-0") in parsed.categories
    exception = parsed.root.children[0].children[0]
    assert exception.effect == "deny"
    assert exception.actions == CodingSet.of(
        [("http://terminology.hl7.org/CodeSystem/consentaction", "access")]
    )
    assert exception.purposes.pairs == frozenset({(ACT_CODE, "HMARKT")})
    assert exception.data_self == frozenset({"DiagnosticReport/r1"})
    assert exception.data_related == frozenset({"DiagnosticReport/r1"})


def test_r5_policy_period() -> None:
    parsed = parse_consent(consent("R5", "permit", period={"start": "2024-01-01"}))
    assert parsed.period is not None
    assert parsed.period.end is None
    assert parsed.period == Period(start=parsed.period.start)


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_a_modifier_extension_is_refused_not_ignored(version: str) -> None:
    """A modifier extension can reverse what its element means (a provision that "does not
    apply", a negated actor); reading the Consent without it could permit what the patient
    denied, so it is refused (FHIR R4 extensibility.html#modifierExtension)."""
    raw = consent(version, "deny", rule(purpose=["TREAT"]))
    provision = raw["provision"] if version == "R4" else raw["provision"][0]
    nested = provision["provision"][0] if version == "R4" else provision
    nested["modifierExtension"] = [{"url": "http://example.org/negated", "valueBoolean": True}]
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(raw)
    assert any("modifierExtension" in issue for issue in caught.value.issues)
