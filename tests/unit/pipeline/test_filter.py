"""Every place a resource can sit in an answer is filtered; totals never survive."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.pipeline.filter import filter_answer


def obs(patient: str, oid: str = "o") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": jsoncodec.decode(b"5.40")},
    }


def deny_patient(patient: str) -> Any:
    def allowed(resource: Mapping[str, Any]) -> bool:
        text = jsoncodec.encode(resource)
        return f"Patient/{patient}".encode() not in text

    return allowed


DENY_B = deny_patient("b")


def bundle(kind: str, *resources: dict[str, Any], total: int | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if total is not None:
        doc["total"] = total
    return doc


def test_plain_resource_released_or_withheld() -> None:
    assert filter_answer(obs("a"), DENY_B)[0] == obs("a")
    released, stats = filter_answer(obs("b"), DENY_B)
    assert released is None
    assert (stats.kept, stats.removed) == (0, 1)


def test_searchset_drops_denied_entries_and_its_total() -> None:
    released, stats = filter_answer(
        bundle("searchset", obs("a", "1"), obs("b", "2"), total=2), DENY_B
    )
    assert released is not None
    assert "total" not in released
    assert [e["resource"]["id"] for e in released["entry"]] == ["1"]
    assert (stats.kept, stats.removed) == (1, 1)


def test_contained_resources_are_judged_with_their_container() -> None:
    container = obs("a", "1")
    container["contained"] = [obs("b", "inner")]
    released, _ = filter_answer(bundle("searchset", container), DENY_B)
    assert released is not None
    assert "entry" not in released


def test_nested_bundles_are_filtered_recursively() -> None:
    inner = bundle("collection", obs("a", "1"), obs("b", "2"), total=2)
    released, _ = filter_answer(bundle("searchset", inner, total=1), DENY_B)
    assert released is not None
    nested = released["entry"][0]["resource"]
    assert [e["resource"]["id"] for e in nested["entry"]] == ["1"]
    assert "total" not in nested


def test_history_delete_entries_without_resource_are_withheld() -> None:
    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"request": {"method": "DELETE", "url": "Patient/b"}, "response": {"status": "204"}},
            {"resource": obs("a", "1"), "request": {"method": "PUT", "url": "Observation/1"}},
        ],
    }
    released, stats = filter_answer(history, DENY_B)
    assert released is not None
    assert len(released["entry"]) == 1
    assert stats.removed == 1


@pytest.mark.parametrize("kind", ["batch-response", "transaction-response"])
def test_batch_answers_keep_their_shape_and_hide_denied_entries_as_not_found(kind: str) -> None:
    answer = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": obs("b", "2"), "response": {"status": "200 OK", "etag": 'W/"1"'}},
            {"response": {"status": "201 Created", "location": "Observation/9/_history/1"}},
            {"resource": obs("a", "1"), "response": {"status": "200 OK"}},
        ],
    }
    released, _ = filter_answer(answer, DENY_B)
    assert released is not None
    first, second, third = released["entry"]
    assert first == {
        "response": {
            "status": "404 Not Found",
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found", "diagnostics": "not found"}],
            },
        }
    }
    assert second["response"]["location"] == "Observation/9/_history/1"
    assert third["resource"]["id"] == "1"


@pytest.mark.parametrize("kind", ["document", "message"])
def test_documents_and_messages_are_all_or_nothing(kind: str) -> None:
    assert filter_answer(bundle(kind, obs("a"), obs("b")), DENY_B)[0] is None
    assert filter_answer(bundle(kind, obs("a"), obs("c")), DENY_B)[0] is not None


@pytest.mark.parametrize(
    "document",
    [None, [], "text", {"no": "type"}, {"resourceType": 5}],
    ids=["null", "list", "string", "no-type", "bad-type"],
)
def test_unreadable_answers_are_withheld(document: Any) -> None:
    assert filter_answer(document, lambda _r: True)[0] is None


def test_malformed_entries_are_withheld() -> None:
    doc = {"resourceType": "Bundle", "type": "searchset", "entry": ["x", {"resource": obs("a")}]}
    released, stats = filter_answer(doc, DENY_B)
    assert released is not None
    assert len(released["entry"]) == 1
    assert stats.removed == 1


def test_depth_is_bounded() -> None:
    doc: dict[str, Any] = obs("a")
    for _ in range(40):
        doc = bundle("collection", doc)
    released, _ = filter_answer(doc, DENY_B)
    assert released is not None
    depth = 0
    node: Any = released
    while isinstance(node, dict) and node.get("entry"):
        node = node["entry"][0]["resource"]
        depth += 1
    assert depth < 20


def test_decimals_survive_filtering() -> None:
    released, _ = filter_answer(bundle("searchset", obs("a")), DENY_B)
    assert b'"value":5.40' in jsoncodec.encode(released)


patients = st.sampled_from(["a", "b", "c"])
leaf = st.builds(obs, patients, st.text("xyz", min_size=1, max_size=3))
documents = st.recursive(
    leaf,
    lambda inner: st.builds(
        lambda kind, items: bundle(kind, *items),
        st.sampled_from(["searchset", "collection", "history", "batch-response", "document"]),
        st.lists(inner, max_size=4),
    ),
    max_leaves=12,
)


@given(documents)
def test_a_denied_resource_never_appears_anywhere_in_a_filtered_answer(doc: dict[str, Any]) -> None:
    released, _ = filter_answer(doc, DENY_B)
    assert b"Patient/b" not in jsoncodec.encode(released)
    assert b'"total"' not in jsoncodec.encode(released)


# What the filter counts (audit and metrics read these). Found unpinned by mutation testing
# (scripts/mutation.sh filter): each way a resource is withheld counts once, every time.
# (id, entries of a searchset, kept, removed)
COUNTS: list[tuple[str, list[Any], int, int]] = [
    ("denied", [{"resource": obs("b", "1")}, {"resource": obs("b", "2")}], 0, 2),
    ("kept", [{"resource": obs("a", "1")}, {"resource": obs("a", "2")}], 2, 0),
    ("not-objects", [5, "entry", {"resource": obs("a")}], 1, 2),
    ("no-resource", [{"fullUrl": "x"}, {"request": {"url": "Observation/1"}}], 0, 2),
    ("unreadable-resources", [{"resource": 5}, {"resource": {"id": "x"}}], 0, 2),
    (
        "bundles-with-bad-entries",
        [
            {"resource": {"resourceType": "Bundle", "type": "collection", "entry": 5}},
            {"resource": {"resourceType": "Bundle", "type": "collection", "entry": "x"}},
        ],
        0,
        2,
    ),
]


@pytest.mark.parametrize(
    ("entries", "kept", "removed"), [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS]
)
def test_each_withheld_resource_is_counted_once(
    entries: list[Any], kept: int, removed: int
) -> None:
    doc = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    _, stats = filter_answer(doc, DENY_B)
    assert (stats.kept, stats.removed) == (kept, removed)


def _nested(levels: int) -> dict[str, Any]:
    node = obs("a")
    for _ in range(levels):
        node = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": node}]}
    return node


def test_sixteen_nested_bundles_are_read_and_a_seventeenth_is_not() -> None:
    released, stats = filter_answer(_nested(16), DENY_B)
    assert (stats.kept, stats.removed) == (1, 0)
    inner = released
    for _ in range(16):
        assert inner is not None
        assert list(inner["entry"][0]) == ["resource"]  # nothing added beside it
        inner = inner["entry"][0]["resource"]
    assert inner == obs("a")
    _, deeper = filter_answer(_nested(17), DENY_B)
    assert (deeper.kept, deeper.removed) == (0, 1)
    two = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _nested(16)}, {"resource": _nested(16)}],
    }
    _, both = filter_answer(two, DENY_B)
    assert (both.kept, both.removed) == (0, 2)


@pytest.mark.parametrize("kind", ["batch-response", "transaction-response"])
def test_batch_answers_keep_no_upstream_free_text(kind: str) -> None:
    # HAPI words every entry's outcome with the upstream's own id of the record.
    said = {
        "severity": "information",
        "code": "informational",
        "diagnostics": 'Successfully updated resource "Observation/o-1/_history/2".',
        "details": {"coding": [{"code": "ok"}], "text": "Observation/o-1"},
        "expression": ["Observation.status"],
    }
    outcome = {"resourceType": "OperationOutcome", "issue": [said]}
    bundle = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": obs("a"), "response": {"status": "200 OK", "outcome": outcome}},
            {"response": {"status": "204 No Content", "outcome": outcome}},
            {"response": {"status": "200 OK", "outcome": "Observation/o-1"}},
            {"resource": outcome, "response": {"status": "201 Created"}},
            {"response": {"status": "200 OK", "outcome": {"resourceType": "OperationOutcome"}}},
        ],
    }
    released, _ = filter_answer(jsoncodec.decode(jsoncodec.encode(bundle)), deny_patient("b"))
    assert released is not None
    assert b"o-1" not in jsoncodec.encode(released)
    structured = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "expression": ["Observation.status"],
                "details": {"coding": [{"code": "ok"}]},
            }
        ],
    }
    entries = released["entry"]
    assert entries[0]["response"]["outcome"] == structured
    assert entries[1]["response"]["outcome"] == structured
    assert entries[2]["response"] == {"status": "200 OK"}
    assert entries[3]["resource"] == structured
    assert entries[4]["response"] == {"status": "200 OK"}
