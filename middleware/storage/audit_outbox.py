"""The audit outbox in a SQLite file of its own (:mod:`middleware.audit.outbox` says why).

It is never the ledger store's database: it must take rows exactly when that store cannot.
Durability is ``synchronous=FULL`` on a rollback journal: :meth:`SqliteOutbox.put` returns
once the rows are on disk. The file is created mode 0600 (its rows carry evidence).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

from middleware.audit.outbox import OutboxRow

__all__ = ["SqliteOutbox", "outbox_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    recorded_us INTEGER NOT NULL,
    salt BLOB NOT NULL,
    evidence BLOB NOT NULL,
    pseudonym BLOB,
    patient TEXT,
    consent INTEGER,
    flags INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL
)
"""


class SqliteOutbox:
    """A durable queue of :class:`OutboxRow` in the SQLite file ``path`` (``:memory:`` keeps
    it in memory, for a gateway whose ledger is in memory too).

    :meth:`put` returns once the rows are on disk (``synchronous=FULL``, one transaction:
    all or none); :meth:`pending` lists them oldest first; :meth:`remove` drops one that the
    ledger now holds. Each call runs in a worker thread; one connection, one lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                # Created private: rows carry evidence (module docstring).
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(fd)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    async def put(self, rows: list[OutboxRow]) -> None:
        """Store ``rows`` durably, all or none (raises ``sqlite3.Error`` / ``OSError``)."""
        await asyncio.to_thread(self._put, rows)

    def _put(self, rows: list[OutboxRow]) -> None:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO outbox (request_id, kind, recorded_us, salt, evidence,"
                    " pseudonym, patient, consent, flags, idempotency_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.request_id,
                            r.kind,
                            r.recorded_us,
                            r.salt,
                            r.evidence,
                            r.pseudonym,
                            r.patient,
                            r.consent,
                            r.flags,
                            r.idempotency_key,
                        )
                        for r in rows
                    ],
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    async def pending(self, limit: int = 1000) -> list[OutboxRow]:
        """Up to ``limit`` rows, oldest first."""
        return await asyncio.to_thread(self._pending, limit)

    def _pending(self, limit: int) -> list[OutboxRow]:
        with self._lock:
            cursor = self._connect().execute(
                "SELECT request_id, kind, recorded_us, salt, evidence, pseudonym, patient,"
                " consent, flags, idempotency_key, id FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            )
            return [OutboxRow(*row) for row in cursor.fetchall()]

    async def count(self) -> int:
        """How many rows wait."""
        return await asyncio.to_thread(self._count)

    def _count(self) -> int:
        with self._lock:
            (n,) = self._connect().execute("SELECT count(*) FROM outbox").fetchone()
            return int(n)

    async def remove(self, row_id: int) -> None:
        """Drop the row ``row_id`` (the ledger holds its entry)."""
        await asyncio.to_thread(self._remove, row_id)

    def _remove(self, row_id: int) -> None:
        with self._lock:
            self._connect().execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def close(self) -> None:
        """Close the file (idempotent); the rows stay for the next start."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def outbox_path(setting: str, store: str) -> str:
    """The outbox file ``audit_outbox`` names, else one beside a SQLite store
    (``<path>.outbox``), ``consentry-outbox.db`` for PostgreSQL, memory for ``memory:``."""
    if setting:
        return setting
    if store == "memory:":
        return ":memory:"
    if store.startswith("sqlite:"):
        return str(Path(store.removeprefix("sqlite:"))) + ".outbox"
    return "consentry-outbox.db"
