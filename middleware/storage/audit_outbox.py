"""The audit outbox in a SQLite file of its own (:mod:`middleware.audit.outbox` says why).

It is never the ledger store's database: it must take rows exactly when that store cannot.
Durability is ``synchronous=FULL`` in WAL mode: each transaction returns once its log is
fsynced (measured: an intent and its settling, about 0.6-0.8 ms a write together, 2 ms with a
rollback journal). The file is created mode 0600 (its rows carry evidence; SQLite gives the
``-wal`` and ``-shm`` files the same mode).

Besides the queue (``outbox``) and the intents (``intent``, each with its owner, when it was
written and its undecided reconciles), the file holds each process's ``lease`` and the rows
moved aside (``dead_letter``, with the reason). A file from an earlier version gains the new
columns at open; its rows carry no MAC and are dead-lettered, not replayed.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

from middleware.audit.outbox import Lease, OpenIntent, OutboxRow
from middleware.storage.sidecar import beside

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
);
CREATE TABLE IF NOT EXISTS lease (
    owner TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    expires_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    request_id TEXT,
    kind INTEGER,
    recorded_us INTEGER,
    salt BLOB,
    evidence BLOB,
    pseudonym BLOB,
    patient TEXT,
    consent INTEGER,
    flags INTEGER,
    idempotency_key TEXT,
    mac BLOB,
    reason TEXT NOT NULL
)
"""
# Columns added after the first version (ALTER TABLE at open, when missing).
_ADDED: tuple[tuple[str, str, str], ...] = (
    ("outbox", "mac", "BLOB NOT NULL DEFAULT x''"),
    ("intent", "owner", "TEXT"),
    ("intent", "created_us", "INTEGER NOT NULL DEFAULT 0"),
    ("intent", "attempts", "INTEGER NOT NULL DEFAULT 0"),
)
_INSERT = (
    "INSERT INTO outbox (request_id, kind, recorded_us, salt, evidence, pseudonym, patient,"
    " consent, flags, idempotency_key, mac, intent, variant)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LEASE = (
    "INSERT INTO lease (owner, host, pid, started, expires_us) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (owner) DO UPDATE SET expires_us = max(expires_us, excluded.expires_us)"
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
        r.mac,
        intent,
        variant,
    )


def _lease_values(lease: Lease) -> tuple[object, ...]:
    return (lease.owner, lease.host, lease.pid, lease.started, lease.expires_us)


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
            for table, column, declaration in _ADDED:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            self._db = db
        return self._db

    async def put(self, rows: list[OutboxRow], *, settles: str | None = None) -> None:
        """Store ``rows`` durably, all or none, settling ``settles`` in the same transaction
        (raises ``sqlite3.Error`` / ``OSError``)."""
        await asyncio.to_thread(self._write, rows, None, None, settles)

    async def hold(
        self,
        intent: str,
        probe: str,
        variants: dict[str, list[OutboxRow]],
        *,
        lease: Lease | None = None,
        created_us: int = 0,
    ) -> None:
        """Store the intent (owned by ``lease``'s owner, written at ``created_us``) and its
        variants' rows, held (not pending), and renew ``lease``, in one transaction."""
        held = (probe, variants, lease, created_us)
        await asyncio.to_thread(self._write, [], intent, held, None)

    async def renew(self, lease: Lease) -> None:
        """Write ``lease`` (an expiry is only ever moved later)."""
        await asyncio.to_thread(self._execute, _LEASE, _lease_values(lease))

    async def attempted(self, intent: str) -> None:
        """Count one reconcile that could not decide ``intent``."""
        sql = "UPDATE intent SET attempts = attempts + 1 WHERE intent = ?"
        await asyncio.to_thread(self._execute, sql, (intent,))

    async def open_intents(self) -> list[OpenIntent]:
        """The open intents with their owner's lease, oldest first."""
        return await asyncio.to_thread(self._open_intents)

    async def dead_letter(self, row_id: int, reason: str) -> None:
        """Move the row ``row_id`` to the dead-letter table with ``reason`` (one transaction)."""
        await asyncio.to_thread(self._dead_letter, row_id, reason)

    async def dead_letters(self) -> int:
        """How many rows were moved aside."""
        return await asyncio.to_thread(self._scalar, "SELECT count(*) FROM dead_letter")

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
        held: tuple[str, dict[str, list[OutboxRow]], Lease | None, int] | None,
        settles: str | None,
    ) -> None:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, [_values(r, None, None) for r in rows])
                if intent is not None and held is not None:
                    probe, variants, lease, created_us = held
                    db.execute(
                        "INSERT INTO intent (intent, probe, owner, created_us) VALUES (?, ?, ?, ?)",
                        (intent, probe, None if lease is None else lease.owner, created_us),
                    )
                    if lease is not None:
                        db.execute(_LEASE, _lease_values(lease))
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

    def _execute(self, sql: str, parameters: tuple[object, ...]) -> None:
        with self._lock:
            self._connect().execute(sql, parameters)

    def _scalar(self, sql: str) -> int:
        with self._lock:
            (value,) = self._connect().execute(sql).fetchone()
            return int(value)

    def _open_intents(self) -> list[OpenIntent]:
        with self._lock:
            cursor = self._connect().execute(
                "SELECT i.intent, i.probe, i.owner, i.created_us, i.attempts,"
                " l.owner, l.host, l.pid, l.started, l.expires_us"
                " FROM intent i LEFT JOIN lease l ON l.owner = i.owner ORDER BY i.rowid"
            )
            return [
                OpenIntent(
                    intent=str(intent),
                    probe=str(probe),
                    owner=owner,
                    lease=None
                    if held_by is None
                    else Lease(str(held_by), str(host), int(pid), str(started), int(expires)),
                    created_us=int(created),
                    attempts=int(attempts),
                )
                for (
                    intent,
                    probe,
                    owner,
                    created,
                    attempts,
                    held_by,
                    host,
                    pid,
                    started,
                    expires,
                ) in cursor.fetchall()
            ]

    def _dead_letter(self, row_id: int, reason: str) -> None:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO dead_letter (id, request_id, kind, recorded_us, salt,"
                    " evidence, pseudonym, patient, consent, flags, idempotency_key, mac, reason)"
                    " SELECT id, request_id, kind, recorded_us, salt, evidence, pseudonym,"
                    " patient, consent, flags, idempotency_key, mac, ? FROM outbox WHERE id = ?",
                    (reason, row_id),
                )
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
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
                " consent, flags, idempotency_key, id, mac FROM outbox WHERE intent IS NULL"
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
        return str(beside(store.removeprefix("sqlite:"), ".outbox"))  # storage.sidecar
    return "consentry-outbox.db"
