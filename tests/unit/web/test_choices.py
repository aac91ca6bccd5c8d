"""The portal's plain choices: checked, turned into a Consent the engine reads as chosen, and
read back for the change form."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from starlette.datastructures import FormData, UploadFile

from middleware.consent.parse import parse_consent
from middleware.web.choices import Choices, build_consent, choices_of, read_choices
from middleware.web.describe import describe

TODAY = date(2026, 12, 7)


def form(**values: Any) -> FormData:
    base: dict[str, Any] = {
        "decision": "deny",
        "who": "practitioner",
        "who_id": "dr",
        "what": "all",
    }
    base.update(values)
    items: list[tuple[str, str | UploadFile]] = []
    for key, value in base.items():
        for one in value if isinstance(value, list) else [value]:
            items.append((key, str(one)))
    return FormData(items)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        pytest.param({"decision": "maybe"}, "choose.problem.decision", id="decision"),
        pytest.param({"who": "nurse"}, "choose.problem.who", id="who"),
        pytest.param({"who_id": ""}, "choose.problem.who_id", id="no-id"),
        pytest.param({"who_id": "../Patient/p2"}, "choose.problem.who_id", id="path-id"),
        pytest.param({"who_id": "a" * 65}, "choose.problem.who_id", id="long-id"),
        pytest.param({"who_id": ".."}, "choose.problem.who_id", id="dots-id"),
        pytest.param({"who_id": "."}, "choose.problem.who_id", id="dot-id"),
        pytest.param({"what": "some"}, "choose.problem.what", id="some-without-any"),
        pytest.param({"what": "some", "kind": "Patient"}, "choose.problem.what", id="unknown-kind"),
        pytest.param(
            {"what": "some", "label": ["PSY", "XYZ"]}, "choose.problem.what", id="unknown-label"
        ),
        pytest.param({"what": "x"}, "choose.problem.what", id="what"),
        pytest.param({"purpose": "HMARKT"}, "choose.problem.purpose", id="purpose-not-offered"),
        pytest.param({"until": "2026-12-06"}, "choose.problem.until", id="past"),
        pytest.param({"until": "2026-02-30"}, "choose.problem.until", id="no-such-day"),
        pytest.param({"until": "tomorrow"}, "choose.problem.until", id="not-a-day"),
    ],
)
def test_problems(values: dict[str, Any], problem: str) -> None:
    found, problems = read_choices(form(**values), TODAY)
    assert found is None
    assert problem in problems


def test_everyone_ignores_the_id() -> None:
    found, problems = read_choices(form(who="everyone", who_id="../x"), TODAY)
    assert problems == []
    assert found == Choices(decision="deny", who="everyone")


CHOICES = [
    pytest.param(
        Choices("deny", "practitioner", "dr"),
        ["Practitioner dr may not see all your records."],
        id="deny-dr",
    ),
    pytest.param(
        Choices("permit", "organization", "o1", purpose="TREAT", until="2027-06-30"),
        [
            "Organization o1 may see all your records for treatment from 2026-12-07 until 2027-06-30."
        ],
        id="permit-org",
    ),
    pytest.param(
        Choices("deny", "everyone", labels=("PSY", "R")),
        ["Nobody may see your records marked as psychiatry notes or restricted information."],
        id="deny-labels",
    ),
    pytest.param(
        Choices(
            "permit", "practitioner", "dr", kinds=("Observation", "Immunization"), labels=("HIV",)
        ),
        [
            "Practitioner dr may see your vaccines or test results and measurements marked as HIV information."
        ],
        id="kinds-and-label",
    ),
]


@pytest.mark.parametrize(("choices", "rules"), CHOICES)
def test_built_consent_says_the_choices(choices: Choices, rules: list[str]) -> None:
    consent = build_consent(choices, "Patient/p1", TODAY)
    policy = parse_consent({**consent, "id": "x"})
    assert policy.patient == "Patient/p1"
    assert policy.root.effect is None  # says nothing beyond the choice
    assert describe(consent)[1:] == rules
    assert choices_of(consent) == choices  # the change form is pre-filled with them


def test_change_keeps_the_id() -> None:
    consent = build_consent(Choices("deny", "everyone"), "Patient/p1", TODAY, consent_id="c9")
    assert consent["id"] == "c9"


@pytest.mark.parametrize(
    "consent",
    [
        pytest.param({"resourceType": "Consent", "decision": "permit", "provision": [{}]}, id="r5"),
        pytest.param({"policyRule": {}, "provision": {"type": "deny"}}, id="policy-rule"),
        pytest.param(
            {"provision": {"type": "deny", "provision": [{"type": "permit"}]}}, id="nested"
        ),
        pytest.param(
            {"provision": {"type": "deny", "actor": [{"reference": {"reference": "CareTeam/t"}}]}},
            id="team",
        ),
        pytest.param({"provision": {"type": "deny", "actor": ["junk"]}}, id="junk-actor"),
        pytest.param(
            {"provision": {"type": "deny", "purpose": [{"code": "TREAT"}, {"code": "HPAYMT"}]}},
            id="two-purposes",
        ),
    ],
)
def test_other_shapes_are_not_prefilled(consent: dict[str, Any]) -> None:
    assert choices_of(consent) is None
