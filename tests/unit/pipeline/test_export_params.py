"""What a Bulk Data kick-off asks for (pipeline.export_params): parameters read or refused,
and the upstream searches that answer it (Bulk Data Access IG v2, kick-off request)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from middleware.errors import BadRequest, Forbidden, GatewayError
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.pipeline.export_params import (
    DEFAULT_TYPES,
    MAX_TYPES,
    ExportRequest,
    export_request,
    searches,
)
from middleware.pipeline.judge import GATEWAY_OWNED

# --- parameters read --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], ExportRequest(DEFAULT_TYPES, None)),
        ([("_type", "Observation,Patient")], ExportRequest(("Observation", "Patient"), None)),
        (
            [("_type", "Patient"), ("_type", "Patient,Condition")],
            ExportRequest(("Patient", "Condition"), None),
        ),
        (
            [("_since", "2024-01-02T03:04:05Z")],
            ExportRequest(DEFAULT_TYPES, "2024-01-02T03:04:05Z"),
        ),
        ([("_outputFormat", "application/fhir+ndjson")], ExportRequest(DEFAULT_TYPES, None)),
        ([("_outputFormat", "ndjson")], ExportRequest(DEFAULT_TYPES, None)),
    ],
    ids=["defaults", "types-in-order", "types-repeated-once", "since", "format", "format-short"],
)
def test_kick_off_parameters(params: list[tuple[str, str]], expected: ExportRequest) -> None:
    assert export_request(params, compartment=True) == expected


def test_default_types_are_patient_data_without_the_gateways_own() -> None:
    assert "Patient" in DEFAULT_TYPES
    assert "Observation" in DEFAULT_TYPES
    assert not {"Consent", "AuditEvent"} & set(DEFAULT_TYPES)


# --- parameters refused -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "compartment", "error"),
    [
        ([("_typeFilter", "Observation?code=x")], True, BadRequest),
        ([("patient", "Patient/p1")], True, BadRequest),
        ([("_outputFormat", "text/csv")], True, BadRequest),
        ([("_since", "2024-01-02")], True, BadRequest),
        ([("_since", "yesterday")], True, BadRequest),
        ([("_since", "2024-01-02T03:04:05Z"), ("_since", "2024-01-03T03:04:05Z")], True, BadRequest),
        ([("_type", "Observation,")], True, BadRequest),
        ([("_type", "Observation?code=x")], True, BadRequest),
        ([("_type", "observation")], True, BadRequest),
        ([("_type", "Practitioner")], True, BadRequest),
        # An invented name was a 202 whose job then failed at the upstream's 404 (a 500).
        ([("_type", "Foo")], False, BadRequest),
        ([("_type", "Patient,Observations")], True, BadRequest),
        ([("_type", "Patient\x00")], False, BadRequest),
        ([("_type", "Consent")], False, Forbidden),
        ([("_type", "AuditEvent")], True, Forbidden),
    ],
    ids=["type-filter", "patient-param", "csv", "since-date", "since-text", "since-twice",
         "empty-type", "type-with-query", "lowercase-type", "outside-compartment",
         "invented-type", "misspelt-type", "nul-in-type", "consent", "audit-event"],
)  # fmt: skip
def test_kick_off_refusals(
    params: list[tuple[str, str]], compartment: bool, error: type[GatewayError]
) -> None:
    with pytest.raises(error):
        export_request(params, compartment=compartment)


def test_types_are_capped() -> None:
    names = sorted(RESOURCE_TYPES - GATEWAY_OWNED)[: MAX_TYPES + 1]
    assert len(names) == MAX_TYPES + 1
    assert export_request([("_type", ",".join(names[:-1]))], compartment=False).types
    with pytest.raises(BadRequest, match="at most"):
        export_request([("_type", ",".join(names))], compartment=False)


def test_a_system_export_may_name_types_outside_the_compartment() -> None:
    assert export_request([("_type", "Practitioner")], compartment=False).types == ("Practitioner",)


# --- searches ---------------------------------------------------------------------------------


def _query(target: str) -> list[tuple[str, str]]:
    return parse_qsl(target.partition("?")[2])


def test_one_search_a_type_with_since_as_last_updated() -> None:
    asked = ExportRequest(("Patient", "Observation"), "2024-01-02T03:04:05Z")
    found = searches(asked, count=50)
    assert [rtype for rtype, _ in found] == ["Patient", "Observation"]
    for rtype, target in found:
        assert target.startswith(f"{rtype}?")
        assert _query(target) == [("_count", "50"), ("_lastUpdated", "ge2024-01-02T03:04:05Z")]


def test_group_members_each_pinned_to_their_compartment() -> None:
    """The attack: a Group export that searched the whole type would export non-members."""
    found = searches(ExportRequest(("Patient", "Observation"), None), count=10, members=["a", "b"])
    assert [(rtype, dict(_query(target))) for rtype, target in found] == [
        ("Patient", {"_count": "10", "_id": "a"}),
        ("Patient", {"_count": "10", "_id": "b"}),
        ("Observation", {"_count": "10", "patient": "Patient/a"}),
        ("Observation", {"_count": "10", "patient": "Patient/b"}),
    ]


def test_an_empty_group_searches_nothing() -> None:
    assert searches(ExportRequest(("Observation",), None), count=10, members=[]) == []
