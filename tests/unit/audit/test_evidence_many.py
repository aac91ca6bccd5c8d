"""EvidenceReader's batched reads (a bulk export's page) give what its one-entry reads give,
with one key read per patient per call."""

from __future__ import annotations

import pytest

from middleware.audit.evidence import NO_PATIENT, EvidenceReader, PatientKeys
from middleware.audit.recorder import AuditRecorder
from middleware.fhir.jsoncodec import encode_canonical
from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import new_box_key
from tests.unit.audit.test_evidence import Store, Table
from tests.unit.audit.test_recorder import GATEWAY, PERMIT, WHEN, Pseudonyms, exchange


class CountingStore(Store):
    """The test store, counting the reads a reader makes."""

    def __init__(self, table: Table) -> None:
        super().__init__(table)
        self.reads = {"leaves": 0, "evidence": 0, "keys": 0}

    async def leaves(self, start: int, end: int) -> list[bytes]:
        self.reads["leaves"] += 1
        return await super().leaves(start, end)

    async def evidence(self, index: int) -> Evidence | None:
        self.reads["evidence"] += 1
        return await super().evidence(index)

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        self.reads["keys"] += 1
        return await super().audit_key_get(pseudonym)


class RangeStore(CountingStore):
    """A store that also reads evidence in ranges (as the ledger stores do)."""

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        self.reads["ranges"] = self.reads.get("ranges", 0) + 1
        found = {i: self.evidence_[i] for i in range(start, min(end, len(self.evidence_)))}
        return {i: e for i, e in found.items() if e is not None}


async def _log(
    kind: type[CountingStore] = CountingStore,
) -> tuple[CountingStore, Table, bytes, list[int]]:
    """Sealed entries of two patients and of none, one legacy Bundle, one consent."""
    table, wrap = Table(), new_box_key()
    store = kind(table)
    rec = AuditRecorder(
        store, Pseudonyms(), gateway=GATEWAY, wall_clock=WHEN.timestamp,
        keys=PatientKeys(table, wrap),
    )  # fmt: skip
    indexes: list[int] = []
    for patient in ("Patient/p1", "Patient/p2", "Patient/p1"):
        shown = exchange(decisions={patient: PERMIT}, released=frozenset({patient}))
        indexes += await rec.record(shown, "exchange")
    indexes += await rec.record(exchange(identity=None, status=401), "exchange")
    event = {"resourceType": "AuditEvent", "action": "R"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": event}]}
    indexes.append(
        store.add(NewEntry.create(EntryKind.DISCLOSURE, encode_canonical(bundle), recorded_us=1))
    )
    indexes.append(
        store.add(NewEntry.create(EntryKind.CONSENT, b'{"resourceType":"Consent"}', recorded_us=2))
    )
    return store, table, wrap, indexes


@pytest.mark.parametrize("ranges", [False, True], ids=["one-read-each", "ranges"])
@pytest.mark.parametrize("shred", [False, True], ids=["all-keys", "one-patient-shredded"])
async def test_many_at_once_read_as_one_at_a_time(shred: bool, ranges: bool) -> None:
    store, table, wrap, indexes = await _log(RangeStore if ranges else CountingStore)
    if shred:
        first = next(p for p in table.wrapped if p != NO_PATIENT)
        del table.wrapped[first]
    reader = EvidenceReader(store, wrap)
    asked = [*indexes, 99, indexes[0]]  # past the log's end, and one asked twice
    one_by_one = [await reader.events(i) for i in asked]
    assert await reader.events_many(asked) == one_by_one
    assert await reader.openings(asked) == [await reader.opening(i) for i in asked]
    assert any(events is None for events in one_by_one)  # the consent, at least
    assert sum(events is not None for events in one_by_one) >= (3 if shred else 5)


async def test_a_page_reads_each_patient_key_once() -> None:
    store, table, wrap, indexes = await _log()
    sealed = indexes[:-2]
    for reads in store.reads:
        store.reads[reads] = 0
    await EvidenceReader(store, wrap).openings(sealed)
    patients = len(table.wrapped)
    assert store.reads == {"leaves": 1, "evidence": len(sealed), "keys": patients}


async def test_no_entries_read_nothing() -> None:
    store, _, wrap, _ = await _log()
    for reads in store.reads:
        store.reads[reads] = 0
    assert await EvidenceReader(store, wrap).events_many([]) == []
    assert set(store.reads.values()) == {0}


async def test_a_store_with_ranges_reads_a_page_s_evidence_in_one_read() -> None:
    store, _, wrap, indexes = await _log(RangeStore)
    store.reads = {"leaves": 0, "evidence": 0, "keys": 0}
    await EvidenceReader(store, wrap).openings(indexes)
    assert (store.reads["evidence"], store.reads["ranges"], store.reads["leaves"]) == (0, 1, 1)
