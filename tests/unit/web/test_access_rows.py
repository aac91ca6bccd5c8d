"""Rows of "who looked at my record" from BALP AuditEvents."""

from __future__ import annotations

from typing import Any

from middleware.audit.searchset import BREAK_GLASS_TAG
from middleware.web.access_rows import rows

REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def event(index: int, n: int, **fields: Any) -> dict[str, Any]:
    return {"resource": {"resourceType": "AuditEvent", "id": f"{index}-{n}", **fields}}


def agent(who: str, *purposes: str) -> dict[str, Any]:
    out: dict[str, Any] = {"who": {"reference": who}, "requestor": True}
    if purposes:
        out["purposeOfUse"] = [{"coding": [{"system": REASON, "code": p}]} for p in purposes]
    return out


def rest(
    index: int, who: str, interaction: str = "read", outcome: str = "0", *purposes: str
) -> dict[str, Any]:
    return event(
        index,
        1,
        type={"code": "rest"},
        subtype=[{"code": interaction}],
        recorded="2026-12-07T05:10:35.463Z",
        outcome=outcome,
        agent=[
            {"who": {"identifier": {"value": "app"}}, "requestor": False},
            agent(who, *purposes),
        ],
        entity=[{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Observation/o1"}}],
    )


def authz(index: int, who: str, desc: str) -> dict[str, Any]:
    return event(
        index,
        0,
        type={"code": "110113"},
        subtype=[{"code": "AuthZ-Consent"}],
        outcomeDesc=desc,
        agent=[agent(who)],
    )


def test_one_row_per_entry_in_words() -> None:
    bundle = {"entry": [authz(7, "Practitioner/dr", "permit"), rest(7, "Practitioner/dr")]}
    (row,) = rows(bundle, "Patient/p1")
    assert row.index == 7
    assert row.who == "Practitioner/dr"
    assert row.did == "Looked at"
    assert row.what == "Observation/o1"
    assert row.when == "2026-12-07 05:10"
    assert row.allowed
    assert not row.break_glass


def test_a_consent_denial_is_stopped_even_when_the_exchange_answered() -> None:
    bundle = {
        "entry": [authz(8, "Practitioner/dr", "deny"), rest(8, "Practitioner/dr", "read", "0")]
    }
    (row,) = rows(bundle, "Patient/p1")
    assert not row.allowed
    assert row.result == "Stopped"


def test_failed_outcome_is_stopped() -> None:
    (row,) = rows({"entry": [rest(9, "Practitioner/dr", "read", "4")]}, "Patient/p1")
    assert not row.allowed


def test_break_the_glass_by_purpose_or_override_event() -> None:
    by_purpose = rows({"entry": [rest(1, "Practitioner/er", "read", "0", "BTG")]}, "Patient/p1")
    override = rows(
        {
            "entry": [
                event(
                    2,
                    0,
                    type={"code": "110113"},
                    subtype=[{"code": "110127"}],
                    agent=[agent("Practitioner/er")],
                )
            ]
        },
        "Patient/p1",
    )
    assert by_purpose[0].break_glass
    assert by_purpose[0].why == "emergencies (break the glass)"
    assert override[0].break_glass


def test_own_requests_are_you() -> None:
    (row,) = rows({"entry": [rest(3, "Patient/p1", "search-type")]}, "Patient/p1")
    assert row.who == "You"
    assert row.did == "Searched"


def test_junk_is_skipped_not_raised() -> None:
    junk = {
        "entry": [
            1,
            {"resource": "x"},
            {"resource": {"resourceType": "Patient"}},
            event(4, 0, agent="x", subtype=None),
        ]
    }
    (row,) = rows(junk, "Patient/p1")
    assert row.who == "Someone unknown"
    assert rows(None, "Patient/p1") == []
    assert rows({"entry": None}, "Patient/p1") == []


def test_a_denial_overridden_by_break_the_glass_is_allowed_and_marked() -> None:
    """The entry's decision event says deny and its RESTful event success; the served events
    carry the break-the-glass tag (audit.searchset): an emergency access, not a refusal."""
    tag = {"meta": {"tag": [BREAK_GLASS_TAG]}}
    overridden = authz(8, "Practitioner/er", "deny")
    overridden["resource"].update(tag)
    read = rest(8, "Practitioner/er", "read", "0")
    read["resource"].update(tag)
    (row,) = rows({"entry": [overridden, read]}, "Patient/p1")
    assert row.allowed
    assert row.break_glass
