"""Backend specifics outside the shared contract: SQLite durability settings, opening stores by
URL, and an unreachable PostgreSQL failing loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.errors import ServiceUnavailable, SettingsError
from middleware.storage import open_log_store
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore


async def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = await SqliteLogStore.open(tmp_path / "ledger.sqlite3")
    try:
        # synchronous is per connection: ask the store's own connection.
        mode, sync = await store._db.run(
            lambda c: (
                c.execute("PRAGMA journal_mode").fetchone()[0],
                c.execute("PRAGMA synchronous").fetchone()[0],
            )
        )
        assert (mode, sync) == ("wal", 2)  # 2 = FULL
    finally:
        await store.close()


async def test_open_log_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    memory = await open_log_store("memory:")
    assert isinstance(memory, MemoryLogStore)
    sqlite = await open_log_store("sqlite:ledger.sqlite3")
    assert isinstance(sqlite, SqliteLogStore)
    await sqlite.close()
    assert (tmp_path / "ledger.sqlite3").exists()
    with pytest.raises(SettingsError):
        await open_log_store("mysql://nope")


async def test_an_unreachable_postgres_is_unavailable_not_skipped() -> None:
    with pytest.raises(ServiceUnavailable):
        await PostgresLogStore.open("postgresql://127.0.0.1:1/test")


async def test_a_schema_name_must_be_a_plain_identifier() -> None:
    with pytest.raises(ValueError):
        await PostgresLogStore.open("postgresql://127.0.0.1:1/test", schema='x"; DROP')
