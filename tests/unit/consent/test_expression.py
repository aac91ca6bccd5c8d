"""R5 ``provision.expression`` (FHIRPath): matching, failing closed, caching, parse refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest

from middleware.consent import Defaults, Principal, ResourceSummary, decide, parse_consent
from middleware.consent.decisions import DecisionCache
from middleware.consent.expression import MAX_WORK, compile_expression, holds
from middleware.consent.model import Policy
from middleware.consent.parse import InvalidConsent
from middleware.consent.summary import facts, summarize
from tests.unit.consent.builders import ACCESS, NOW, PATIENT

DR: Final = Principal(reference="Practitioner/dr")
FINAL_OBS: Final[dict[str, Any]] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
    "valueQuantity": {"value": 5},
    "subject": {"reference": PATIENT},
}
PRELIM_OBS: Final = {**FINAL_OBS, "id": "o2", "status": "preliminary"}
NO_STATUS_OBS: Final = {k: v for k, v in FINAL_OBS.items() if k != "status"}

IS_FINAL: Final = "Observation.status = 'final'"
IS_PRELIM: Final = "Observation.status = 'preliminary'"
TYPE_ERROR: Final = "Observation.value > 3"  # a Quantity compared with an integer: raises
NOT_BOOLEAN: Final = "Observation.status"  # a string, not a boolean


def fhirpath(text: str) -> dict[str, str]:
    return {"language": "text/fhirpath", "expression": text}


def r5(decision: str, *provisions: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "subject": {"reference": PATIENT},
        "decision": decision,
        "provision": list(provisions),
    }


def judge(raw: dict[str, Any], resource: dict[str, Any]) -> str:
    summary = summarize(resource, patients=[PATIENT])
    return decide(
        DR, ACCESS, frozenset(), summary, [parse_consent(raw)], defaults=Defaults(), now=NOW
    ).effect


CASES: Final = [
    # base deny, one permit provision judged by the expression
    ("permit-true", r5("deny", {"expression": fhirpath(IS_FINAL)}), FINAL_OBS, "permit"),
    ("permit-false", r5("deny", {"expression": fhirpath(IS_FINAL)}), PRELIM_OBS, "deny"),
    ("permit-empty", r5("deny", {"expression": fhirpath(IS_FINAL)}), NO_STATUS_OBS, "deny"),
    ("permit-error", r5("deny", {"expression": fhirpath(TYPE_ERROR)}), FINAL_OBS, "deny"),
    ("permit-not-boolean", r5("deny", {"expression": fhirpath(NOT_BOOLEAN)}), FINAL_OBS, "deny"),
    # base permit, one deny provision: unknown answers make the deny apply (fail closed)
    ("deny-true", r5("permit", {"expression": fhirpath(IS_PRELIM)}), PRELIM_OBS, "deny"),
    ("deny-false", r5("permit", {"expression": fhirpath(IS_PRELIM)}), FINAL_OBS, "permit"),
    ("deny-empty", r5("permit", {"expression": fhirpath(IS_PRELIM)}), NO_STATUS_OBS, "deny"),
    ("deny-error", r5("permit", {"expression": fhirpath(TYPE_ERROR)}), FINAL_OBS, "deny"),
    ("deny-not-boolean", r5("permit", {"expression": fhirpath(NOT_BOOLEAN)}), FINAL_OBS, "deny"),
    # AND-ed with the provision's other conditions
    (
        "and-type-mismatch",
        r5(
            "deny",
            {
                "resourceType": [{"system": "http://hl7.org/fhir/fhir-types", "code": "Condition"}],
                "expression": fhirpath("true"),
            },
        ),
        FINAL_OBS,
        "deny",
    ),
    # nested: permit LOINC 1234-5, except preliminary results
    (
        "nested-outer-only",
        r5(
            "deny",
            {
                "expression": fhirpath("code.coding.where(code = '1234-5').exists()"),
                "provision": [{"expression": fhirpath(IS_PRELIM)}],
            },
        ),
        FINAL_OBS,
        "permit",
    ),
    (
        "nested-inner-denies",
        r5(
            "deny",
            {
                "expression": fhirpath("code.coding.where(code = '1234-5').exists()"),
                "provision": [{"expression": fhirpath(IS_PRELIM)}],
            },
        ),
        PRELIM_OBS,
        "deny",
    ),
    (
        "nested-inner-error-denies",
        r5(
            "deny",
            {
                "expression": fhirpath("code.coding.where(code = '1234-5').exists()"),
                "provision": [{"expression": fhirpath(TYPE_ERROR)}],
            },
        ),
        FINAL_OBS,
        "deny",
    ),
]


@pytest.mark.parametrize(
    ("raw", "resource", "effect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_expression_decides(raw: dict[str, Any], resource: dict[str, Any], effect: str) -> None:
    assert judge(raw, resource) == effect


def test_date_arithmetic_with_a_quantity_is_accepted() -> None:
    recent = fhirpath("Observation.issued > now() - 2 years")
    raw = r5("deny", {"expression": recent})
    # FHIRPath now() is the time of evaluation (the library's clock), not the decision's
    recently = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert judge(raw, {**FINAL_OBS, "issued": recently}) == "permit"
    assert judge(raw, {**FINAL_OBS, "issued": "2001-05-01T00:00:00Z"}) == "deny"


def test_trace_names_the_expression() -> None:
    summary = summarize(FINAL_OBS, patients=[PATIENT])
    policy = parse_consent(r5("deny", {"expression": fhirpath(IS_FINAL)}))
    decision = decide(DR, ACCESS, frozenset(), summary, [policy], defaults=Defaults(), now=NOW)
    assert any(IS_FINAL in step.reason for step in decision.trace)


def test_summary_without_the_resource_is_unknown() -> None:
    """A summary built without the resource (nobody said an expression reads it) cannot
    satisfy a permit's expression."""
    policy = parse_consent(r5("deny", {"expression": fhirpath("true")}))
    bare = ResourceSummary("Observation", patients=frozenset({PATIENT}))
    assert (
        decide(DR, ACCESS, frozenset(), bare, [policy], defaults=Defaults(), now=NOW).effect
        == "deny"
    )


def test_cache_does_not_reuse_a_decision_across_resources() -> None:
    """Attack: two Observations with the same type, patient and labels share a cache key; a
    permit decided for the final one must not release the preliminary one."""
    policies: tuple[Policy, ...] = (parse_consent(r5("deny", {"expression": fhirpath(IS_FINAL)})),)
    cache = DecisionCache(Defaults())
    reads = cache.reads(policies)
    assert reads.expression
    decider = cache.decider(policies, DR, ACCESS, frozenset(), NOW)
    first = decider.decide(facts(FINAL_OBS, patients=[PATIENT], reads=reads))
    second = decider.decide(facts(PRELIM_OBS, patients=[PATIENT], reads=reads))
    assert (first.effect, second.effect) == ("permit", "deny")


def test_oversized_resource_is_unknown() -> None:
    compiled, problems = compile_expression(fhirpath("true"), "e")
    assert compiled is not None
    assert not problems
    big = {"resourceType": "Observation", "note": [{"text": "x"}] * MAX_WORK}
    assert holds(compiled, big) is None
    assert holds(compiled, FINAL_OBS) is True


REFUSED: Final = [
    ("language", {"language": "text/cql", "expression": "true"}, ".expression.language: only"),
    ("no-language", {"expression": "true"}, ".expression.language: only"),
    (
        "reference-only",
        {"language": "text/fhirpath", "reference": "http://x/Library/1"},
        "required",
    ),
    ("syntax", fhirpath("Observation.("), "not valid FHIRPath"),
    ("trailing-garbage", fhirpath("status = 'final' )"), "not valid FHIRPath"),
    ("too-long", fhirpath("true and " * 120 + "true"), "longer than 500"),
    ("too-deep", fhirpath("(" * 80 + "true" + ")" * 80), "nests deeper"),
    ("descendants", fhirpath("descendants().exists()"), "descendants() is not supported"),
    ("repeat", fhirpath("repeat(children()).exists()"), "repeat() is not supported"),
    ("regex", fhirpath("status.matches('(a+)+$')"), "matches() is not supported"),
    ("combine", fhirpath("code.combine(code).exists()"), "combine() is not supported"),
    ("trace", fhirpath("status.trace('x') = 'final'"), "trace() is not supported"),
    ("unknown-function", fhirpath("foo(1)"), "foo() is not supported"),
    ("env-variable", fhirpath("%resource.status = 'final'"), "environment variables"),
    ("union", fhirpath("(status | status).exists()"), "union"),
    # a value doubled or squared per step: 2^50 characters or digits after 50 steps
    (
        "concat-doubling",
        fhirpath("status.select($this & $this).select($this & $this).exists()"),
        "+, - and &",
    ),
    ("plus-doubling", fhirpath("status.select($this + $this).exists()"), "+, - and &"),
    ("squaring", fhirpath("(2).select($this * $this).exists()"), "*, /"),
]


@pytest.mark.parametrize(
    ("expression", "issue"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_at_write(expression: dict[str, Any], issue: str) -> None:
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(r5("deny", {"expression": expression}))
    assert any(
        found.startswith("Consent.provision[0].expression") and issue in found
        for found in caught.value.issues
    ), caught.value.issues


def test_r4_has_no_expression() -> None:
    """R4 ``provision`` has no ``expression``: the structure check refuses it, never ignored."""
    raw = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "x"}]}],
        "patient": {"reference": PATIENT},
        "policyRule": {"coding": [{"code": "OPTIN"}]},
        "provision": {"type": "permit", "expression": fhirpath("true")},
    }
    with pytest.raises(InvalidConsent):
        parse_consent(raw, version="R4")


def test_r4_cross_version_expression_extension_is_refused() -> None:
    """The R5-in-R4 extension carrying an expression is not ignored (that would widen the
    provision): such a consent is refused."""
    url = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Consent.provision.expression"
    raw = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "x"}]}],
        "patient": {"reference": PATIENT},
        "policyRule": {"coding": [{"code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "provision": [
                {"type": "deny", "extension": [{"url": url, "valueExpression": fhirpath("true")}]}
            ],
        },
    }
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(raw, version="R4")
    assert (
        "Consent.provision.provision[0].extension: provision.expression is supported in R5 only"
        in (caught.value.issues)
    )
