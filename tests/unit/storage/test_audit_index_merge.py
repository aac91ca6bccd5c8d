"""When and how the SQLite store merges its staged audit-index rows (``ledger_sqlite_merge``,
``audit_index_staged.merge_slice``): the append that makes a merge due is answered before it,
the merge runs in slices an append can come between, a failed merge is logged, counted and
retried, a store that staged nothing does not merge on close, and rows a shred or retention
of an older process (which knows no staging table) reached move shredded.

Expected rows are the contract suite's and ``AuditRow.shred``'s (the Python shred)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from middleware.audit.row import AuditQuery
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import SIGN, assert_consistent
from tests.contract.test_audit_index import EXPECTED, PA, ROWS, SPECS, audit_entry, make_row

NEVER = 10**9


@pytest.fixture(autouse=True)
def _staging(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about staged rows: stores stage (off by default, ``stage_index``)."""
    monkeypatch.setattr(SqliteLogStore, "stage_index", True)


STAGED = "consentry_audit_staged"


def _count(path: Path, table: str = STAGED) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _late(n: int) -> list[object]:
    """``n`` more entries (indexes 6 on), each with its row."""
    return [audit_entry(make_row(SPECS[k % 6]._replace(t=600 + k), index=6 + k)) for k in range(n)]


async def _open(path: Path, *, merge_at: int = NEVER, slice_rows: int = 512) -> SqliteLogStore:
    store = await SqliteLogStore.open(path, busy_timeout=0.2)
    store.merge_at, store.merge_slice = merge_at, slice_rows
    return store


# --- the append that makes a merge due is answered first -----------------------------------


async def test_the_append_that_makes_a_merge_due_returns_before_the_merge(
    tmp_path: Path,
) -> None:
    """Its entries are committed and found staged when it returns; the merge follows."""
    store = await _open(tmp_path / "log.db", merge_at=4)
    try:
        await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
        assert _count(store.path) == 6, "not merged before the append returned"
        assert await store.audit_rows(AuditQuery()) == EXPECTED
        await store._merge_state.settle()
        assert _count(store.path) == 0
        assert _count(store.path, "consentry_audit_index") == 6
        assert await store.audit_rows(AuditQuery()) == EXPECTED
    finally:
        await store.close()


async def test_a_merge_runs_in_slices_and_an_append_runs_between_them(tmp_path: Path) -> None:
    """Each slice is its own transaction of at most ``merge_slice`` rows; an append queued
    during the merge commits between two slices, not after the whole merge."""
    store = await _open(tmp_path / "log.db", merge_at=NEVER, slice_rows=2)
    statements: list[str] = []
    sliced = threading.Event()  # set by the worker thread at the first slice's delete

    def trace(statement: str) -> None:
        statements.append(statement)
        if statement.startswith("DELETE FROM consentry_audit_staged"):
            sliced.set()

    try:
        await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
        await store.append(_late(6), sign=SIGN)  # type: ignore[arg-type]
        await store._db.run(lambda c: c.set_trace_callback(trace))
        store.merge_at = 12
        store._merge_state.appended(0, merge_at=12, slice_rows=2)  # due: the merge starts
        assert await asyncio.to_thread(sliced.wait, 10)
        late = make_row(SPECS[0]._replace(t=700), index=12)
        await store.append([audit_entry(late)], sign=SIGN)
        await store._merge_state.settle()
        await store._db.run(lambda c: c.set_trace_callback(None))
        deletes = [n for n, s in enumerate(statements) if s.startswith("DELETE FROM consentry")]
        appended = next(n for n, s in enumerate(statements) if "consentry_ledger_leaves (" in s)
        assert len(deletes) >= 6, "12 rows, 2 a slice"
        assert deletes[0] < appended < deletes[-1], "the append ran between two slices"
        assert statements.count("BEGIN IMMEDIATE") == len(deletes) + 1
        assert await store.audit_rows(AuditQuery(limit=100)) == [
            *EXPECTED,
            *[r.row for r in _late(6)],  # type: ignore[attr-defined]
            late,
        ]
        await assert_consistent(store)
    finally:
        await store.close()


# --- a failed merge --------------------------------------------------------------------------


async def test_a_failed_merge_is_logged_counted_and_retried(tmp_path: Path) -> None:
    """Another process holds the write lock past the busy timeout: the merge fails, is
    logged without PHI and counted, its rows stay staged and found; the next append past the
    mark merges them."""
    store = await _open(tmp_path / "log.db", merge_at=4)
    try:
        with capture_logs() as logs:
            await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
            blocker = sqlite3.connect(store.path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # before the merge task's first step
            try:
                await store._merge_state.settle()
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
        assert store.merge_failures == 1
        assert [(e["event"], e["error"], e["log_level"]) for e in logs] == [
            ("audit index merge failed; rows stay staged", "ServiceUnavailable", "warning")
        ]
        assert "Patient" not in repr(logs)
        assert _count(store.path) == 6
        assert await store.audit_rows(AuditQuery()) == EXPECTED
        late = make_row(SPECS[0]._replace(t=600), index=6)
        await store.append([audit_entry(late)], sign=SIGN)
        await store._merge_state.settle()
        assert (_count(store.path), store.merge_failures) == (0, 1)
        assert await store.audit_rows(AuditQuery()) == [*EXPECTED, late]
    finally:
        await store.close()


# --- close merges only what this store staged ------------------------------------------------


async def test_a_store_that_staged_nothing_does_not_merge_on_close(tmp_path: Path) -> None:
    """A report opens the store (with its replay) while a gateway has rows staged: closing
    the report takes no write lock and merges nothing; the gateway's close merges them."""
    gateway = await _open(tmp_path / "log.db")
    try:
        await gateway.append([audit_entry(r) for r in ROWS], sign=SIGN)
        report = await _open(tmp_path / "log.db", merge_at=1)
        assert await report.audit_rows(AuditQuery()) == EXPECTED
        await report.close()
        assert _count(gateway.path) == 6
    finally:
        await gateway.close()
    assert _count(gateway.path) == 0
    assert _count(gateway.path, "consentry_audit_index") == 6


# --- an older process's shred and retention ---------------------------------------------------


def _old_shred(path: Path, pseudonym: bytes, retained: list[int]) -> None:
    """What a version without the staging table does to the file: a shred writes the
    tombstone and deletes the key (its rows it looks for in the indexed table alone),
    retention deletes evidence rows."""
    with sqlite3.connect(path) as c:
        c.execute("DELETE FROM consentry_audit_keys WHERE pseudonym = ?", (pseudonym,))
        c.execute("INSERT INTO consentry_audit_shredded (pseudonym) VALUES (?)", (pseudonym,))
        c.executemany(
            "DELETE FROM consentry_ledger_evidence WHERE idx = ?", [(n,) for n in retained]
        )


@pytest.mark.parametrize("slice_rows", [2, 512], ids=["slices", "one-slice"])
async def test_rows_an_older_process_shredded_are_merged_shredded(
    tmp_path: Path, slice_rows: int
) -> None:
    """Staged rows of a pseudonym tombstoned behind the staging's back, or of an entry whose
    evidence is gone, are merged in exactly the form ``AuditRow.shred`` gives; no search
    finds their PHI and the file keeps none of it."""
    store = await _open(tmp_path / "log.db", slice_rows=slice_rows)
    try:
        await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
        _old_shred(store.path, PA, retained=[2])
        await store._merge()
        shredded = {0, 1, 2, 4}
        assert [await store.audit_row(n) for n in range(6)] == [
            r.shred() if n in shredded else r for n, r in enumerate(EXPECTED)
        ]
        assert await store.audit_rows(AuditQuery(patient="Patient/1")) == []
        assert [r.index for r in await store.audit_rows(AuditQuery())] == [3, 5]
        data = store.path.read_bytes() + store.path.with_name("log.db-wal").read_bytes()
        assert b"Condition/3" not in data  # row 1's alone (of the shredded patient)
        assert b"Condition/9" not in data  # row 2's alone (retained away)
    finally:
        await store.close()
