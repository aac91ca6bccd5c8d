"""The pure parts of counting (pipeline.counting): the query counted, the total placed."""

from __future__ import annotations

import pytest

from middleware.pipeline.counting import (
    CountTooCostly,
    count_query,
    has_total,
    total_answer,
    without_total,
)
from middleware.pipeline.exchange import Answer
from middleware.pipeline.release import with_total


def test_the_counted_query_selects_the_same_matches_and_asks_no_count() -> None:
    """Result parameters select nothing: they go (names read loosely, modifiers ignored, as
    the guards read them), the criteria stay in order, the page size is the gateway's."""
    params = [
        ("code", "x"),
        ("_summary", "count"),
        ("_Total", "accurate"),
        ("_totalMethod", "count"),
        ("_count", "0"),
        ("_offset", "40"),
        ("_sort", "-date"),
        ("_include:iterate", "Observation:subject"),
        ("_revinclude", "Provenance:target"),
        ("_elements", "id"),
        ("_format", "xml"),
        ("patient", "Patient/p2"),
        ("_contained", "true"),
    ]
    assert count_query(params, 500) == [
        ("code", "x"),
        ("patient", "Patient/p2"),
        ("_contained", "true"),
        ("_count", "500"),
    ]


def test_the_released_page_asks_the_upstream_for_no_total() -> None:
    params = [("code", "x"), ("_total", "accurate"), (" _TOTAL", "estimate"), ("_count", "3")]
    assert without_total(params) == [("code", "x"), ("_count", "3")]


def test_the_total_goes_after_the_type_and_replaces_any_other() -> None:
    document = {"resourceType": "Bundle", "id": "b", "type": "searchset", "total": 99, "entry": []}
    placed = with_total(document, 3)
    assert list(placed) == ["resourceType", "id", "type", "total", "entry"]
    assert placed["total"] == 3
    assert document["total"] == 99  # a copy
    assert with_total({"resourceType": "Bundle"}, 0) == {"resourceType": "Bundle", "total": 0}


def test_a_total_answer_is_only_made_of_a_bundle() -> None:
    page = Answer(200, [("etag", "x")], {"resourceType": "Bundle", "type": "searchset"})
    counted = total_answer(page, 7)
    assert counted.document == {"resourceType": "Bundle", "type": "searchset", "total": 7}
    assert counted.headers == [("etag", "x")]
    assert has_total(counted)
    assert not has_total(page)
    raw = Answer(200, [], raw=b"{}")
    assert total_answer(raw, 7) is raw
    assert not has_total(raw)


def test_too_costly_is_a_client_error_with_its_fhir_code() -> None:
    error = CountTooCostly("narrow the search")
    assert (error.status, error.code) == (422, "too-costly")
    with pytest.raises(CountTooCostly):
        raise error
