"""SQLite's staged index rows (``audit_index_staged``): an append stages its rows, a merge moves
them into the indexed tables, and nothing that reads or rewrites the index can tell where a
row is: searches, counts, paging, ``audit_row``, shred, retention, reindex, a crash before the
merge, an upgrade from a file without the staging table.

Expected answers are the contract suite's hand-worked tables (``test_audit_index``) and the
plain-Python rules (``select_rows``); the merge's terms are compared with those
``write_rows`` files for the same rows."""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from msgspec.structs import replace as struct_replace

from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage import audit_index_sqlite, audit_index_staged
from middleware.storage.audit_index_match import select_rows
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import SIGN, assert_consistent
from tests.contract.test_audit_index import (
    EXPECTED,
    PA,
    PB,
    QUERIES,
    ROWS,
    SPECS,
    V3,
    audit_entry,
    make_row,
)

NEVER = 10**9


@pytest.fixture(autouse=True)
def _staging(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about staged rows: stores stage (off by default, ``stage_index``)."""
    monkeypatch.setattr(SqliteLogStore, "stage_index", True)


async def _open(path: Path, *, merge_at: int = NEVER) -> SqliteLogStore:
    store = await SqliteLogStore.open(path)
    store.merge_at = merge_at
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteLogStore]:
    s = await _open(tmp_path / "log.db")
    yield s
    await s.close()


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _terms(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as c:
        return sorted(c.execute("SELECT field, term, recorded_us, idx FROM consentry_audit_terms"))


async def _append(store: SqliteLogStore, rows: list[AuditRow], *, merged: int) -> None:
    """Append ``rows`` (16 an append), the first ``merged`` of them merged, the rest staged."""
    for start in range(0, len(rows), 16):
        part = rows[start : min(start + 16, merged) if start < merged else start + 16]
        await store.append([audit_entry(r) for r in part], sign=SIGN)
        if start + len(part) == merged:
            await store._merge()
        rest = rows[start + len(part) : start + 16]
        if rest:
            await store.append([audit_entry(r) for r in rest], sign=SIGN)


# --- searches see staged and merged rows as one ---------------------------------------------


@pytest.mark.parametrize("merged", [0, 2, 3, 6], ids=["staged", "across-2", "across-3", "merged"])
@pytest.mark.parametrize(
    ("query", "expected"), [q[1:] for q in QUERIES], ids=[q[0] for q in QUERIES]
)
async def test_a_search_finds_staged_and_merged_rows_alike(
    store: SqliteLogStore, merged: int, query: AuditQuery, expected: list[int]
) -> None:
    await _append(store, ROWS, merged=merged)
    assert _count(store.path, "consentry_audit_staged") == len(ROWS) - merged
    assert [r.index for r in await store.audit_rows(query)] == expected
    unpaged = replace(query, after=None, limit=100)
    assert await store.audit_count(query) == len(await store.audit_rows(unpaged))


@pytest.mark.parametrize("sort", ["date", "-date"])
@pytest.mark.parametrize("merged", [0, 3, 6])
async def test_keyset_pages_walk_staged_and_merged_rows_once_in_order(
    store: SqliteLogStore, sort: str, merged: int
) -> None:
    await _append(store, ROWS, merged=merged)
    walked: list[int] = []
    query = AuditQuery(sort=sort, limit=2)  # type: ignore[arg-type]
    while page := await store.audit_rows(query):
        walked += [r.index for r in page]
        query = replace(query, after=(page[-1].recorded_us, page[-1].index))
    assert walked == (list(range(6)) if sort == "date" else list(range(6))[::-1])
    assert [await store.audit_row(n) for n in range(6)] == EXPECTED
    assert await store.audit_row(6) is None


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


@pytest.mark.parametrize("merged", [0, 96, 200])
async def test_staged_and_merged_rows_answer_random_searches_as_the_rules_do(
    store: SqliteLogStore, merged: int
) -> None:
    """Property (seeded): 200 random rows, staged, merged or split between the two, answer
    300 random searches and counts as the plain-Python rules do."""
    rng = random.Random(merged)
    rows = _random_rows(rng, 200)
    await _append(store, rows, merged=merged)
    await store.shred(PB)  # merges: what is appended after stays staged
    rows = [r.shred() if r.pseudonym == PB else r for r in rows]
    more = [make_row(SPECS[0]._replace(t=9000 + n), index=200 + n) for n in range(20)]
    await _append(store, more, merged=0)
    rows += more
    assert _count(store.path, "consentry_audit_staged") == 20
    pick = rng.choice
    for _ in range(300):
        fields: dict[str, object] = {
            "since_us": pick([None, 0, 1500, 2900]),
            "until_us": pick([None, 1990, 9005]),
            "patient": pick([None, None, "Patient/1"]),
            "agent": pick([None, None, "Practitioner/b"]),
            "entity": pick([None, None, "Patient/1", "Condition/3"]),
            "purpose": pick([None, None, "TREAT", f"{V3}|TREAT", "HPAYMT"]),
            "resource_type": pick([None, None, "Condition"]),
            "break_glass": pick([None, None, True, False]),
            "pseudonym": pick([None, None, PA, PB]),
            "include_shredded": pick([False, True]),
            "sort": pick(["date", "-date"]),
            "after": pick([None, (1500, 50), (2000, 150)]),
            "limit": pick([3, 100, 500]),
        }
        query = AuditQuery(**fields)  # type: ignore[arg-type]
        assert await store.audit_rows(query) == select_rows(rows, query), query
        unpaged = replace(query, after=None, limit=500)
        assert await store.audit_count(query) == len(select_rows(rows, unpaged)), query


# --- the merge ------------------------------------------------------------------------------


async def test_a_merge_files_the_terms_and_rows_write_rows_files(tmp_path: Path) -> None:
    """The merge's terms (``json_each`` in SQL) are those ``write_rows`` files (built in
    Python) for the same rows, and the merged rows are the staged ones."""
    rows = _random_rows(random.Random(5), 300)
    staged = await _open(tmp_path / "staged.db")
    written = await _open(tmp_path / "written.db")
    try:
        await _append(staged, rows, merged=0)
        assert _terms(staged.path) == []
        await staged._merge()
        await written.reindex(rows)
        assert _count(staged.path, "consentry_audit_staged") == 0
        assert _terms(staged.path) == _terms(written.path) != []
        everything = AuditQuery(limit=500)
        assert await staged.audit_rows(everything) == select_rows(rows, everything)
    finally:
        await staged.close()
        await written.close()


async def test_the_store_merges_once_merge_at_rows_are_staged(tmp_path: Path) -> None:
    store = await _open(tmp_path / "log.db", merge_at=4)
    try:
        await store.append([audit_entry(r) for r in ROWS[:3]], sign=SIGN)
        assert _count(store.path, "consentry_audit_staged") == 3
        await store.append([audit_entry(r) for r in ROWS[3:5]], sign=SIGN)
        await store._merge_state.settle()  # the merge runs after the append, in the background
        assert _count(store.path, "consentry_audit_staged") == 0
        assert _count(store.path, "consentry_audit_index") == 5
        await store.append([audit_entry(ROWS[5])], sign=SIGN)
        assert await store.audit_rows(AuditQuery()) == EXPECTED
    finally:
        await store.close()
    assert _count(store.path, "consentry_audit_staged") == 0, "close merges"
    assert _count(store.path, "consentry_audit_index") == 6


async def test_an_indexed_twin_of_a_staged_row_is_kept(store: SqliteLogStore) -> None:
    """A row indexed behind the staging's back (an older process's reindex) wins the merge,
    and the staged row's terms are not filed beside its own."""
    await _append(store, ROWS, merged=0)
    twin = struct_replace(EXPECTED[1], purposes=("urn:x|TWIN",), resource_types=("Twin",))
    with sqlite3.connect(store.path) as c:
        c.execute(audit_index_sqlite._UPSERT, audit_index_sqlite._values(twin))
        c.executemany(audit_index_sqlite._TERM, audit_index_sqlite._term_rows([twin]))
    await store._merge()
    assert await store.audit_row(1) == twin
    assert [r.index for r in await store.audit_rows(AuditQuery(purpose="HPAYMT"))] == []
    assert [r.index for r in await store.audit_rows(AuditQuery(purpose="TWIN"))] == [1]
    assert [r.index for r in await store.audit_rows(AuditQuery(purpose="TREAT"))] == [0, 2, 5]


# --- every write to the index reaches the staged rows ---------------------------------------


async def test_a_shred_leaves_no_unshredded_staged_row(store: SqliteLogStore) -> None:
    await _append(store, ROWS, merged=0)
    assert await store.shred(PA) == 3
    assert _count(store.path, "consentry_audit_staged") == 0
    for n in (0, 1, 4):
        assert await store.audit_row(n) == EXPECTED[n].shred()
    assert [r.index for r in await store.audit_rows(AuditQuery(patient="Patient/1"))] == []
    # Born shredded: a row appended after the shred is staged in its shredded form.
    late = make_row(SPECS[0]._replace(t=600), index=6)
    await store.append([audit_entry(late)], sign=SIGN)
    assert _count(store.path, "consentry_audit_staged") == 1
    assert await store.audit_row(6) == late.shred()
    await assert_consistent(store)


async def test_a_merged_then_shredded_row_leaves_no_copy_in_the_file(
    store: SqliteLogStore,
) -> None:
    """The merge frees the staged pages zeroed: a shred after it leaves no copy of the
    shredded rows anywhere in the file (free pages included; the shred truncates the WAL)."""
    await _append(store, ROWS, merged=0)
    await store._merge()
    await store.shred(PA)
    data = store.path.read_bytes()
    assert b"search-type" not in data  # row 1's alone (of the shredded patient)
    assert b"Condition/3" not in data  # row 1's alone
    assert b"Condition/9" in data  # row 2's, not shredded


async def test_retention_shreds_staged_rows(store: SqliteLogStore) -> None:
    await _append(store, ROWS, merged=2)
    assert await store.shred_entries([1, 4]) == 2
    assert _count(store.path, "consentry_audit_staged") == 0
    assert [await store.audit_row(n) for n in (1, 4)] == [EXPECTED[1].shred(), EXPECTED[4].shred()]
    assert [r.index for r in await store.audit_rows(AuditQuery())] == [0, 2, 3, 5]


async def test_a_reindex_replaces_staged_rows(store: SqliteLogStore) -> None:
    await _append(store, ROWS, merged=0)
    changed = struct_replace(EXPECTED[2], agent="Practitioner/z")
    await store.reindex([changed])
    assert await store.audit_row(2) == changed
    assert [r.index for r in await store.audit_rows(AuditQuery(agent="Practitioner/a"))] == [0, 4]
    assert await store.audit_count(AuditQuery()) == 6


async def test_clear_index_empties_the_staging_too(store: SqliteLogStore) -> None:
    await _append(store, ROWS, merged=3)
    await store.clear_index()
    assert await store.audit_count(AuditQuery(include_shredded=True)) == 0
    await store.reindex(EXPECTED)
    assert await store.audit_rows(AuditQuery()) == EXPECTED


# --- crashes and upgrades -------------------------------------------------------------------


async def test_a_crash_before_the_merge_loses_no_row(tmp_path: Path) -> None:
    """The file as a crash leaves it (copied while the store is open, its rows staged):
    reopened, every staged row is found, and merged by the next merge."""
    store = await _open(tmp_path / "log.db")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    try:
        await _append(store, ROWS, merged=2)
        for name in ("log.db", "log.db-wal"):
            shutil.copy(tmp_path / name, crashed / name)
    finally:
        await store.close()
    again = await _open(crashed / "log.db", merge_at=5)
    try:
        assert _count(again.path, "consentry_audit_staged") == 4
        assert await again.audit_rows(AuditQuery()) == EXPECTED
        assert [r.index for r in await again.audit_rows(AuditQuery(purpose="TREAT"))] == [0, 2, 5]
        late = make_row(SPECS[0]._replace(t=600), index=6)
        await again.append([audit_entry(late)], sign=SIGN)  # 5 staged: merged
        await again._merge_state.settle()
        assert _count(again.path, "consentry_audit_staged") == 0
        assert await again.audit_rows(AuditQuery()) == [*EXPECTED, late]
        assert [r.index for r in await again.audit_rows(AuditQuery(purpose="TREAT"))] == [
            0,
            2,
            5,
            6,
        ]
    finally:
        await again.close()


async def test_a_file_without_the_staging_table_is_upgraded_on_open(tmp_path: Path) -> None:
    """A file written before staging existed (its rows indexed, no staging table) opens,
    keeps its rows, and stages new ones."""
    store = await _open(tmp_path / "log.db", merge_at=1)
    try:
        await store.append([audit_entry(r) for r in ROWS[:3]], sign=SIGN)
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "log.db") as c:
        c.execute("DROP TABLE consentry_audit_staged")
    again = await _open(tmp_path / "log.db")
    try:
        await again.append([audit_entry(r) for r in ROWS[3:]], sign=SIGN)
        assert _count(again.path, "consentry_audit_staged") == 3
        assert await again.audit_rows(AuditQuery()) == EXPECTED
    finally:
        await again.close()


async def test_a_file_without_the_staging_table_is_searched_read_only(tmp_path: Path) -> None:
    """``open(replay=False)`` (an export) runs no schema script: a file an older version
    wrote has no staging table, and its rows are found all the same."""
    store = await _open(tmp_path / "log.db", merge_at=1)
    try:
        await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "log.db") as c:
        c.execute("DROP TABLE consentry_audit_staged")
    reader = await SqliteLogStore.open(tmp_path / "log.db", replay=False)
    try:
        assert await reader.audit_rows(AuditQuery()) == EXPECTED
        assert await reader.audit_count(AuditQuery(purpose="TREAT")) == 3
        assert await reader.audit_row(4) == EXPECTED[4]
    finally:
        await reader.close()


def test_the_staging_table_has_the_index_columns() -> None:
    with sqlite3.connect(":memory:") as c:
        c.executescript(audit_index_sqlite.INDEX_SCHEMA)
        columns = [
            [v[1:] for v in c.execute(f"PRAGMA table_info({t})")]
            for t in ("consentry_audit_index", "consentry_audit_staged")
        ]
    assert columns[0] == columns[1]
    assert ", ".join(v[0] for v in columns[0]) == audit_index_staged.COLUMNS


async def test_by_default_an_append_writes_into_the_indexed_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default store stages nothing; rows another process staged are merged before its
    own are written, so searches see each row once, indexed."""
    staging = await _open(tmp_path / "log.db")
    await staging.append([audit_entry(r) for r in ROWS[:3]], sign=SIGN)
    await staging.close()  # its close merges what it staged: stage more without closing
    staging = await _open(tmp_path / "log.db")
    await staging.append([audit_entry(r) for r in ROWS[3:5]], sign=SIGN)
    assert _count(tmp_path / "log.db", "consentry_audit_staged") == 2
    monkeypatch.setattr(SqliteLogStore, "stage_index", False)
    direct = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        await direct.append([audit_entry(r) for r in ROWS[5:]], sign=SIGN)
        assert _count(tmp_path / "log.db", "consentry_audit_staged") == 0
        assert _count(tmp_path / "log.db", "consentry_audit_index") == len(ROWS)
        found = await direct.audit_rows(AuditQuery())
        assert sorted(r.index for r in found) == list(range(len(ROWS)))
    finally:
        await direct.close()
        await staging.close()
