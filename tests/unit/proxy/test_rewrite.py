"""Base-URL rewriting on structure: what changes, what must not, and properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.proxy.rewrite import Rebaser

UP = "http://up:8103/fhir"
GW = "https://gw.example/fhir"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{UP}/Patient/1", f"{GW}/Patient/1"),
        (f"{UP}?_id=1", f"{GW}?_id=1"),
        (UP, GW),
        (f"{UP}x/Patient/1", f"{UP}x/Patient/1"),
        ("Patient/1", "Patient/1"),
        ("urn:uuid:1", "urn:uuid:1"),
        (f"http://other{UP}", f"http://other{UP}"),
    ],
    ids=["instance", "query", "bare-base", "longer-prefix", "relative", "urn", "embedded"],
)
def test_url(value: str, expected: str) -> None:
    assert Rebaser(UP, GW).url(value) == expected


def test_contained_and_deep_references_are_rebased_and_canonicals_are_not() -> None:
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Specimen", "subject": {"reference": f"{UP}/Patient/1"}}],
        "performer": [{"reference": f"{UP}/Practitioner/2"}, {"reference": "#spec"}],
        "meta": {"profile": [f"{UP}/StructureDefinition/p"]},
        "instantiatesCanonical": f"{UP}/PlanDefinition/x",
    }
    rebaser = Rebaser(UP, GW)
    rebaser.rewrite(doc, rebaser.occurrences(jsoncodec.encode(doc)))
    assert doc["contained"][0]["subject"]["reference"] == f"{GW}/Patient/1"
    assert doc["performer"] == [{"reference": f"{GW}/Practitioner/2"}, {"reference": "#spec"}]
    assert doc["meta"]["profile"] == [f"{UP}/StructureDefinition/p"]
    assert doc["instantiatesCanonical"] == f"{UP}/PlanDefinition/x"


def test_bundle_fields_alone_skip_the_tree_walk() -> None:
    """When link/fullUrl account for every occurrence, resources are not walked (and a
    reference that is not on the base stays as it is either way)."""
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "link": [{"relation": "self", "url": f"{UP}/Patient"}],
        "entry": [{"fullUrl": f"{UP}/Patient/1", "resource": {"resourceType": "Patient"}}],
    }
    rebaser = Rebaser(UP, GW)
    raw = jsoncodec.encode(doc)
    assert rebaser.occurrences(raw) == 2
    rebaser.rewrite(doc, 2)
    assert UP.encode() not in jsoncodec.encode(doc)


def test_deeply_nested_documents_do_not_exhaust_the_stack() -> None:
    doc: Any = {"reference": f"{UP}/Patient/1"}
    for _ in range(5000):
        doc = {"x": [doc]}
    Rebaser(UP, GW).rewrite(doc, 1)
    inner = doc
    for _ in range(5000):
        inner = inner["x"][0]
    assert inner["reference"] == f"{GW}/Patient/1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "reference", "url", "fullUrl", "link"]), children, max_size=4
        )
    ),
    max_leaves=30,
)


@given(json_values)
def test_documents_without_the_base_are_never_changed(doc: Any) -> None:
    rebaser = Rebaser(UP, GW)
    raw = jsoncodec.encode(doc)
    before = jsoncodec.decode(raw)
    rebaser.rewrite(before, rebaser.occurrences(raw))
    assert jsoncodec.encode(before) == raw


@given(st.lists(st.sampled_from(["Patient/1", "Observation/2?x=1", ""]), min_size=1, max_size=5))
def test_no_upstream_url_survives_in_rewritten_places(paths: list[str]) -> None:
    doc = {
        "resourceType": "Bundle",
        "link": [{"url": f"{UP}/{p}"} for p in paths],
        "entry": [
            {"fullUrl": f"{UP}/{p}", "resource": {"subject": {"reference": f"{UP}/{p}"}}}
            for p in paths
        ],
    }
    rebaser = Rebaser(UP, GW)
    raw = jsoncodec.encode(doc)
    rebaser.rewrite(doc, rebaser.occurrences(raw))
    assert UP.encode() not in jsoncodec.encode(doc)


def test_attachment_urls_on_the_upstream_base_are_rebased_and_other_uris_are_not() -> None:
    """An Attachment's url naming a Binary of the upstream reached the client with the
    upstream's base (and, under id mapping, the client's id on the upstream's host)."""
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "content": [{"attachment": {"url": f"{UP}/Binary/b1", "contentType": "text/plain"}}],
        "extension": [{"url": f"{UP}/ext", "valueAttachment": {"url": f"{UP}/Binary/b2"}}],
        "presentedForm": [{"url": f"{UP}/Binary/b3"}, {"url": "https://elsewhere/x.pdf"}],
        "identifier": [{"system": f"{UP}/ids", "value": "1"}],
    }
    rebaser = Rebaser(UP, GW)
    rebaser.rewrite(doc, rebaser.occurrences(jsoncodec.encode(doc)))
    assert doc["content"][0]["attachment"]["url"] == f"{GW}/Binary/b1"
    assert doc["extension"][0]["valueAttachment"]["url"] == f"{GW}/Binary/b2"
    assert doc["presentedForm"][0]["url"] == f"{GW}/Binary/b3"
    assert doc["presentedForm"][1]["url"] == "https://elsewhere/x.pdf"
    assert doc["extension"][0]["url"] == f"{UP}/ext"  # a canonical, not a location
    assert doc["identifier"][0]["system"] == f"{UP}/ids"
