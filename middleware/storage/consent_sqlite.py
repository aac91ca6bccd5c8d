"""SQLite consent store, beside the log store in the same file (or any other).

Same discipline as :mod:`middleware.storage.ledger_sqlite`, through the same
:class:`~middleware.storage.sqlite_worker.SqliteWorker`: WAL mode, ``synchronous=FULL``, one
connection driven by one worker thread, writes under ``BEGIN IMMEDIATE`` so several processes
may share the file. Tables are described in ``consent_base``.

The connection deletes with ``secure_delete`` on (https://sqlite.org/pragma.html#pragma_secure_delete):
a forgotten pseudonym row, an erased patient's consent versions and the plain references of a
migrated table are overwritten with zeros in the file rather than left in free pages; after an
erase or a migration the WAL is checkpointed and truncated so no older page image survives
there either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from middleware.storage.consent_base import ConsentRecord, PatientMark, lookup_of
from middleware.storage.sqlite_worker import SqliteWorker

__all__ = ["SqliteConsentStore"]

T = TypeVar("T")
#: Ledger indexes per ``IN (...)`` query (SQLite allows 32,766 parameters since 3.32).
_CHUNK = 1000

SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS consentry_consent_chains (
    lookup BLOB PRIMARY KEY CHECK (length(lookup) = 32),
    pseudonym BLOB NOT NULL UNIQUE CHECK (length(pseudonym) = 16)
);
CREATE TABLE IF NOT EXISTS consentry_consent_versions (
    ledger_idx INTEGER PRIMARY KEY CHECK (ledger_idx >= 0),
    consent_id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    patient TEXT NOT NULL,
    status TEXT NOT NULL,
    revoked INTEGER NOT NULL CHECK (revoked IN (0, 1)),
    recorded_us INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS consentry_consent_versions_consent
    ON consentry_consent_versions (consent_id, ledger_idx);
CREATE INDEX IF NOT EXISTS consentry_consent_versions_patient
    ON consentry_consent_versions (patient, ledger_idx);
CREATE TABLE IF NOT EXISTS consentry_consent_scan (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL CHECK (size >= 0)
);
INSERT OR IGNORE INTO consentry_consent_scan (id, size) VALUES (1, 0);
COMMIT;
"""

_COLUMNS = "ledger_idx, consent_id, patient, status, revoked, recorded_us, data, version"
_SELECT = f"SELECT {_COLUMNS} FROM consentry_consent_versions"  # noqa: S608 (constants)
_CURRENT = f"{_SELECT} WHERE consent_id = ? ORDER BY ledger_idx DESC LIMIT 1"
_VERSION = f"{_SELECT} WHERE consent_id = ? AND version = ?"
_HISTORY = f"{_SELECT} WHERE consent_id = ? ORDER BY ledger_idx"
_LATEST = (
    "ledger_idx = (SELECT max(ledger_idx) FROM consentry_consent_versions AS w "
    "WHERE w.consent_id = v.consent_id) ORDER BY ledger_idx"
)
_FOR_PATIENT = f"{_SELECT} AS v WHERE patient = ? AND {_LATEST}"
_RECORDED = "SELECT ledger_idx FROM consentry_consent_versions WHERE ledger_idx IN"
_MARK = "SELECT count(*), max(ledger_idx) FROM consentry_consent_versions WHERE patient = ?"
_ERASED = "SELECT ledger_idx FROM consentry_consent_versions WHERE patient = ? ORDER BY ledger_idx"


_OLD_TABLE = "consentry_consent_pseudonyms"  # the previous format: plain patient references
_HAS_OLD = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
_PSEUDONYM = "SELECT pseudonym FROM consentry_consent_chains WHERE lookup = ?"


def _migration(lookup_key: bytes) -> Callable[[sqlite3.Connection], int]:
    """The body of the one transaction that moves a previous-format table's rows under their
    lookups and drops it; returns the rows moved (0, and no change, when there is none)."""

    def run(c: sqlite3.Connection) -> int:
        if c.execute(_HAS_OLD, (_OLD_TABLE,)).fetchone() is None:
            return 0
        rows = c.execute(f"SELECT patient, pseudonym FROM {_OLD_TABLE}").fetchall()  # noqa: S608
        c.executemany(
            "INSERT INTO consentry_consent_chains (lookup, pseudonym) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING",
            [(lookup_of(lookup_key, patient), bytes(p)) for patient, p in rows],
        )
        c.execute(f"DROP TABLE {_OLD_TABLE}")
        return len(rows)

    return run


def _row(row: Any) -> ConsentRecord:
    index, cid, patient, status, revoked, recorded, data, version = row
    return ConsentRecord(index, cid, patient, status, bool(revoked), recorded, bytes(data), version)


class SqliteConsentStore:
    """A consent store in one SQLite file; create it with :meth:`open`."""

    name = "sqlite"

    def __init__(self, path: Path, *, lookup_key: bytes, busy_timeout: float = 10.0) -> None:
        """No I/O; :meth:`open` connects and creates the tables. ``lookup_key``: 32 bytes,
        ``derive_box_key(ledger key, LOOKUP_PURPOSE)`` (see ``consent_base``)."""
        lookup_of(lookup_key, "")  # a key of the wrong size fails here, not on first use
        self.path = path
        self._key = lookup_key
        self._db = SqliteWorker(
            path,
            what="consent",
            schema=SCHEMA,
            busy_timeout=busy_timeout,
            pragmas=("secure_delete=ON",),
        )

    @classmethod
    async def open(
        cls, path: Path, *, lookup_key: bytes, busy_timeout: float = 10.0
    ) -> SqliteConsentStore:
        """Open (and create) the tables in the file at ``path``; migrate a previous-format
        pseudonym table (one transaction; idempotent)."""
        store = cls(path, lookup_key=lookup_key, busy_timeout=busy_timeout)
        try:
            await store._db.connect()
            if await store._db.transaction(_migration(lookup_key)):
                # Older page images of the dropped table may still sit in the WAL; a reader
                # of another process can keep it (then the next checkpoint overwrites it).
                await store._db.run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        except BaseException:
            await store.close()
            raise
        return store

    def lookup(self, patient: str) -> bytes:
        return lookup_of(self._key, patient)

    async def pseudonym(self, patient: str) -> bytes | None:
        lookup = lookup_of(self._key, patient)
        row = await self._db.run(lambda c: c.execute(_PSEUDONYM, (lookup,)).fetchone())
        return None if row is None else bytes(row[0])

    async def pseudonym_for(self, patient: str, candidate: bytes) -> bytes:
        lookup = lookup_of(self._key, patient)

        def run(c: sqlite3.Connection) -> bytes:
            c.execute(
                "INSERT INTO consentry_consent_chains (lookup, pseudonym) VALUES (?, ?) "
                "ON CONFLICT (lookup) DO NOTHING",
                (lookup, candidate),
            )
            return bytes(c.execute(_PSEUDONYM, (lookup,)).fetchone()[0])

        return await self._db.transaction(run)

    async def forget(self, patient: str) -> bool:
        sql = "DELETE FROM consentry_consent_chains WHERE lookup = ?"
        lookup = lookup_of(self._key, patient)
        deleted: int = await self._db.transaction(lambda c: c.execute(sql, (lookup,)).rowcount)
        return deleted > 0

    async def erase(self, patient: str) -> tuple[int, ...]:
        def run(c: sqlite3.Connection) -> tuple[int, ...]:
            rows = c.execute(_ERASED, (patient,)).fetchall()
            c.execute("DELETE FROM consentry_consent_versions WHERE patient = ?", (patient,))
            return tuple(int(r[0]) for r in rows)

        erased = await self._db.transaction(run)
        if erased:
            # secure_delete zeroed the rows in the pages; the WAL still holds the page images
            # written before (best effort: a reader of another process still in it delays
            # this, and the next checkpoint overwrites them).
            await self._db.run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return erased

    async def record(self, record: ConsentRecord) -> ConsentRecord:
        def run(c: sqlite3.Connection) -> ConsentRecord:
            r = record
            inserted = c.execute(
                "INSERT INTO consentry_consent_versions (ledger_idx, consent_id, version, "
                "patient, status, revoked, recorded_us, data) VALUES (?, ?, 1 + (SELECT "
                "count(*) FROM consentry_consent_versions WHERE consent_id = ? AND "
                "ledger_idx < ?), ?, ?, ?, ?, ?) ON CONFLICT (ledger_idx) DO NOTHING",
                (
                    r.ledger_index,
                    r.consent_id,
                    r.consent_id,
                    r.ledger_index,
                    r.patient,
                    r.status,
                    int(r.revoked),
                    r.recorded_us,
                    r.data,
                ),
            ).rowcount
            if inserted:  # a later version recorded first moves up by one
                c.execute(
                    "UPDATE consentry_consent_versions SET version = version + 1 "
                    "WHERE consent_id = ? AND ledger_idx > ?",
                    (r.consent_id, r.ledger_index),
                )
            return _row(c.execute(f"{_SELECT} WHERE ledger_idx = ?", (r.ledger_index,)).fetchone())

        return await self._db.transaction(run)

    async def current(self, consent_id: str) -> ConsentRecord | None:
        row = await self._db.run(lambda c: c.execute(_CURRENT, (consent_id,)).fetchone())
        return None if row is None else _row(row)

    async def version(self, consent_id: str, version: int) -> ConsentRecord | None:
        row = await self._db.run(lambda c: c.execute(_VERSION, (consent_id, version)).fetchone())
        return None if row is None else _row(row)

    async def history(self, consent_id: str) -> list[ConsentRecord]:
        rows = await self._db.run(lambda c: c.execute(_HISTORY, (consent_id,)).fetchall())
        return [_row(r) for r in rows]

    async def for_patient(self, patient: str) -> list[ConsentRecord]:
        rows = await self._db.run(lambda c: c.execute(_FOR_PATIENT, (patient,)).fetchall())
        return [_row(r) for r in rows]

    async def mark(self, patient: str) -> PatientMark:
        # On every request, for every patient: read at once, not through the worker thread.
        count, latest = await self._db.read_now(lambda c: c.execute(_MARK, (patient,)).fetchone())
        return PatientMark(count, latest)

    async def recorded(self, indexes: Sequence[int]) -> frozenset[int]:
        def run(c: sqlite3.Connection) -> frozenset[int]:
            found: set[int] = set()
            for first in range(0, len(indexes), _CHUNK):
                chunk = list(indexes[first : first + _CHUNK])
                marks = ", ".join("?" * len(chunk))  # placeholders only
                sql = f"{_RECORDED} ({marks})"
                found.update(r[0] for r in c.execute(sql, chunk))
            return frozenset(found)

        return await self._db.run(run)

    async def scanned(self) -> int:
        sql = "SELECT size FROM consentry_consent_scan WHERE id = 1"
        row = await self._db.run(lambda c: c.execute(sql).fetchone())
        return int(row[0])

    async def set_scanned(self, size: int) -> None:
        sql = "UPDATE consentry_consent_scan SET size = max(size, ?) WHERE id = 1"
        await self._db.transaction(lambda c: c.execute(sql, (size,)))

    async def ping(self) -> None:
        await self._db.ping()

    async def close(self) -> None:
        await self._db.close()
