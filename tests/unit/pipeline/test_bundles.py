"""Which entries of a transaction-response are answered by their write outcome."""

from __future__ import annotations

from typing import Any

from middleware.pipeline.bundles import _write_responses


def _answer(*statuses: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": status}} for status in statuses],
    }


def test_only_the_entries_classified_as_writes_are_picked_by_position() -> None:
    """A ``POST Observation/_search`` entry is a search, not a create: selecting by HTTP method
    once picked it too, so a withheld search answer would have been replaced by an outcome."""
    found = _write_responses({0, 2}, 3, _answer("201 Created", "200 OK", "200 OK"))
    assert sorted(found) == [0, 2]


def test_failed_writes_and_mismatched_answers_pick_nothing() -> None:
    assert _write_responses({0}, 1, _answer("409 Conflict")) == {}
    # R4 http.html#trules: one response entry per request entry, else nothing is trusted
    assert _write_responses({0}, 2, _answer("201 Created")) == {}
    assert _write_responses({0}, 1, {"resourceType": "OperationOutcome"}) == {}
