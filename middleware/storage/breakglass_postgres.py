"""Open break-the-glass sessions in a PostgreSQL table every replica of the gateway reads.

The same board as :class:`~middleware.storage.breakglass_sqlite.SqliteSessionBoard` (read its
docstring for what a row means), for gateways that share a PostgreSQL store: a session one
replica opened is honoured by every other, and no second one is started while it is open.
A row is ``id -> ends``, ``id`` the keyed digest of the caller's binding and the patient's
reference under ``derive_box_key(ledger data secret, "breakglass-board")``: every replica
must share the ledger key file (it does anyway: cursors and pseudonyms derive from it), and
the table names no patient and no caller.

The table lives in the store's schema (the log store's; ``public`` for a plain DSN), on a
small pool of the board's own (opened on first use, closed by :meth:`aclose`), so a session
check never waits behind a ledger append. A claim runs in one transaction under an advisory
lock of the board's (claims are rare: one per emergency session), deletes every row whose
``ends`` has passed (a replica killed with sessions open leaves rows that lapse at once) and
inserts the new row, pending, unless one is open; it is honoured once confirmed started, as
on the SQLite board (``pending_until``, the claim's end in ``claim_ends`` until then, ``ends``
past for an earlier version; added to an older table under the DDL lock, so
replicas opening at once add them once; tables and columns are made only when missing, review
R7c-4, so a role with only the tables' DML grants and USAGE on the schema opens a board
already upgraded). Deleted rows' bytes stay in PostgreSQL's WAL and in dead tuples until
VACUUM; they are digests, nothing more.

The stops owed (:class:`~middleware.pipeline.breakglass.BreakGlass` docstring) are a second
table, ``(id, ends) -> stop, taken_until``, ``stop`` sealed as on the SQLite board (under the
key :data:`~middleware.storage.breakglass_sqlite.STOP_PURPOSE` derives from the board's). A
take is one ``UPDATE ... RETURNING``: a second replica updating the same row waits for the
first to commit and then no longer matches (READ COMMITTED re-checks the condition), so one
replica takes it; a sweep picks its rows ``FOR UPDATE SKIP LOCKED``. A recorded row is marked
so (:mod:`~middleware.storage.breakglass_rows`) and deleted a day after its end.

Failures: a check that cannot read answers "no session" (the caller is asked for the reason
again: the safe direction); a claim that cannot write raises
:class:`~middleware.errors.ServiceUnavailable` through
:func:`~middleware.storage.postgres_pool.translated` (nothing is released); a release that
cannot write leaves the row to lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable
from middleware.ledger.signing import derive_box_key, keyed_digest
from middleware.pipeline.breakglass import PENDING, RECORDED_BY_OTHER, BeingOpened, Owed
from middleware.storage.breakglass_rows import (
    KEEP,
    LEASE,
    RECORDED,
    open_row,
    opened_all,
    seal_recorded,
    seal_stop,
    verdict,
)
from middleware.storage.breakglass_sqlite import BATCH, STARTED, STOP_PURPOSE, UNSTARTED
from middleware.storage.postgres_pool import open_pool, translated

__all__ = ["SCHEMA", "PostgresSessionBoard"]

# Each table made, and the column added to an older one, only when missing (R7c-4): CREATE
# TABLE IF NOT EXISTS still needs the CREATE privilege on the schema and ALTER TABLE the
# table's owner (and an ACCESS EXCLUSIVE lock), which a role with the DML grants lacks.
SCHEMA: Final = """
DO $$
BEGIN
    IF to_regclass('consentry_breakglass_sessions') IS NULL THEN
        CREATE TABLE consentry_breakglass_sessions (
            id bytea PRIMARY KEY CHECK (octet_length(id) = 32),
            ends double precision NOT NULL,
            pending_until double precision NOT NULL DEFAULT 0,
            claim_ends double precision NOT NULL DEFAULT 0
        );
    ELSIF (
        SELECT count(*) FROM pg_attribute
        WHERE attrelid = 'consentry_breakglass_sessions'::regclass
            AND attname IN ('pending_until', 'claim_ends') AND NOT attisdropped
    ) < 2 THEN
        ALTER TABLE consentry_breakglass_sessions
            ADD COLUMN IF NOT EXISTS pending_until double precision NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS claim_ends double precision NOT NULL DEFAULT 0;
    END IF;
    IF to_regclass('consentry_breakglass_stops') IS NULL THEN
        CREATE TABLE consentry_breakglass_stops (
            id bytea NOT NULL CHECK (octet_length(id) = 32),
            ends double precision NOT NULL,
            stop bytea NOT NULL,
            taken_until double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (id, ends)
        );
    END IF;
END $$;
"""
_WHAT: Final = "break-the-glass sessions"
_LOCK_CLASS: Final = 0x42544753  # "BTGS": the board's advisory lock
_CLAIM_LOCK: Final = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, 0)"
# As on the SQLite board (its module docstring, R7c-2): a claim's ``ends`` is UNSTARTED (its
# end in ``claim_ends``) until confirmed; a started row lapses at its end, a pending one (an
# older table's rows: 0, inert) at its ``pending_until``.
_SWEEP: Final = (
    "DELETE FROM consentry_breakglass_sessions WHERE (pending_until < 0 AND ends <= $1) "
    "OR (pending_until >= 0 AND pending_until <= $1)"
)
_INSERT: Final = (
    "INSERT INTO consentry_breakglass_sessions (id, ends, pending_until, claim_ends) "
    "VALUES ($1, $4, $3, $2) ON CONFLICT (id) DO NOTHING RETURNING 1"
)
_HELD: Final = "SELECT pending_until FROM consentry_breakglass_sessions WHERE id = $1"
_CONFIRM: Final = (
    "UPDATE consentry_breakglass_sessions SET pending_until = $3, ends = claim_ends "
    "WHERE id = $1 AND claim_ends = $2 AND pending_until > 0"
)
_ACTIVE: Final = (
    "SELECT id FROM consentry_breakglass_sessions WHERE id = ANY($1::bytea[]) AND ends > $2 "
    "AND pending_until = $3"
)
_RELEASE: Final = "DELETE FROM consentry_breakglass_sessions WHERE id = $1 AND claim_ends = $2"
_OWE: Final = (
    "INSERT INTO consentry_breakglass_stops (id, ends, stop) VALUES ($1, $2, $3) "
    "ON CONFLICT (id, ends) DO UPDATE SET stop = EXCLUDED.stop"
)
_TAKE_ONE: Final = (
    "UPDATE consentry_breakglass_stops SET taken_until = $4 "
    "WHERE id = $1 AND ends = $2 AND taken_until <= $3 RETURNING stop"
)
_TAKE_OVERDUE: Final = (
    "UPDATE consentry_breakglass_stops SET taken_until = $3 WHERE (id, ends) IN ("
    "SELECT id, ends FROM consentry_breakglass_stops WHERE ends <= $1 AND taken_until <= $2 "
    "ORDER BY ends LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING id, ends, stop"
)
_ROW: Final = "SELECT stop, taken_until FROM consentry_breakglass_stops WHERE id = $1 AND ends = $2"
_MARK: Final = (
    "INSERT INTO consentry_breakglass_stops (id, ends, stop, taken_until) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (id, ends) DO UPDATE SET stop = EXCLUDED.stop, taken_until = EXCLUDED.taken_until"
)
_FORGET: Final = "DELETE FROM consentry_breakglass_stops WHERE taken_until = $1 AND ends <= $2"
_GIVE_BACK: Final = (
    "UPDATE consentry_breakglass_stops SET taken_until = 0 WHERE id = $1 AND ends = $2"
)


class PostgresSessionBoard:
    """The shared board (module docstring) on ``dsn``; ``schema`` says (when first needed)
    which schema holds the table: the log store's."""

    def __init__(
        self,
        dsn: str,
        key: bytes,
        *,
        schema: Callable[[], Awaitable[str]],
        max_size: int = 2,
    ) -> None:
        keyed_digest(key, ())  # a key of the wrong size fails here, not at the first request
        self._dsn = dsn
        self._key = key
        self._stop_key = derive_box_key(key, STOP_PURPOSE)
        #: Owed-stop rows a sweep took that did not open (reason code ``unreadable``).
        self.unreadable = 0
        self._schema = schema
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._releases: set[asyncio.Task[None]] = set()
        self._closed = False

    def _id(self, binding: str, patient: str) -> bytes:
        return keyed_digest(self._key, (binding.encode(), patient.encode()))

    async def _connected(self) -> asyncpg.Pool:
        """The board's pool, opened (and the table created) on first use; raises
        :class:`ServiceUnavailable` when it cannot be (the next call tries again)."""
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise ServiceUnavailable(f"{_WHAT} closed")
            if self._pool is None:
                schema = await self._schema()
                self._pool = await open_pool(
                    self._dsn, schema=schema, ddl=SCHEMA, what=_WHAT, max_size=self._max_size
                )
            return self._pool

    async def active(self, binding: str, patients: Iterable[str], now: float) -> frozenset[str]:
        """Which of ``patients`` ``binding`` holds an open session for, on any replica; none
        when the table cannot be read (module docstring). One indexed read."""
        wanted = {self._id(binding, patient): patient for patient in patients}
        if not wanted:
            return frozenset()
        try:
            pool = await self._connected()
            async with translated(_WHAT):
                rows = await pool.fetch(_ACTIVE, list(wanted), now, STARTED)
        except ServiceUnavailable:
            return frozenset()
        return frozenset(wanted[bytes(row[0])] for row in rows)

    async def claim(self, binding: str, patient: str, ends: float, now: float) -> bool:
        """Record a session until ``ends``, pending, unless one is open (True: this replica
        opened it and records its start; False: a started one is open); lapsed rows (and inert
        pending ones) are deleted first. Raises :class:`ServiceUnavailable` when the table
        cannot be written, or when another's pending claim holds the session."""
        row_id = self._id(binding, patient)
        pool = await self._connected()
        async with translated(_WHAT), pool.acquire() as conn, conn.transaction():
            await conn.execute(_CLAIM_LOCK)
            await conn.execute(_SWEEP, now)
            inserted = await conn.fetchval(_INSERT, row_id, ends, now + PENDING, UNSTARTED)
            held = None if inserted is not None else await conn.fetchval(_HELD, row_id)
        if inserted is None and held != STARTED:
            raise BeingOpened
        return inserted is not None

    async def confirm(self, binding: str, patient: str, ends: float) -> None:
        """Mark the pending session until ``ends`` started: honoured by every replica from now
        on. A failure is swallowed (it stays pending: inert)."""
        with contextlib.suppress(ServiceUnavailable):
            pool = await self._connected()
            async with translated(_WHAT):
                await pool.execute(_CONFIRM, self._id(binding, patient), ends, STARTED)

    def release(self, binding: str, patient: str, ends: float) -> asyncio.Task[None]:
        """Forget the session until ``ends``, closed now; a row another replica has since
        claimed anew is kept. Runs as a task of the running loop (the caller does not wait;
        :meth:`aclose` does); a row that cannot be deleted lapses."""
        task = asyncio.get_running_loop().create_task(
            self._release(self._id(binding, patient), ends)
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        return task

    async def _release(self, row_id: bytes, ends: float) -> None:
        with contextlib.suppress(ServiceUnavailable):
            pool = await self._connected()
            async with translated(_WHAT):
                await pool.execute(_RELEASE, row_id, ends)

    async def owe(self, binding: str, patient: str, ends: float, stop: bytes) -> None:
        """Keep ``stop``, sealed, for the session until ``ends``. Raises
        :class:`ServiceUnavailable` when the table cannot be written."""
        pool = await self._connected()
        async with translated(_WHAT):
            row_id = self._id(binding, patient)
            await pool.execute(_OWE, row_id, ends, seal_stop(self._stop_key, row_id, ends, stop))

    async def take(self, binding: str, patient: str, ends: float, now: float) -> Owed | str:
        """Take the session's owed stop, else why not
        (:func:`~middleware.storage.breakglass_rows.verdict`, from the row read in the same
        transaction). Raises :class:`ServiceUnavailable` when the table cannot be written."""
        row_id = self._id(binding, patient)
        pool = await self._connected()
        async with translated(_WHAT), pool.acquire() as conn, conn.transaction():
            sealed = await conn.fetchval(_TAKE_ONE, row_id, ends, now, now + LEASE)
            found = None if sealed is not None else await conn.fetchrow(_ROW, row_id, ends)
        if sealed is not None:
            stop = open_row(self._stop_key, row_id, ends, bytes(sealed))
            if stop is None or stop is True:
                return "unreadable" if stop is None else RECORDED_BY_OTHER
            return Owed(row_id, ends, stop)
        row = None if found is None else (bytes(found[0]), float(found[1]))
        return verdict(self._stop_key, row_id, ends, row, now)

    async def recorded(self, binding: str, patient: str, ends: float) -> bool:
        """Mark the session's stop recorded (its row kept ``KEEP`` seconds as the proof);
        False when the table cannot be written (the caller may try again)."""
        return await self._mark(self._id(binding, patient), ends)

    async def _mark(self, row_id: bytes, ends: float) -> bool:
        sealed = seal_recorded(self._stop_key, row_id, ends)
        try:
            pool = await self._connected()
            async with translated(_WHAT):
                await pool.execute(_MARK, row_id, ends, sealed, RECORDED)
        except ServiceUnavailable:
            return False
        with contextlib.suppress(ServiceUnavailable):  # forgotten at a later mark
            async with translated(_WHAT):
                await pool.execute(_FORGET, RECORDED, ends - KEEP)
        return True

    async def take_overdue(self, before: float, now: float) -> list[Owed]:
        """Take up to ``BATCH`` owed stops of sessions ended by ``before`` and not held by a
        live take; none when the table cannot be written (the next sweep tries again)."""
        try:
            pool = await self._connected()
            async with translated(_WHAT):
                rows = await pool.fetch(_TAKE_OVERDUE, before, now, now + LEASE, BATCH)
        except ServiceUnavailable:
            return []
        taken, unreadable = opened_all(
            self._stop_key, ((bytes(r[0]), float(r[1]), bytes(r[2])) for r in rows)
        )
        self.unreadable += unreadable
        return taken

    async def settle(self, owed: Owed, *, recorded: bool) -> bool:
        """Mark ``owed``'s row recorded once ``recorded``, else give it back (its lease ends
        now); False when the table cannot be written (the lease then lapses)."""
        if recorded:
            return await self._mark(owed.id, owed.ends)
        try:
            pool = await self._connected()
            async with translated(_WHAT):
                await pool.execute(_GIVE_BACK, owed.id, owed.ends)
        except ServiceUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Finish the queued releases and close the pool (idempotent)."""
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
