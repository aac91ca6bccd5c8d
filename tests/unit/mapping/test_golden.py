"""The golden cases shipped in mappings/golden pass, and the runner notices a wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.mapping import load_profiles, run_case, run_golden
from middleware.mapping.golden import GoldenCase, load_cases, parse_case, validate_resource

MAPPINGS = Path(__file__).parents[3] / "mappings"
PROFILES = load_profiles(MAPPINGS)
CASES = [
    (profile_id, case)
    for profile_id, profile in sorted(PROFILES.items())
    for case in load_cases(MAPPINGS / str(profile.golden))
]


@pytest.mark.parametrize(("profile_id", "case"), CASES, ids=[f"{p}/{c.name}" for p, c in CASES])
def test_golden_case(profile_id: str, case: GoldenCase) -> None:
    assert run_case(PROFILES[profile_id], case) == []


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_each_profile_has_cases_of_every_operation(profile_id: str) -> None:
    operations = {c.operation for p, c in CASES if p == profile_id}
    expected = (
        {"response", "write", "search"} if profile_id == "hospital-a" else {"response", "write"}
    )
    assert operations == expected
    assert run_golden(PROFILES[profile_id], MAPPINGS) == []


def test_a_wrong_expectation_is_reported_with_its_place() -> None:
    [case] = [c for p, c in CASES if c.name == "response-observation-potassium"]
    expected = dict(case.expected)
    expected["status"] = "preliminary"
    wrong = GoldenCase(case.name, "", "response", None, case.input, expected)
    assert run_case(PROFILES["hospital-a"], wrong) == [
        'response-observation-potassium: output differs at .status: "final" != "preliminary"'
    ]


def test_key_order_is_part_of_the_expectation() -> None:
    [case] = [c for p, c in CASES if c.name == "response-creatinine-depends-on-unit"]
    reordered = dict(reversed(list(case.expected.items())))
    wrong = GoldenCase(case.name, "", "response", None, case.input, reordered)
    assert run_case(PROFILES["hospital-a"], wrong) == [
        f"{case.name}: output differs at (key order)"
    ]


def test_an_expected_error_that_does_not_happen_is_a_failure() -> None:
    [case] = [c for p, c in CASES if c.name == "response-creatinine-depends-on-unit"]
    wrong = GoldenCase(case.name, "", "response", None, case.input, {"error": {"status": 422}})
    assert run_case(PROFILES["hospital-a"], wrong) == [
        f"{case.name}: expected an error {{'status': 422}}, got an answer"
    ]


def test_output_is_validated_with_fhir_resources() -> None:
    assert validate_resource({"resourceType": "Observation", "status": "final"}, "R4") == [
        "code: Field required"
    ]
    assert validate_resource({"resourceType": "Nope"}, "R5") == [
        "'Nope' is not a resource type in R5"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        {"input": 1},
        {"operation": "read", "input": 1, "expected": 1},
        {"operation": "search", "input": [], "expected": []},
    ],
    ids=["no-expected", "bad-operation", "search-without-type"],
)
def test_malformed_cases_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="case"):
        parse_case("case", raw)
