"""Canonical Consent bytes, revocation, attempt evidence and answered resources
(consent.records)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.consent.records import (
    ATTEMPT_TYPE,
    LEDGER_EXTENSION,
    attempt_evidence,
    bundle,
    canonical_consent,
    consent_keys,
    instant,
    is_revocation,
    render_consent,
)
from middleware.fhir import jsoncodec
from middleware.storage.consent_base import ConsentRecord

CONSENT: dict[str, Any] = {
    "resourceType": "Consent",
    "id": "c1",
    "status": "active",
    "subject": {"reference": "Patient/p1"},
    "decision": "permit",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(min_size=1).filter(lambda k: k != "meta"), json_values))
def test_canonical_bytes_are_sorted_compact_utf8_json(resource: dict[str, Any]) -> None:
    """What a signer computes with json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False) is what is recorded, for any JSON without floats."""
    expected = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_consent(resource) == expected.encode()


@given(st.dictionaries(st.text(min_size=1), json_values))
def test_canonical_bytes_are_a_fixed_point(resource: dict[str, Any]) -> None:
    once = canonical_consent(resource)
    assert canonical_consent(jsoncodec.decode(once)) == once


def test_decimals_keep_their_written_precision() -> None:
    raw = jsoncodec.decode(b'{"b":5.40,"a":1e2}')
    assert canonical_consent(raw) == b'{"a":1e2,"b":5.40}'


@pytest.mark.parametrize(
    ("meta", "kept"),
    [
        ({"versionId": "3", "lastUpdated": "2024-01-01T00:00:00Z"}, None),
        ({"versionId": "3", "profile": ["p"]}, {"profile": ["p"]}),
        (
            {"extension": [{"url": LEDGER_EXTENSION, "valueUrl": "u"}, {"url": "x"}]},
            {"extension": [{"url": "x"}]},
        ),
        ({"extension": [{"url": LEDGER_EXTENSION, "valueUrl": "u"}]}, None),
    ],
    ids=["server-meta-only", "profile-kept", "our-extension-dropped", "nothing-left"],
)
def test_what_the_server_manages_is_not_in_the_canonical_bytes(
    meta: dict[str, Any], kept: dict[str, Any] | None
) -> None:
    decoded = jsoncodec.decode(canonical_consent({**CONSENT, "meta": meta}))
    assert decoded.get("meta") == kept


def test_a_consent_read_and_sent_back_has_the_same_bytes() -> None:
    data = canonical_consent(CONSENT)
    record = ConsentRecord(7, "c1", "Patient/p1", "active", False, 1_700_000_000_000_000, data, 2)
    answered = render_consent(record, "https://gw/ledger/receipt/7")
    assert answered["meta"]["versionId"] == "2"
    assert answered["meta"]["lastUpdated"] == "2023-11-14T22:13:20.000000Z"
    assert canonical_consent(answered) == data


@pytest.mark.parametrize(
    ("previous", "status", "revokes"),
    [
        (None, "inactive", False),
        ("active", "inactive", True),
        ("active", "rejected", True),
        ("active", "not-done", True),
        ("active", "entered-in-error", True),
        ("draft", "inactive", True),
        ("inactive", "rejected", False),
        ("inactive", "active", False),
        ("active", "active", False),
    ],
    ids=[
        "new-inactive",
        "active-inactive",
        "r4-rejected",
        "r5-not-done",
        "entered-in-error",
        "draft-inactive",
        "already-revoked",
        "reactivated",
        "unchanged",
    ],
)
def test_is_revocation(previous: str | None, status: str, revokes: bool) -> None:
    assert is_revocation(previous, status) is revokes


@pytest.mark.parametrize(
    ("resource", "keys"),
    [
        (CONSENT, ("c1", "active", "Patient/p1")),
        (
            {"id": "c", "status": "draft", "patient": {"reference": "http://x/fhir/Patient/9"}},
            ("c", "draft", "Patient/9"),
        ),
        ({"id": "c", "status": "active", "subject": {"reference": "Group/1"}}, None),
        ({"status": "active", "subject": {"reference": "Patient/1"}}, None),
        ([1, 2], None),
    ],
    ids=["r5", "r4-absolute", "not-a-patient", "no-id", "not-an-object"],
)
def test_consent_keys(resource: object, keys: tuple[str, str, str] | None) -> None:
    assert consent_keys(resource) == keys


def test_attempt_evidence_is_canonical_and_names_no_patient() -> None:
    data = attempt_evidence(
        operation="update",
        status=200,
        principal={"sub": "s", "iss": "i"},
        acting_as="patient",
        consent_id="c1",
        consent_entry=4,
        version=2,
    )
    assert data == canonical_consent(jsoncodec.decode(data))
    assert jsoncodec.decode(data) == {
        "type": ATTEMPT_TYPE,
        "operation": "update",
        "outcome": 200,
        "principal": {"sub": "s", "iss": "i"},
        "actingAs": "patient",
        "consent": "c1",
        "consentEntry": 4,
        "version": 2,
    }


def test_history_bundle_entries_say_how_each_version_came() -> None:
    data = canonical_consent(CONSENT)
    records = [ConsentRecord(i, "c1", "Patient/p1", "active", False, 0, data, i) for i in (2, 1)]
    made = bundle("history", [(r, "u") for r in records], base="https://gw/fhir", self_link="s")
    assert [e["request"]["method"] for e in made["entry"]] == ["PUT", "POST"]
    assert made["entry"][0]["response"]["etag"] == 'W/"2"'
    assert made["total"] == 2


def test_instant_is_utc_with_microseconds() -> None:
    assert instant(1) == "1970-01-01T00:00:00.000001Z"
