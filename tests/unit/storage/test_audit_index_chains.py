"""SQLite finds a pseudonym's index rows through the leaves' index of chains
(``consentry_ledger_leaves_pseudonym``), not an index of its own: the audit index's
``(pseudonym, recorded_us)`` index is gone from new files, dropped from a file an earlier
version wrote when a writer opens it, and not built again by a bulk rebuild; a search by
pseudonym still returns exactly the chain's rows (shredded ones on request) and its plan reads
the leaves' index; a reindexed row that does not state its leaf's pseudonym is refused, and a
staged one moves shredded, stating its leaf's pseudonym, since such a row would be missing
from those searches.

Expected rows are the contract suite's (``test_audit_index``: pseudonym ``PA`` is entries 0,
1 and 4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from msgspec.structs import replace

from middleware.audit.row import AuditQuery
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_query import count_sql, select_sql
from middleware.storage.audit_index_staged import STAGED
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import PSEUDONYMS
from tests.contract.test_audit_index import EXPECTED, PA, PB, _filled

LEAVES_INDEX = "consentry_ledger_leaves_pseudonym"


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _plan(path: Path, sql: str, args: list[object] | tuple[object, ...]) -> str:
    with sqlite3.connect(path) as c:
        return " | ".join(str(r[3]) for r in c.execute(f"EXPLAIN QUERY PLAN {sql}", args))


async def _written(path: Path) -> None:
    store = await SqliteLogStore.open(path)
    try:
        await _filled(store)
    finally:
        await store.close()


async def test_no_file_keeps_the_pseudonym_index(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await _written(path)
    assert lite.DROPPED not in _indexes(path)
    with sqlite3.connect(path) as c:  # as an earlier version left the file
        c.execute(f"CREATE INDEX {lite.DROPPED} ON consentry_audit_index (pseudonym, recorded_us)")
    reader = await SqliteLogStore.open(path, replay=False)  # runs no schema script
    await reader.close()
    assert lite.DROPPED in _indexes(path)
    store = await SqliteLogStore.open(path)
    try:
        assert lite.DROPPED not in _indexes(path), "a writer's open drops it"
        await store.clear_index()
        await store.reindex(EXPECTED)
        assert await store.audit_rows(AuditQuery(pseudonym=PA)) == [EXPECTED[n] for n in (0, 1, 4)]
    finally:
        await store.close()
    assert lite.DROPPED not in _indexes(path), "a bulk rebuild builds it not again"
    assert {LEAVES_INDEX, "consentry_audit_index_patient"} <= _indexes(path)


QUERIES = [
    AuditQuery(pseudonym=PA),
    AuditQuery(pseudonym=PA, include_shredded=True),
    AuditQuery(pseudonym=PA, include_shredded=True, since_us=150, until_us=450),
    AuditQuery(pseudonym=PA, include_shredded=True, sort="-date", after=(400, 4), limit=1),
    AuditQuery(pseudonym=PB, include_shredded=True, sort="-agent"),
]


@pytest.mark.parametrize("query", QUERIES, ids=["plain", "shredded", "window", "page", "sort"])
async def test_a_search_by_pseudonym_reads_the_leaves_index(
    tmp_path: Path, query: AuditQuery
) -> None:
    path = tmp_path / "log.db"
    await _written(path)
    sql, args = select_sql(query, "sqlite", lite.COLUMNS)
    assert LEAVES_INDEX in _plan(path, sql, args)
    sql, args = count_sql(query, "sqlite")
    assert LEAVES_INDEX in _plan(path, sql, args)
    assert LEAVES_INDEX in _plan(path, lite._CHAIN_ROWS, (PA,))  # the shred's read


async def test_a_search_by_pseudonym_returns_exactly_the_chain_shredded_on_request(
    tmp_path: Path,
) -> None:
    store = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        await _filled(store)
        chain_a, chain_b = [EXPECTED[n] for n in (0, 1, 4)], [EXPECTED[n] for n in (2, 5)]
        assert await store.audit_rows(AuditQuery(pseudonym=PA)) == chain_a
        assert await store.audit_rows(AuditQuery(pseudonym=PB, sort="-date")) == chain_b[::-1]
        assert await store.audit_rows(AuditQuery(pseudonym=PSEUDONYMS[3])) == []
        assert await store.shred(PA) == 3
        assert await store.shred(PA) == 0
        assert await store.audit_rows(AuditQuery(pseudonym=PA)) == []
        shredded = [r.shred() for r in chain_a]
        assert await store.audit_rows(AuditQuery(pseudonym=PA, include_shredded=True)) == shredded
        assert await store.audit_count(AuditQuery(pseudonym=PA, include_shredded=True)) == 3
        assert await store.audit_rows(AuditQuery(pseudonym=PB)) == chain_b
    finally:
        await store.close()


@pytest.mark.parametrize("where", ["other-pseudonym", "no-pseudonym", "no-leaf"])
async def test_reindex_refuses_a_row_that_does_not_state_its_leafs_pseudonym(
    tmp_path: Path, where: str
) -> None:
    store = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        await _filled(store)
        bad = {
            "other-pseudonym": replace(EXPECTED[0], pseudonym=PB),
            "no-pseudonym": replace(EXPECTED[0], pseudonym=None),
            "no-leaf": EXPECTED[0].at(6),
        }[where]
        changed = replace(EXPECTED[1], agent="Practitioner/z")
        with pytest.raises(ValueError, match="leaves"):
            await store.reindex([changed, bad])
        assert await store.audit_row(1) == EXPECTED[1], "nothing written"
        assert await store.audit_row(6) is None
        await store.reindex([changed, EXPECTED[3]])  # a leaf without a pseudonym: agrees
        assert await store.audit_row(1) == changed
    finally:
        await store.close()


async def test_a_staged_row_that_disagrees_with_its_leaf_moves_shredded(tmp_path: Path) -> None:
    """Stating its leaf's pseudonym (a row without a leaf: as it stands), with a warning
    (``test_audit_index_repair``); the open does not fail."""
    path = tmp_path / "log.db"
    await _written(path)
    cols = lite.COLUMNS
    with sqlite3.connect(path) as c:  # as an earlier version staged it, pseudonym changed
        c.execute(f"CREATE TABLE {STAGED} ({lite.ROW_COLUMNS_DDL})")
        c.execute(f"INSERT INTO {STAGED} ({cols}) SELECT {cols} FROM consentry_audit_index "
                  "WHERE idx = 4")  # fmt: skip
        c.execute(f"UPDATE {STAGED} SET pseudonym = ?", (PB,))
        rest = cols.partition(", ")[2]  # no leaf at 9
        c.execute(f"INSERT INTO {STAGED} ({cols}) SELECT 9, {rest} FROM {STAGED} WHERE idx = 4")
        c.execute("DELETE FROM consentry_audit_terms WHERE idx = 4")
        c.execute("DELETE FROM consentry_audit_index WHERE idx = 4")
    store = await SqliteLogStore.open(path)
    try:
        assert await store.audit_row(4) == EXPECTED[4].shred(), "stating its leaf's (PA)"
        assert await store.audit_row(9) == replace(EXPECTED[4], pseudonym=PB).at(9).shred()
        found = await store.audit_rows(AuditQuery(pseudonym=PA, include_shredded=True))
        assert [r.index for r in found] == [0, 1, 4]
    finally:
        await store.close()
    with sqlite3.connect(path) as c:
        assert c.execute(f"SELECT count(*) FROM {STAGED}").fetchone()[0] == 0, "all moved"
