"""``rebuild`` (the work of ``consentry audit reindex``) over many batches and ranges: it gives
back the index the recorder wrote, writes the batches a one-at-a-time run writes, in order,
and stops at a write that fails.

The SQLite tests run on a real store filled as the recorder fills it; the batch and key
tests wrap the memory store to see each ``reindex`` and ``audit_keys_get`` call.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from msgspec.structs import replace

from middleware.audit.evidence import EVIDENCE_PURPOSE
from middleware.audit.paging import all_rows
from middleware.audit.progress import Progress
from middleware.audit.reindex import rebuild
from middleware.audit.row import AuditQuery, AuditRow
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import fill_audit_log, pseudonym_of

ORIGIN = "gw.example/fhir/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes(range(32)))
PATIENTS = [f"Patient/p{n}" for n in range(5)]
T0 = 1_767_225_600_000_000
COUNT = 230
BATCH = 7
CHUNK = 40  # entries per range: six ranges, the last one short


async def _fill(store: LogStore) -> None:
    await fill_audit_log(
        store, KEY, ORIGIN, count=COUNT, patients=PATIENTS, start_us=T0,
        batch=50, organizations=(None, "Organization/o1"),
    )  # fmt: skip


async def _rebuild(store: LogStore) -> dict[str, int]:
    with Progress("test", total=COUNT, show=False) as progress:
        return await rebuild(
            store, await store.size(), wrap=derive_box_key(KEY, EVIDENCE_PURPOSE),
            lookup=derive_box_key(KEY, LOOKUP_PURPOSE), batch=BATCH, progress=progress,
            chunk=CHUNK,
        )  # fmt: skip


async def _index(store: LogStore) -> list[AuditRow]:
    return await all_rows(store, AuditQuery(include_shredded=True, limit=100))


def test_a_cleared_index_is_rebuilt_as_the_recorder_wrote_it(tmp_path: Path) -> None:
    """Every row, every field, shredded rows included (one patient crypto-shredded), over
    33 batches and 6 ranges."""

    async def run() -> tuple[list[AuditRow], list[AuditRow], dict[str, int]]:
        store = await SqliteLogStore.open(tmp_path / "audit.db")
        try:
            await _fill(store)
            await store.shred(pseudonym_of(PATIENTS[1]))
            written = await _index(store)
            await store.clear_index()
            assert await _index(store) == []
            counts = await _rebuild(store)
            return written, await _index(store), counts
        finally:
            await store.close()

    written, rebuilt, counts = asyncio.run(run())
    assert len(written) == COUNT
    assert rebuilt == written
    shredded = sum(r.shredded for r in written)
    assert shredded == COUNT // len(PATIENTS)
    assert counts == {
        "rows": COUNT - shredded, "legacy": 0, "shredded": shredded, "unreadable": 0,
        "malformed": 0,
    }  # fmt: skip


def test_changed_rows_are_put_right_and_the_rest_kept(tmp_path: Path) -> None:
    """Rows changed since the recorder wrote them (one field each, in several batches) and a
    row deleted come back as written; the others were right already."""

    async def run() -> tuple[list[AuditRow], list[AuditRow]]:
        store = await SqliteLogStore.open(tmp_path / "audit.db")
        try:
            await _fill(store)
            written = await _index(store)
            await store.reindex(
                [
                    replace(written[3], agent="Practitioner/someone-else"),
                    replace(written[50], roles=("nurse",)),
                    replace(written[229], break_glass=True),
                ]
            )
            # A pseudonym the leaf does not state: SQLite's reindex refuses it, an edit not.
            with sqlite3.connect(tmp_path / "audit.db") as c:
                edit = "UPDATE consentry_audit_index SET pseudonym = NULL WHERE idx = ?"
                assert c.execute(edit, (written[51].index,)).rowcount == 1
            await _rebuild(store)
            return written, await _index(store)
        finally:
            await store.close()

    written, rebuilt = asyncio.run(run())
    assert rebuilt == written


class _Recording(MemoryLogStore):
    """The memory store, recording each ``reindex`` batch; the one numbered ``fail`` (from 1)
    raises instead."""

    def __init__(self, fail: int | None = None) -> None:
        super().__init__()
        self.batches: list[list[int]] = []
        self.fail = fail

    async def reindex(self, rows: Sequence[AuditRow]) -> None:
        self.batches.append([r.index for r in rows])
        if len(self.batches) == self.fail:
            raise RuntimeError("the disk is full")
        await super().reindex(rows)


def test_batches_are_those_of_a_sequential_run_in_order() -> None:
    """Every entry's row in ledger order, cut every BATCH rows, one ``reindex`` each."""

    async def run() -> _Recording:
        store = _Recording()
        await store.rebuild_state()
        await _fill(store)
        await _rebuild(store)
        return store

    store = asyncio.run(run())
    flat = [i for batch in store.batches for i in batch]
    assert flat == list(range(COUNT))
    assert [len(b) for b in store.batches] == [BATCH] * (COUNT // BATCH) + [COUNT % BATCH]


@pytest.mark.parametrize("fail", [1, 2, 33], ids=["first", "second", "last"])
def test_a_failed_write_stops_the_run_with_its_error(fail: int) -> None:
    """The write's error is raised by ``rebuild``; no batch is handed to the store after the
    one that failed."""

    async def run() -> _Recording:
        store = _Recording()
        await store.rebuild_state()
        await _fill(store)
        store.fail = fail
        with pytest.raises(RuntimeError, match="the disk is full"):
            await _rebuild(store)
        return store

    assert len(asyncio.run(run()).batches) == fail


class _Counting(MemoryLogStore):
    """The memory store, recording each batch of pseudonyms whose keys are read."""

    def __init__(self) -> None:
        super().__init__()
        self.keys_read: list[list[bytes]] = []

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        raise AssertionError("keys are read in batches (audit_keys_get)")

    async def audit_keys_get(self, pseudonyms: Sequence[bytes]) -> dict[bytes, bytes]:
        self.keys_read.append(list(pseudonyms))
        return await super().audit_keys_get(pseudonyms)


def test_each_patient_key_is_read_once_for_the_whole_run() -> None:
    """The keys are read ahead for the rest of the range at the first new patient, in one
    ``audit_keys_get``: each once, all of them at the first entry here (every patient has an
    entry in the first range), never one ``audit_key_get`` per patient."""

    async def run() -> _Counting:
        store = _Counting()
        await store.rebuild_state()
        await _fill(store)
        await _rebuild(store)
        return store

    store = asyncio.run(run())
    assert store.keys_read == [[pseudonym_of(p) for p in PATIENTS]]
