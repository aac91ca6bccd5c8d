"""The small value helpers: FHIR time bounds, references, coding sets, periods, summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.consent import summarize
from middleware.consent.fhirtime import bounds
from middleware.consent.model import CodingSet, Period, normalize_reference

# (id, FHIR value, lower, upper) -- upper is exclusive
BOUNDS: list[tuple[str, str, datetime, datetime]] = [
    ("year", "2020", datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)),
    ("month", "2020-12", datetime(2020, 12, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)),
    ("day", "2020-02-29", datetime(2020, 2, 29, tzinfo=UTC), datetime(2020, 3, 1, tzinfo=UTC)),
    (
        "second",
        "2020-01-01T10:00:00Z",
        datetime(2020, 1, 1, 10, tzinfo=UTC),
        datetime(2020, 1, 1, 10, 0, 1, tzinfo=UTC),
    ),
    (
        "offset-and-long-fraction",
        "2020-01-01T10:00:00.1234567+02:00",
        datetime(2020, 1, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        datetime(2020, 1, 1, 10, 0, 0, 123457, tzinfo=timezone(timedelta(hours=2))),
    ),
    (
        "last-day",
        "9999-12-31",
        datetime(9999, 12, 31, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ),
]


@pytest.mark.parametrize(
    ("value", "lower", "upper"), [c[1:] for c in BOUNDS], ids=[c[0] for c in BOUNDS]
)
def test_bounds(value: str, lower: datetime, upper: datetime) -> None:
    assert bounds(value) == (lower, upper)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "20",
        "2021-02-29",
        "2020-01-01T10:00:00",
        "2020-01-01T10:00Z",
        "2020-13",
        "2020-01-01 10:00:00Z",
    ],
)
def test_bounds_rejects_what_fhir_rejects(value: str) -> None:
    assert bounds(value) is None


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
    )
)
def test_a_day_contains_all_its_instants(instant: datetime) -> None:
    day = bounds(instant.date().isoformat())
    assert day is not None
    assert Period(*day).contains(instant)


REFERENCES = [
    ("relative", "Patient/1", "Patient/1"),
    ("absolute", "https://x.example/fhir/Patient/1", "Patient/1"),
    ("versioned", "Patient/1/_history/2", "Patient/1"),
    ("absolute-versioned", "http://x/fhir/Patient/1/_history/2", "Patient/1"),
    ("contained", "#p1", "#p1"),
    ("urn", "urn:uuid:0b5d2a1e", "urn:uuid:0b5d2a1e"),
    ("whitespace", " Patient/1 ", "Patient/1"),
]


@pytest.mark.parametrize(
    ("ref", "expected"), [c[1:] for c in REFERENCES], ids=[c[0] for c in REFERENCES]
)
def test_normalize_reference(ref: str, expected: str) -> None:
    assert normalize_reference(ref) == expected


def test_coding_set() -> None:
    codes = CodingSet.of([("s", "a"), ("", "b")])
    assert codes.matches(("s", "a"))
    assert not codes.matches(("t", "a"))
    assert codes.matches(("any", "b"))
    assert codes.matches_any(frozenset({("x", "y"), ("z", "b")}))
    assert not codes.matches_any(frozenset({("x", "a")}))
    assert not CodingSet()


def test_period_is_half_open() -> None:
    start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)
    period = Period(start, end)
    assert period.contains(start)
    assert not period.contains(end)
    assert Period().contains(end)


OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "meta": {
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
        "profile": ["http://example.org/StructureDefinition/vital"],
    },
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        }
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}], "text": "x"},
    "subject": {"reference": "http://x/fhir/Patient/p1"},
    "encounter": {"reference": "Encounter/e1"},
    "effectivePeriod": {"start": "2020-05"},
    "issued": "2020-06-01T00:00:00Z",
    "performer": [{"reference": "Practitioner/lab"}],
    "contained": [
        {"resourceType": "Patient", "id": "c", "link": [{"other": {"reference": "Patient/x"}}]}
    ],
}


def test_summarize_observation() -> None:
    summary = summarize(OBSERVATION, referenced_by=["DiagnosticReport/r1"])
    assert summary.reference == "Observation/o1"
    assert summary.patients == frozenset({"Patient/p1"})
    assert summary.codes == frozenset(
        {
            ("http://loinc.org", "1234-5"),
            ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"),
        }
    )
    assert summary.confidentiality == 4
    assert summary.profiles == frozenset({"http://example.org/StructureDefinition/vital"})
    assert summary.clinical_date == datetime(2020, 5, 1, tzinfo=UTC)
    assert summary.references == frozenset({"Patient/p1", "Encounter/e1", "Practitioner/lab"})
    assert summary.referenced_by == frozenset({"DiagnosticReport/r1"})
    assert summary.authors == frozenset()


def test_summarize_patient_and_explicit_compartment() -> None:
    assert summarize({"resourceType": "Patient", "id": "p1"}).patients == frozenset({"Patient/p1"})
    given_patients = summarize(OBSERVATION, patients=["Patient/p9"])
    assert given_patients.patients == frozenset({"Patient/p9"})


def test_summarize_authors_and_unlabelled() -> None:
    note = {
        "resourceType": "DocumentReference",
        "author": [{"reference": "Practitioner/a"}, {"display": "someone"}],
        "date": "2021-03-04T05:06:07+00:00",
    }
    summary = summarize(note)
    assert summary.authors == frozenset({"Practitioner/a"})
    assert summary.confidentiality == 3  # unlabelled counts as N
    assert summary.reference is None
    assert summary.clinical_date == datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
