"""Golden conversion cases of the r5-client-r4-server profile (``golden/<profile>/conversion/``).

Same file format as :mod:`middleware.mapping.golden` (description, operation, input, expected,
validate), run through the conversion as the pipeline will (see ``mappings/README.md``):

- ``response``: the upstream's answer, mapped (:func:`map_response`, on the upstream's codes),
  then converted upstream -> client release;
- ``write``: the client's resource converted client -> upstream release, then prepared
  (:func:`prepare_write`).

The output must equal ``expected`` byte for byte once both are encoded; the input is validated
with fhir.resources in its release and the output in the other one (R4 with the R4B models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from middleware.errors import GatewayError
from middleware.fhir import jsoncodec
from middleware.mapping import load_profile, map_response, prepare_write
from middleware.mapping.golden import GoldenCase, load_cases, validate_resource
from middleware.mapping.versions import Release, convert_document, release_of

MAPPINGS = Path(__file__).parents[3] / "mappings"
PROFILE = load_profile(MAPPINGS / "profiles" / "r5-client-r4-server.json")
assert PROFILE.conversion is not None  # an R5 client in front of an R4 server converts
CONVERSION = PROFILE.conversion
FOLDER = MAPPINGS / str(PROFILE.golden) / "conversion"
CASES = load_cases(FOLDER)
UPSTREAM = release_of(PROFILE.upstream_version)
CLIENT = release_of(PROFILE.client_version)


def releases(case: GoldenCase) -> tuple[Release, Release]:
    """(input release, output release) of a case."""
    assert UPSTREAM is not None
    assert CLIENT is not None
    return (UPSTREAM, CLIENT) if case.operation == "response" else (CLIENT, UPSTREAM)


def run(case: GoldenCase) -> Any:
    source, target = releases(case)
    refuse = CONVERSION.refuse_on_loss(case.operation)
    if case.operation == "response":
        mapped = map_response(case.input, PROFILE).resource
        return convert_document(
            mapped, source=source, target=target, rules=CONVERSION.rules, refuse_on_loss=refuse
        ).resource
    converted = convert_document(
        case.input, source=source, target=target, rules=CONVERSION.rules, refuse_on_loss=refuse
    ).resource
    return prepare_write(converted, PROFILE).resource


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conversion_golden_case(case: GoldenCase) -> None:
    source, target = releases(case)
    assert validate_resource(case.input, source) == []
    error = case.expected.get("error") if isinstance(case.expected, dict) else None
    if error is not None:
        with pytest.raises(GatewayError) as caught:
            run(case)
        assert caught.value.status == error["status"]
        return
    actual = run(case)
    assert jsoncodec.encode(actual) == jsoncodec.encode(case.expected)
    if case.validate:
        assert validate_resource(actual, target) == []


def test_the_profile_has_conversion_cases_of_both_operations_and_errors() -> None:
    assert {c.operation for c in CASES} == {"response", "write"}
    assert any(isinstance(c.expected, dict) and "error" in c.expected for c in CASES)
    assert PROFILE.client_version == "R5"
    assert PROFILE.upstream_version == "R4"


def test_the_runner_notices_a_wrong_expectation() -> None:
    [case] = [c for c in CASES if c.name == "response-encounter"]
    wrong = dict(case.expected)
    wrong["status"] = "planned"
    assert jsoncodec.encode(run(case)) != jsoncodec.encode(wrong)
