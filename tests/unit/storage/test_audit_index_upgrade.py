"""A file an earlier version wrote, with its ``(pseudonym, recorded_us)`` index and a row
whose pseudonym is not its leaf's (an edited or foreign row): a writer's open replaces that
row by its shredded form stating the leaf's pseudonym before it drops the index, so a search
by pseudonym finds it on its leaf's chain and no PHI is left that a shred would miss
(``audit_index_upgrade``). Rows are the contract suite's (``test_audit_index``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from middleware.audit.row import AuditQuery
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.test_audit_index import EXPECTED, PA, PB, _filled


async def _earlier(path: Path, *, edit: bool) -> None:
    """As an earlier version left the file: the old index, and row 2 (chain PB) stating PA."""
    store = await SqliteLogStore.open(path)
    try:
        await _filled(store)
    finally:
        await store.close()
    with sqlite3.connect(path) as c:
        c.execute(f"CREATE INDEX {lite.DROPPED} ON consentry_audit_index (pseudonym, recorded_us)")
        if edit:
            c.execute("UPDATE consentry_audit_index SET pseudonym = ? WHERE idx = 2", (PA,))


def _chain(pseudonym: bytes) -> list[int]:
    return [
        r.index
        for r in sorted(EXPECTED, key=lambda r: (r.recorded_us, r.index))
        if r.pseudonym == pseudonym
    ]


def _has_old_index(path: Path) -> bool:
    with sqlite3.connect(path) as c:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"
        return c.execute(sql, (lite.DROPPED,)).fetchone() is not None


async def test_a_row_disagreeing_with_its_leaf_is_shredded_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await _earlier(path, edit=True)
    assert EXPECTED[2].patient is not None
    store = await SqliteLogStore.open(path)
    try:
        assert not _has_old_index(path)
        row = await store.audit_row(2)
        assert row == EXPECTED[2].shred(), "shredded, stating its leaf's pseudonym"
        for pseudonym in (PA, PB):
            found = await store.audit_rows(AuditQuery(pseudonym=pseudonym, include_shredded=True))
            assert [r.index for r in found] == _chain(pseudonym)
        assert 2 in _chain(PB)
        assert await store.audit_rows(AuditQuery(patient=EXPECTED[2].patient)) == [
            r for r in EXPECTED if r.patient == EXPECTED[2].patient and r.index != 2
        ]
        await store.shred(PB)
        assert (await store.audit_row(2)) == EXPECTED[2].shred()
    finally:
        await store.close()


async def test_agreeing_rows_are_left_alone_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await _earlier(path, edit=False)
    store = await SqliteLogStore.open(path)
    try:
        assert not _has_old_index(path)
        assert [await store.audit_row(r.index) for r in EXPECTED] == list(EXPECTED)
    finally:
        await store.close()
