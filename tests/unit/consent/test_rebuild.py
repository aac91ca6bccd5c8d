"""Rebuilding the consent index and pseudonyms from the ledger (consent.rebuild)."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent.rebuild import Outcome, rebuild_from_ledger, record_entry
from middleware.consent.records import canonical_consent
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.storage.consent_base import PatientMark
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.helpers import PSEUDONYMS, SIGN, entry
from tests.unit.consent.builders import consent

P1, P2 = PSEUDONYMS[0], PSEUDONYMS[1]


def change(body: dict[str, Any], pseudonym: bytes, *, revoke: bool = False) -> NewEntry:
    kind = EntryKind.CONSENT_REVOKE if revoke else EntryKind.CONSENT
    return NewEntry.create(kind, canonical_consent(body), recorded_us=5, pseudonym=pseudonym)


async def ledger(*entries: NewEntry) -> MemoryLogStore:
    log = MemoryLogStore()
    await log.append(list(entries), sign=SIGN)
    return log


async def test_every_consent_entry_is_recorded_with_its_pseudonym() -> None:
    a = consent("R5", "permit", consent_id="a")
    log = await ledger(
        entry(0),
        change(a, P1),
        entry(2, pseudonym=P1),
        change({**a, "status": "inactive"}, P1, revoke=True),
        change(consent("R4", "deny", consent_id="b", patient="Patient/p2"), P2),
    )
    store = MemoryConsentStore()
    report = await rebuild_from_ledger(log, store)
    assert (report.start, report.end, report.consents, report.skipped) == (0, 5, 3, ())
    assert [(r.ledger_index, r.version, r.revoked) for r in await store.history("a")] == [
        (1, 1, False),
        (3, 2, True),
    ]
    assert await store.pseudonym("Patient/p1") == P1
    assert await store.pseudonym("Patient/p2") == P2
    assert await store.mark("Patient/p2") == PatientMark(1, 4)
    assert await store.scanned() == 5
    # Again, from the scanned size: nothing to do, nothing changes.
    again = await rebuild_from_ledger(log, store)
    assert (again.start, again.end, again.consents) == (5, 5, 0)


async def test_a_gap_left_by_a_crash_is_closed() -> None:
    """The process died after the ledger append and before the index row: the next start
    records it, and leaves rows already there untouched."""
    log = await ledger(change(consent("R5", "permit", consent_id="a"), P1))
    store = MemoryConsentStore()
    await rebuild_from_ledger(log, store)
    await log.append([change(consent("R5", "deny", consent_id="a"), P1)], sign=SIGN)
    report = await rebuild_from_ledger(log, store)
    assert report.consents == 1
    assert [r.version for r in await store.history("a")] == [1, 2]


async def test_shredded_or_unreadable_evidence_is_skipped_and_reported() -> None:
    log = await ledger(
        change(consent("R5", "permit", consent_id="a"), P1),
        NewEntry.create(EntryKind.CONSENT, b"not json", recorded_us=1, pseudonym=P1),
        NewEntry.create(EntryKind.CONSENT, b'{"id":"x"}', recorded_us=1, pseudonym=P1),
    )
    del log.log.evidence[0]  # crypto-shredded
    report = await rebuild_from_ledger(log, MemoryConsentStore())
    assert report.skipped == (0, 1, 2)


async def test_a_stored_pseudonym_is_kept() -> None:
    log = await ledger(change(consent("R5", "permit", consent_id="a"), P2))
    store = MemoryConsentStore()
    await store.pseudonym_for("Patient/p1", P1)
    await rebuild_from_ledger(log, store, start=0)
    assert await store.pseudonym("Patient/p1") == P1


async def test_an_entry_whose_pseudonym_is_not_its_patients_is_refused() -> None:
    """An entry whose leaf names another patient's pseudonym than its evidence does (a forged
    or mixed-up entry: one planted through the audit outbox would be one) was logged and
    recorded anyway, so its consent was enforced for the patient its evidence names. It is
    refused: reported skipped, nothing recorded for that patient."""
    log = await ledger(change(consent("R5", "deny", consent_id="a"), P2))
    store = MemoryConsentStore()
    await store.pseudonym_for("Patient/p1", P1)
    report = await rebuild_from_ledger(log, store, start=0)
    assert report.skipped == (0,)
    assert await store.history("a") == []
    assert await store.pseudonym("Patient/p1") == P1


async def test_entries_a_shred_emptied_are_reported_shredded_not_skipped() -> None:
    """A rebuild after ``consentry audit shred``: the patient's consent entries have no
    evidence and their chain records the shred after them: reported ``shredded``, not
    ``skipped``, nothing recorded, nothing fails; the other patient's consent is recorded."""
    shred = b'{"operator":"dpo","reason":"r","type":"consentry/audit-shred"}'
    log = await ledger(
        change(consent("R5", "permit", consent_id="a"), P1),
        change(consent("R5", "deny", consent_id="b", patient="Patient/p2"), P2),
        change(consent("R5", "deny", consent_id="a"), P1),
        NewEntry.create(EntryKind.ADMIN, shred, recorded_us=6, pseudonym=P1),
    )
    del log.log.evidence[0], log.log.evidence[2]
    store = MemoryConsentStore()
    report = await rebuild_from_ledger(log, store)
    assert (report.consents, report.shredded, report.skipped) == (3, (0, 2), ())
    assert await store.history("a") == []
    assert [r.ledger_index for r in await store.history("b")] == [1]


# What record_entry makes of one entry: its kind and evidence (decoded once; the marker test
# runs on that decoded value).
_MARKER = b'{"operator":"dpo","reason":"r","type":"consentry/audit-shred"}'
_REVOKED = canonical_consent({**consent("R5", "permit", consent_id="a"), "status": "inactive"})
_TYPED = canonical_consent(
    {**consent("R5", "permit", consent_id="a"), "type": "consentry/audit-shred"}
)


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        # the shred's marker: a consent-revoke whose evidence is the shred's record
        (EntryKind.CONSENT_REVOKE, _MARKER, Outcome.SHREDDED),
        # the same record on a consent entry is no marker: it names no consent
        (EntryKind.CONSENT, _MARKER, Outcome.UNRECORDABLE),
        # a real revocation, and one whose Consent carries the shred's type: recorded
        (EntryKind.CONSENT_REVOKE, _REVOKED, Outcome.RECORDED),
        (EntryKind.CONSENT_REVOKE, _TYPED, Outcome.RECORDED),
        # unreadable evidence on a revoke: neither a marker nor a consent
        (EntryKind.CONSENT_REVOKE, b"not json", Outcome.UNRECORDABLE),
        (EntryKind.CONSENT_REVOKE, b"[]", Outcome.UNRECORDABLE),
    ],
    ids=["marker", "marker-on-consent", "revoke", "revoke-typed", "revoke-garbage", "revoke-array"],
)
async def test_record_entry_tells_a_marker_from_a_consent(
    kind: EntryKind, data: bytes, expected: Outcome
) -> None:
    log = await ledger(NewEntry.create(kind, data, recorded_us=5, pseudonym=P1))
    store = MemoryConsentStore()
    assert await record_entry(log, store, 0) is expected
    assert [r.ledger_index for r in await store.history("a")] == (
        [0] if expected is Outcome.RECORDED else []
    )
