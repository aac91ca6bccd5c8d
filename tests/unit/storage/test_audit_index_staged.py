"""Rows an earlier version left staged (``consentry_audit_staged``) are moved into the indexed
tables when a writer opens the file (``audit_index_staged.adopt``): found by every search as
if written directly (same rows, same terms), shredded if their patient was shredded or their
evidence deleted meanwhile, dropped for an indexed twin; the emptied table stays for a
process of the earlier version still running on the file.

A file an earlier version staged rows in is made here as that version left it: rows appended
(so their leaves, evidence and keys are real), then their index rows and terms moved into the
staging table by hand. Expected rows are the contract suite's (``test_audit_index``) and
``AuditRow.shred``'s; expected terms are those a direct write files."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage import audit_index_sqlite
from middleware.storage.audit_index_match import select_rows
from middleware.storage.audit_index_staged import STAGED
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import SIGN
from tests.contract.test_audit_index import (
    EXPECTED,
    PA,
    PB,
    ROWS,
    SPECS,
    V3,
    audit_entry,
    make_row,
)


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _terms(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as c:
        return sorted(c.execute("SELECT field, term, recorded_us, idx FROM consentry_audit_terms"))


def _stage(path: Path, since: int) -> None:
    """Leave the index rows from ``since`` on as the earlier version left them staged."""
    cols = audit_index_sqlite.COLUMNS
    with sqlite3.connect(path) as c:
        c.execute(f"CREATE TABLE {STAGED} ({audit_index_sqlite.ROW_COLUMNS_DDL})")
        c.execute(
            f"INSERT INTO {STAGED} ({cols}) SELECT {cols} FROM consentry_audit_index "
            "WHERE idx >= ?",
            (since,),
        )
        c.execute("DELETE FROM consentry_audit_terms WHERE idx >= ?", (since,))
        c.execute("DELETE FROM consentry_audit_index WHERE idx >= ?", (since,))


async def _written(path: Path, rows: list[AuditRow], *, staged_from: int) -> None:
    store = await SqliteLogStore.open(path)
    try:
        for start in range(0, len(rows), 16):
            await store.append([audit_entry(r) for r in rows[start : start + 16]], sign=SIGN)
    finally:
        await store.close()
    _stage(path, staged_from)


def _random_rows(rng: random.Random, count: int) -> list[AuditRow]:
    pick = rng.choice
    rows = []
    for n in range(count):
        patient, pseudonym = pick([("Patient/1", PA), ("Patient/2", PB), (None, None)])
        spec = pick(SPECS)._replace(
            t=1000 + n * 10 - rng.randrange(0, 3) * 10,  # ties, and times out of index order
            patient=patient,
            pseudonym=pseudonym,
            agent=pick(["Practitioner/a", "Practitioner/b", None]),
            purposes=tuple(rng.sample([f"{V3}|TREAT", "urn:o|TREAT", f"{V3}|HPAYMT"], k=n % 3)),
            resource_types=tuple(rng.sample(["Observation", "Condition", "Patient"], k=n % 4)),
            entities=tuple(rng.sample(["Patient/1", "Condition/3", "Observation/1"], k=n % 3)),
            break_glass=rng.random() < 0.3,
        )
        rows.append(make_row(spec, index=n))
    return rows


@pytest.mark.parametrize("staged_from", [0, 100], ids=["all-staged", "half-staged"])
async def test_staged_rows_are_indexed_on_open_as_a_direct_write_indexes_them(
    tmp_path: Path, staged_from: int
) -> None:
    """After the open, the rows and terms equal those of a file written directly, every
    search answers as the rules do, and the staging table is empty but still there."""
    rows = _random_rows(random.Random(5), 200)
    direct, upgraded = tmp_path / "direct.db", tmp_path / "upgraded.db"
    await _written(direct, rows, staged_from=len(rows))
    await _written(upgraded, rows, staged_from=staged_from)
    assert _count(upgraded, STAGED) == len(rows) - staged_from
    store = await SqliteLogStore.open(upgraded)
    try:
        assert _count(upgraded, STAGED) == 0
        assert _terms(upgraded) == _terms(direct) != []
        for query in (
            AuditQuery(limit=500),
            AuditQuery(purpose="TREAT", limit=500),
            AuditQuery(entity="Condition/3", limit=500),
            AuditQuery(resource_type="Patient", sort="-date", limit=500),
            AuditQuery(patient="Patient/2", limit=500),
        ):
            assert await store.audit_rows(query) == select_rows(rows, query), query
    finally:
        await store.close()
    with sqlite3.connect(upgraded) as c:  # kept for an earlier version's process
        assert c.execute(f"SELECT 1 FROM sqlite_master WHERE name = '{STAGED}'").fetchone()


async def test_staged_rows_of_a_shredded_patient_or_deleted_evidence_move_shredded(
    tmp_path: Path,
) -> None:
    """A process that saw the indexed tables alone shredded ``PA`` (tombstone, key gone) and
    deleted entry 2's evidence: their staged rows move in ``AuditRow.shred``'s form, and
    the file keeps none of their PHI."""
    path = tmp_path / "log.db"
    await _written(path, ROWS, staged_from=0)
    with sqlite3.connect(path) as c:
        c.execute("DELETE FROM consentry_audit_keys WHERE pseudonym = ?", (PA,))
        c.execute("INSERT INTO consentry_audit_shredded (pseudonym) VALUES (?)", (PA,))
        c.execute("DELETE FROM consentry_ledger_evidence WHERE idx = 2")
    store = await SqliteLogStore.open(path)
    try:
        shredded = {0, 1, 2, 4}
        assert [await store.audit_row(n) for n in range(6)] == [
            r.shred() if n in shredded else r for n, r in enumerate(EXPECTED)
        ]
        assert await store.audit_rows(AuditQuery(patient="Patient/1")) == []
        data = path.read_bytes() + path.with_name("log.db-wal").read_bytes()
        assert b"Condition/3" not in data  # row 1's alone (of the shredded patient)
        assert b"Condition/9" not in data  # row 2's alone (its evidence deleted)
    finally:
        await store.close()


async def test_an_indexed_twin_of_a_staged_row_is_kept(tmp_path: Path) -> None:
    """A row a later reindex wrote for an index that is also staged wins; no row shows
    twice."""
    path = tmp_path / "log.db"
    await _written(path, ROWS, staged_from=0)
    with sqlite3.connect(path) as c:  # the later version of row 3, written directly
        c.execute(
            f"INSERT INTO consentry_audit_index ({audit_index_sqlite.COLUMNS}) "
            f"SELECT {audit_index_sqlite.COLUMNS} FROM {STAGED} WHERE idx = 3"
        )
        c.execute("UPDATE consentry_audit_index SET request_id = 'later' WHERE idx = 3")
    store = await SqliteLogStore.open(path)
    try:
        got = await store.audit_rows(AuditQuery())
        assert [r.index for r in got] == [0, 1, 2, 3, 4, 5]
        assert got[3].request_id == "later" != EXPECTED[3].request_id
        assert got[:3] + got[4:] == EXPECTED[:3] + EXPECTED[4:]
    finally:
        await store.close()


async def test_a_file_without_staged_rows_is_not_written_on_open(tmp_path: Path) -> None:
    """The open of a file without the table (every file this version made) or with an empty
    one takes no write lock for it: the WAL does not grow."""
    path = tmp_path / "log.db"
    await _written(path, ROWS, staged_from=len(ROWS))
    wal = path.with_name("log.db-wal")
    before = wal.stat().st_size if wal.exists() else 0
    store = await SqliteLogStore.open(path)
    try:
        assert await store.audit_rows(AuditQuery()) == EXPECTED
        assert (wal.stat().st_size if wal.exists() else 0) == before
    finally:
        await store.close()
