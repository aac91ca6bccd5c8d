"""The in-place walk toward the client (references_owned.py) gives what the copy-on-write one
gives: the same tree, or the same error, on random trees of the elements the walk reads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings

from middleware.fhir import jsoncodec
from middleware.mapping.ids import OpaqueResolver, UntranslatableId
from middleware.mapping.references import ReferenceRewriter
from tests.unit.mapping.test_references import (
    _RESOURCES,
    REWRITER,
    UP,
    entry_links,
    trees,
)


def in_place(document: Any) -> Any:
    """What the in-place walk leaves in a copy of ``document`` and whether it said it changed,
    or the error it raised."""
    tree = copy.deepcopy(document)
    try:
        changed = REWRITER.to_client_in_place(tree)
    except Exception as exc:  # noqa: BLE001 - the same error, or a difference
        return type(exc), str(exc)
    return tree, changed


def copied(document: Any) -> Any:
    try:
        out = REWRITER.to_client(document)
    except Exception as exc:  # noqa: BLE001
        return type(exc), str(exc)
    return out, out is not document


@settings(max_examples=400, deadline=None)
@given(document=trees)
def test_in_place_gives_what_the_copying_walk_gives(document: Any) -> None:
    assert in_place(document) == copied(document)


@pytest.mark.parametrize(
    "document", _RESOURCES, ids=["contained", "anchor", "transaction", "searchset"]
)
def test_these_documents_walk_in_place_as_they_are_copied(document: Any) -> None:
    assert in_place(document) == copied(document)


@pytest.mark.parametrize("depth", [254, 255, 256, 257, 258])
def test_the_depth_limit_is_the_same(depth: int) -> None:
    leaves: tuple[Any, ...] = ("x", {"reference": "Patient/1"}, [])
    for leaf in leaves:
        document: Any = leaf
        for _ in range(depth):
            document = [document]
        assert in_place(document) == copied(document)
    entry: Any = {"resourceType": "Bundle", "entry": [{"resource": "x"}]}
    for _ in range(depth):
        entry = [entry]
    assert in_place(entry) == copied(entry)


def test_a_searchset_with_opaque_ids_is_the_same_bytes() -> None:
    """The real resolver, the shape of the benchmark's answer."""
    rewriter = ReferenceRewriter(
        OpaqueResolver(b"k" * 32, ["hospital-a"]), "hospital-a", bases=[UP]
    )
    entries = [
        {
            "fullUrl": f"{UP}/Observation/o{i}",
            "resource": {
                "resourceType": "Observation",
                "id": f"o{i}",
                "subject": {"reference": f"Patient/p{i % 3}"},
                "extension": [{"url": "x", "valueReference": {"reference": f"{UP}/Patient/p1"}}],
            },
        }
        for i in range(20)
    ]
    document = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    tree = copy.deepcopy(document)
    assert rewriter.to_client_in_place(tree)
    assert jsoncodec.encode(tree) == jsoncodec.encode(rewriter.to_client(document))


def test_every_element_of_an_entry_is_rewritten_in_place() -> None:
    """Entry links, extensions, modifier extensions, search and request extensions, and the
    Bundle's own link extensions (test_references.entry_links): the client's ids, in place."""
    tree = entry_links("1", "9")
    assert REWRITER.to_client_in_place(tree) is True
    assert tree == entry_links("c-1", "c-obs-9")
    assert in_place(entry_links("1", "9")) == copied(entry_links("1", "9"))


def test_an_untranslatable_id_in_an_entry_extension_refuses_the_answer_in_place() -> None:
    tree = entry_links("1", "9")
    tree["entry"][0]["extension"][0]["valueReference"]["reference"] = "Patient/bad"
    with pytest.raises(UntranslatableId):
        REWRITER.to_client_in_place(tree)
