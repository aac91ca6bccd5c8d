"""The $explain operation's input and output (consent.explainio)."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent.decide import Decision, Obligation, TraceStep
from middleware.consent.explainio import ACCESS, parse_explain, render_explanation
from middleware.consent.request import Principal
from middleware.errors import BadRequest

RESOURCE = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}
V3 = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


@pytest.mark.parametrize(
    "body",
    [
        parameters(
            {"name": "actor", "valueReference": {"reference": "http://x/fhir/Practitioner/1"}},
            {"name": "role", "valueCoding": {"system": "r", "code": "doc"}},
            {"name": "identifier", "valueIdentifier": {"system": "npi", "value": "42"}},
            {"name": "membership", "valueReference": {"reference": "Organization/o"}},
            {"name": "purpose", "valueCoding": {"system": V3, "code": "TREAT"}},
            {"name": "action", "valueCoding": {"system": "a", "code": "use"}},
            {"name": "resource", "resource": RESOURCE},
        ),
        {
            "principal": {
                "reference": "Practitioner/1",
                "roles": [{"system": "r", "code": "doc"}],
                "identifiers": [{"system": "npi", "value": "42"}],
                "memberships": ["Organization/o"],
            },
            "purpose": [{"system": V3, "code": "TREAT"}],
            "action": {"system": "a", "code": "use"},
            "resource": RESOURCE,
        },
    ],
    ids=["parameters", "plain-json"],
)
def test_both_forms_say_the_same(body: dict[str, Any]) -> None:
    query = parse_explain(body)
    assert query.principal == Principal(
        reference="Practitioner/1",
        roles=frozenset({("r", "doc")}),
        identifiers=frozenset({("npi", "42")}),
        memberships=frozenset({"Organization/o"}),
    )
    assert query.action == ("a", "use")
    assert query.purposes == frozenset({(V3, "TREAT")})
    assert query.resource == RESOURCE
    assert query.parameters is (body.get("resourceType") == "Parameters")


def test_defaults_the_caller_and_access() -> None:
    query = parse_explain({"resource": RESOURCE})
    assert query.principal is None
    assert query.action == ACCESS
    assert query.purposes == frozenset()


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        ([], 1),
        ({}, 1),
        ({"resource": RESOURCE, "colour": "red"}, 1),
        ({"resource": {"id": "x"}}, 1),
        ({"resource": RESOURCE, "purpose": [{"system": V3}]}, 1),
        ({"resource": RESOURCE, "principal": {"identifiers": [{"value": "1"}]}}, 1),
        (parameters({"name": "resource", "resource": RESOURCE}, {"name": "bogus"}), 1),
        (
            parameters(
                {"name": "resource", "resource": RESOURCE},
                {"name": "resource", "resource": RESOURCE},
            ),
            1,
        ),
        ({"principal": "Practitioner/1", "purpose": "TREAT"}, 3),
    ],
    ids=[
        "not-an-object",
        "no-resource",
        "unknown-input",
        "resource-without-type",
        "coding-without-code",
        "identifier-without-system",
        "unknown-parameter",
        "two-resources",
        "every-problem",
    ],
)
def test_what_is_refused(body: object, problems: int) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_explain(body)
    assert len(caught.value.issues or (caught.value.diagnostics,)) == problems


DECISION = Decision(
    "permit",
    (Obligation("redact", frozenset({("s", "HIV")})),),
    (
        TraceStep("c1", 12, "Consent.provision[0]", "permit: deepest matching provision"),
        TraceStep(None, None, None, "permit: a consent permits (deny-overrides)"),
    ),
)


def test_parameters_output() -> None:
    out = render_explanation(DECISION, ["Patient/p1"], parameters=True)
    assert out == {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "effect", "valueCode": "permit"},
            {
                "name": "obligation",
                "part": [
                    {"name": "code", "valueCode": "redact"},
                    {"name": "label", "valueCoding": {"system": "s", "code": "HIV"}},
                ],
            },
            {
                "name": "trace",
                "part": [
                    {"name": "consent", "valueString": "c1"},
                    {"name": "ledgerIndex", "valueString": "12"},
                    {"name": "provision", "valueString": "Consent.provision[0]"},
                    {"name": "reason", "valueString": "permit: deepest matching provision"},
                ],
            },
            {
                "name": "trace",
                "part": [
                    {"name": "reason", "valueString": "permit: a consent permits (deny-overrides)"}
                ],
            },
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
        ],
    }


def test_plain_output_is_explain_plus_patients() -> None:
    out = render_explanation(DECISION, ["Patient/p2", "Patient/p1"], parameters=False)
    assert out["effect"] == "permit"
    assert out["trace"][0]["ledgerIndex"] == 12
    assert out["patients"] == ["Patient/p1", "Patient/p2"]
