"""An append writes its index rows with a plain ``INSERT`` (``audit_index_sqlite.write_rows``,
``fresh``): a row already stored at an index the append sequences (a file whose index
disagrees with its log) fails the append, which commits nothing, instead of being replaced
unseen with its old searchable elements left behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from middleware.audit.row import AuditQuery
from middleware.errors import ServiceUnavailable
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import SIGN
from tests.contract.test_audit_index import EXPECTED, ROWS, audit_entry


async def test_a_stored_row_at_an_appended_index_fails_the_append(tmp_path: Path) -> None:
    store = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        # A row at index 0, the log still empty (a reindex refuses a row without its leaf).
        with sqlite3.connect(tmp_path / "log.db", isolation_level=None) as c:
            c.execute("BEGIN IMMEDIATE")
            lite.write_rows(c, [EXPECTED[1].at(0)], fresh=True)
            c.execute("COMMIT")
        with pytest.raises(ServiceUnavailable):
            await store.append([audit_entry(ROWS[0])], sign=SIGN)
        assert await store.size() == 0
        assert await store.audit_rows(AuditQuery()) == [EXPECTED[1].at(0)]
    finally:
        await store.close()


async def test_appended_rows_are_found_as_written(tmp_path: Path) -> None:
    store = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
        assert await store.audit_rows(AuditQuery()) == EXPECTED
    finally:
        await store.close()
