"""The audit outbox in a SQLite file of its own (:mod:`middleware.audit.outbox` says why).

It is never the ledger store's database: it must take rows exactly when that store cannot.
Durability is ``synchronous=FULL`` in WAL mode: each transaction returns once its log is
fsynced (measured: an intent and its settling, about 0.6-0.8 ms a write together, 2 ms with a
rollback journal). The file is created mode 0600 (its rows carry evidence; SQLite gives the
``-wal`` and ``-shm`` files the same mode).
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
    idempotency_key TEXT NOT NULL,
    intent TEXT,
    variant TEXT
);
CREATE TABLE IF NOT EXISTS intent (
    intent TEXT PRIMARY KEY,
    probe TEXT NOT NULL
)
"""
_INSERT = (
    "INSERT INTO outbox (request_id, kind, recorded_us, salt, evidence, pseudonym, patient,"
    " consent, flags, idempotency_key, intent, variant)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _values(r: OutboxRow, intent: str | None, variant: str | None) -> tuple[object, ...]:
    return (
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
        intent,
        variant,
    )


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
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def put(self, rows: list[OutboxRow], *, settles: str | None = None) -> None:
        """Store ``rows`` durably, all or none, settling ``settles`` in the same transaction
        (raises ``sqlite3.Error`` / ``OSError``)."""
        await asyncio.to_thread(self._write, rows, None, None, settles)

    async def hold(self, intent: str, probe: str, variants: dict[str, list[OutboxRow]]) -> None:
        """Store the intent and its variants' rows, held (not pending), in one transaction."""
        await asyncio.to_thread(self._write, [], intent, (probe, variants), None)

    async def settle(self, intent: str) -> None:
        """Drop the intent and its held rows (the real outcome was recorded)."""
        await asyncio.to_thread(self._write, [], None, None, intent)

    async def resolve(self, intent: str, variant: str) -> None:
        """Make ``variant``'s rows pending; drop the others and the intent."""
        await asyncio.to_thread(self._resolve, intent, variant)

    async def intents(self) -> list[tuple[str, str]]:
        """The open intents, ``(intent, probe)``, oldest first."""
        return await asyncio.to_thread(self._intents)

    def _write(
        self,
        rows: list[OutboxRow],
        intent: str | None,
        held: tuple[str, dict[str, list[OutboxRow]]] | None,
        settles: str | None,
    ) -> None:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, [_values(r, None, None) for r in rows])
                if intent is not None and held is not None:
                    probe, variants = held
                    db.execute("INSERT INTO intent (intent, probe) VALUES (?, ?)", (intent, probe))
                    db.executemany(
                        _INSERT,
                        [_values(r, intent, v) for v, group in variants.items() for r in group],
                    )
                if settles is not None:
                    db.execute("DELETE FROM outbox WHERE intent = ?", (settles,))
                    db.execute("DELETE FROM intent WHERE intent = ?", (settles,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _resolve(self, intent: str, variant: str) -> None:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM outbox WHERE intent = ? AND variant IS NOT ?", (intent, variant)
                )
                db.execute(
                    "UPDATE outbox SET intent = NULL, variant = NULL WHERE intent = ?", (intent,)
                )
                db.execute("DELETE FROM intent WHERE intent = ?", (intent,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _intents(self) -> list[tuple[str, str]]:
        with self._lock:
            cursor = self._connect().execute("SELECT intent, probe FROM intent ORDER BY rowid")
            return [(str(i), str(p)) for i, p in cursor.fetchall()]

    async def pending(self, limit: int = 1000) -> list[OutboxRow]:
        """Up to ``limit`` rows, oldest first."""
        return await asyncio.to_thread(self._pending, limit)

    def _pending(self, limit: int) -> list[OutboxRow]:
        with self._lock:
            cursor = self._connect().execute(
                "SELECT request_id, kind, recorded_us, salt, evidence, pseudonym, patient,"
                " consent, flags, idempotency_key, id FROM outbox WHERE intent IS NULL"
                " ORDER BY id LIMIT ?",
                (limit,),
            )
            return [OutboxRow(*row) for row in cursor.fetchall()]

    async def count(self) -> int:
        """How many rows wait."""
        return await asyncio.to_thread(self._count)

    def _count(self) -> int:
        with self._lock:
            db = self._connect()
            (rows,) = db.execute("SELECT count(*) FROM outbox WHERE intent IS NULL").fetchone()
            return int(rows)

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
