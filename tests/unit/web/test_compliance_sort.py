"""The dashboard search's sort: every API order passes through, anything else is newest
first, and the header links flip the sorted column and start the others ascending."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from middleware.audit.row import SortKey
from middleware.web.compliance_search import SORTS, search_params, sort_headers


def _sort_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["sort"][0]


def test_the_select_offers_every_order_the_api_answers() -> None:
    assert {value for value, _, _ in SORTS} == set(SortKey.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("sort", ["agent", "-client", "outcome", "-type", "date"])
def test_an_api_order_reaches_the_api(sort: str) -> None:
    assert ("_sort", sort) in search_params({"sort": sort})


@pytest.mark.parametrize("sort", ["secret", "agent,date", "-", "name"])
def test_anything_else_is_newest_first(sort: str) -> None:
    assert ("_sort", "-date") in search_params({"sort": sort})


def test_headers_flip_the_sorted_column_and_keep_the_filters() -> None:
    headers = sort_headers({"patient": "p1", "sort": "-patient"}, "-patient")
    by_label = {h["label"]: h for h in headers}
    assert by_label["Patient"]["sorted"] == "descending"
    assert _sort_of(by_label["Patient"]["link"]) == "patient"
    assert [h["sorted"] for h in headers].count("") == 4
    assert _sort_of(by_label["Time"]["link"]) == "-date"
    assert _sort_of(by_label["Who"]["link"]) == "agent"
    assert all("patient=p1" in h["link"] and "run=1" in h["link"] for h in headers)
    assert all("cursor" not in h["link"] for h in headers)  # a new order starts at page one
