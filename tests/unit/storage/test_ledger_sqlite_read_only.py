"""A SQLite log opened without its replay (``open(replay=False)``, what ``consentry audit
export`` does) writes nothing: a missing path is refused and no file is created, and an
existing file (and its ``-wal``) keeps its bytes through open, reads and close."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from middleware.errors import ServiceUnavailable
from middleware.storage.ledger_sqlite import SqliteLogStore


def _digests(path: Path) -> tuple[str, str]:
    """The file's and its ``-wal``'s digests (a missing ``-wal`` as empty: a WAL reader may
    create an empty one and the ``-shm`` index beside it, which hold no log data)."""
    wal = path.with_name(path.name + "-wal")
    return (
        hashlib.sha256(path.read_bytes()).hexdigest(),
        hashlib.sha256(wal.read_bytes() if wal.exists() else b"").hexdigest(),
    )


async def test_a_missing_path_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "mistyped.db"
    with pytest.raises(ServiceUnavailable, match=r"mistyped\.db"):
        await SqliteLogStore.open(path, replay=False)
    assert not path.exists()


async def test_opening_an_existing_log_unreplayed_leaves_its_bytes_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    made = await SqliteLogStore.open(path)
    await made.close()
    # Without its heartbeat row the schema script has something to write (INSERT OR IGNORE),
    # so a connect that ran it would change the file.
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM consentry_ledger_heartbeat")
    conn.close()
    before = _digests(path)
    store = await SqliteLogStore.open(path, replay=False)
    try:
        assert (await store.state()).size == 0
        assert await store.leaves(0, 0) == []
    finally:
        await store.close()
    assert _digests(path) == before


async def test_an_unreplayed_store_cannot_write_even_past_the_guard(tmp_path: Path) -> None:
    """The connection itself is read-only, not only the guard in front of the writes."""
    path = tmp_path / "log.db"
    await (await SqliteLogStore.open(path)).close()
    store = await SqliteLogStore.open(path, replay=False)
    try:
        with pytest.raises(ServiceUnavailable):
            await store._db.run(lambda c: c.execute("DELETE FROM consentry_ledger_checkpoints"))
    finally:
        await store.close()
