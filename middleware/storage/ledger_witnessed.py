"""The witnessed checkpoints of the SQL log stores, as mixins (the ledger modules keep the log).

A witnessed checkpoint is the log's signed checkpoint note with the cosignature lines of a
quorum of witnesses appended (:mod:`middleware.ledger.witnessing`). Gateway replicas keep the
newest one in the log's store, so every replica publishes the same one and a restarted replica
publishes at once, before any witness answers again.

Contract (:class:`~middleware.storage.ledger_base.LogStore`'s ``witnessed`` and
``keep_witnessed``; the memory store honours it too):

- Append-only by size: a note is kept only if its tree size is larger than every size kept
  before (one statement, or one transaction under an advisory lock in PostgreSQL, so two
  replicas keeping at once cannot both win with sizes out of order). A note of the same size as one
  kept is refused: the *first* stays. Its cosignatures already met the quorum; more lines add
  nothing a verifier needs, and rows never change (the ledger's append-only triggers refuse
  ``UPDATE`` and ``DELETE``; an insert below the newest size is refused by a trigger too).
- ``witnessed()`` returns the row of the largest size, ``(size, note)``, as stored: the store
  does not check it. A store edited by hand (the triggers dropped) can hold anything, which is
  why :class:`~middleware.ledger.witnessing.Witnessing` verifies a stored note against the
  witnesses' keys, the quorum and the log before it publishes it.

PostgreSQL: keepers take a transaction-level advisory lock (:data:`_LOCK_CLASS`, and the
schema's ``hashtext`` as the second key, as the log's own locks in
:mod:`~middleware.storage.ledger_postgres_schema`: logs in other schemas do not wait), so it
needs no privilege beyond ``SELECT`` and ``INSERT`` on an append-only table (``LOCK TABLE``
would need ``UPDATE``, ``DELETE`` or ``TRUNCATE``). ``keep_witnessed`` waits at most
:data:`KEEP_LOCK_WAIT` seconds for that lock or the table (``SET LOCAL lock_timeout``), then
raises ``ServiceUnavailable``: a transaction left open on the table or the lock (a DBA's
session) cannot hold the witnessing task; its write is tried again at the next round.
"""

from __future__ import annotations

import sqlite3

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.note import parse_note
from middleware.storage.postgres_pool import translated
from middleware.storage.sqlite_worker import SqliteWorker

__all__ = ["KEEP_LOCK_WAIT", "PostgresWitnessed", "SqliteWitnessed", "witnessed_size"]

#: Seconds a PostgreSQL keep waits for its lock (other keepers hold it for one insert).
KEEP_LOCK_WAIT = 5.0

_NEWEST = "SELECT size, note FROM consentry_ledger_witnessed ORDER BY size DESC LIMIT 1"
_SQLITE_KEEP = (
    "INSERT INTO consentry_ledger_witnessed (size, note) SELECT ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM consentry_ledger_witnessed WHERE size >= ?)"
)
#: First key of the keepers' advisory lock ("CSWT"); the second is the schema's hashtext (the
#: pool's search_path is the log's schema), so logs in different schemas do not wait.
_LOCK_CLASS = 0x43535754
# Keepers in turn, each seeing the other's row (READ COMMITTED: a fresh snapshot per
# statement); readers take no lock and are not held.
_PG_LOCK = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, hashtext(current_schema()))"
_PG_KEEP = (
    "INSERT INTO consentry_ledger_witnessed (size, note) SELECT $1, $2 "
    "WHERE NOT EXISTS (SELECT 1 FROM consentry_ledger_witnessed WHERE size >= $1)"
)


def witnessed_size(note: str) -> int:
    """The tree size the checkpoint ``note`` states; ``MalformedError`` if it is no note."""
    return parse_checkpoint(parse_note(note).text).size


class SqliteWitnessed:
    """Needs ``_db``, the writer of the log's file (its ``read_now`` reads on the loop)."""

    _db: SqliteWorker

    async def witnessed(self) -> tuple[int, str] | None:
        """The kept witnessed checkpoint of the largest size, ``(size, note)``; None: none."""
        row = await self._db.read_now(lambda c: c.execute(_NEWEST).fetchone())
        return None if row is None else (int(row[0]), str(row[1]))

    async def keep_witnessed(self, note: str) -> bool:
        """Keep ``note`` unless a size as large is kept already; True if it was kept."""
        size = witnessed_size(note)

        def keep(c: sqlite3.Connection) -> bool:
            return c.execute(_SQLITE_KEEP, (size, note, size)).rowcount == 1

        return await self._db.transaction(keep)


class PostgresWitnessed:
    """Needs ``_pool``, the store's pool (``search_path``: the log's schema)."""

    _pool: asyncpg.Pool

    async def witnessed(self) -> tuple[int, str] | None:
        """The kept witnessed checkpoint of the largest size, ``(size, note)``; None: none."""
        async with translated("ledger"):
            row = await self._pool.fetchrow(_NEWEST)
        return None if row is None else (int(row[0]), str(row[1]))

    async def keep_witnessed(self, note: str) -> bool:
        """Keep ``note`` unless a size as large is kept already; True if it was kept."""
        size = witnessed_size(note)
        async with translated("ledger"), self._pool.acquire() as conn, conn.transaction():
            # One round trip (no parameters: the simple protocol); milliseconds, an int.
            await conn.execute(f"SET LOCAL lock_timeout = {int(KEEP_LOCK_WAIT * 1000)}; {_PG_LOCK}")
            status: str = await conn.execute(_PG_KEEP, size, note)
        return status == "INSERT 0 1"
