"""SQLite store: the embedded default, one file, WAL mode, ``synchronous=FULL``.

WAL lets readers run beside the single writer; ``synchronous=FULL`` makes a commit durable
across power loss (https://sqlite.org/pragma.html#pragma_synchronous), which the ledger needs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from middleware.errors import ServiceUnavailable

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consentry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO consentry_meta (key, value) VALUES ('schema_version', '1');
"""


class SqliteStore:
    """A store in one SQLite file; opened (and created) on construction."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ServiceUnavailable("store unavailable") from exc
        self._lock = asyncio.Lock()

    async def ping(self) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._conn.execute, "SELECT 1")
            except sqlite3.Error as exc:
                raise ServiceUnavailable("store unavailable") from exc

    async def close(self) -> None:
        self._conn.close()
