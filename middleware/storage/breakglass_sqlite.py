"""Open break-the-glass sessions in a SQLite file every worker of one gateway reads.

:class:`~middleware.pipeline.breakglass.BreakGlass` keeps the sessions a process opened (with
the caller's identity, for the stop event it records); this board tells every process which
sessions are open, so a worker that did not see the request opening one honours it, and two
workers never both start one. A row is ``id -> ends``: ``id`` is a keyed digest of the
caller's binding (issuer/subject/client) and the patient's reference
(:func:`~middleware.ledger.signing.keyed_digest` under
``derive_box_key(ledger data secret, "breakglass-board")``, the same in every worker), so the
file names no patient and no caller: without the ledger key nobody can tell whose session a
row is. A check asks for the patients of the document at hand and compares digests.

A claim writes its row *pending* (``pending_until``: the claim time plus
:data:`~middleware.pipeline.breakglass.PENDING`); :meth:`SqliteSessionBoard.confirm` marks it
started (``pending_until = STARTED``) once the start is on the ledger, and only a started row
is honoured (review R7b-3: fail closed). A pending row blocks another claim until its
``pending_until``, then it is inert and replaced; a release that is lost leaves only that. Its
``ends`` holds :data:`UNSTARTED` (the past) until it is confirmed, the claim's end in
``claim_ends``, so a process of an earlier version, whose only test is ``ends``, honours no
claim whose start is not on the ledger (review R7c-2); the confirm applies to that claim only
(its ``claim_ends``). The columns are added to an older file when it is opened; its rows
(``pending_until`` 0, as if pending) are inert and replaced at the next claim.

The file is its own (``<store>.sessions`` beside a SQLite store, mode 0600): a session check
never waits for a ledger commit. WAL mode, so a read never waits for a writer. Reads are
short indexed lookups made on the event loop (like
:meth:`~middleware.storage.sqlite_worker.SqliteWorker.read_now`); writes (a session opens or
closes) run on the board's own thread, one at a time, with ``secure_delete`` on. Every claim
deletes the rows whose ``ends`` has passed (a process killed with its sessions open leaves
rows that lapse at once and are gone at the next claim); a delete is followed by a WAL
truncation, so no deleted row outlives it in the ``-wal`` file either.

A second table keeps the stops owed (:class:`~middleware.pipeline.breakglass.BreakGlass`
docstring): ``(id, ends) -> stop, taken_until``, ``stop`` sealed
(:func:`~middleware.ledger.signing.seal`, XSalsa20-Poly1305) under a key derived from the
board's, so the file still names no patient and no caller in the clear. A take is one
``UPDATE ... RETURNING`` in a write transaction (one writer at a time across the processes:
exactly one taker); ``taken_until`` is the take's lease. A recorded row is marked so
(:mod:`~middleware.storage.breakglass_rows`) and deleted a day after its end (the WAL
truncated). A sweep first looks with a read (no write when nothing is owed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

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
from middleware.storage.sidecar import beside

__all__ = ["BOARD_PURPOSE", "LEASE", "STARTED", "UNSTARTED", "SqliteSessionBoard", "sessions_path"]

#: What the board's digest key is derived for: ``derive_box_key(data secret, BOARD_PURPOSE)``.
BOARD_PURPOSE: Final = "breakglass-board"
#: What the key sealing owed stops is derived for, from the board's key (both boards').
STOP_PURPOSE: Final = "breakglass-stop"
#: Owed stops one sweep takes at most (the rest at the next).
BATCH: Final = 16
#: ``pending_until`` of a started session's row (both boards): honoured; any other is pending.
STARTED: Final = -1.0
#: ``ends`` of a claim not yet started (both boards): past for any reader (module docstring).
UNSTARTED: Final = 0.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS open_session (
    id BLOB PRIMARY KEY,
    ends REAL NOT NULL,
    pending_until REAL NOT NULL DEFAULT 0,
    claim_ends REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owed_stop (
    id BLOB NOT NULL,
    ends REAL NOT NULL,
    stop BLOB NOT NULL,
    taken_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (id, ends)
) WITHOUT ROWID;
"""
_TAKE_ONE: Final = (
    "UPDATE owed_stop SET taken_until = ? WHERE id = ? AND ends = ? AND taken_until <= ? "
    "RETURNING stop"
)
_TAKE_OVERDUE: Final = (
    "UPDATE owed_stop SET taken_until = ? WHERE (id, ends) IN (SELECT id, ends FROM owed_stop "
    "WHERE ends <= ? AND taken_until <= ? ORDER BY ends LIMIT ?) RETURNING id, ends, stop"
)
# The table of the first version held the patient's reference in the clear: dropped (with
# secure_delete on, its pages are zeroed) the first time a newer gateway opens the file.
_OLD_TABLE: Final = "session"
# A claim is written with ``ends`` UNSTARTED (its end in ``claim_ends``) and gets its end only
# when confirmed started, so a process of an earlier version (``ends > now`` its only test)
# honours no claim whose start is not yet on the ledger (review R7c-2). A row lapses by its
# end once started, by ``pending_until`` while pending (an older file's rows: 0, inert).
_SWEEP: Final = (
    "DELETE FROM open_session WHERE (pending_until < 0 AND ends <= ?) "
    "OR (pending_until >= 0 AND pending_until <= ?)"
)
_CONFIRM: Final = (
    "UPDATE open_session SET pending_until = ?, ends = claim_ends "
    "WHERE id = ? AND claim_ends = ? AND pending_until > 0"
)
_MARK: Final = "INSERT OR REPLACE INTO owed_stop (id, ends, stop, taken_until) VALUES (?, ?, ?, ?)"
_FORGET: Final = "DELETE FROM owed_stop WHERE taken_until = ? AND ends <= ?"


def sessions_path(store: str) -> Path | None:
    """The board's file beside a ``sqlite:`` store; None for any other store (a PostgreSQL
    store has its own board, :mod:`~middleware.storage.breakglass_postgres`; in memory,
    sessions stay in the process)."""
    if not store.startswith("sqlite:"):
        return None
    return beside(store.removeprefix("sqlite:"), ".sessions")  # the real file's: storage.sidecar


class SqliteSessionBoard:
    """The shared board (module docstring); opened on first use, file mode 0600."""

    def __init__(self, path: Path, key: bytes, *, busy_timeout: float = 2.0) -> None:
        keyed_digest(key, ())  # a key of the wrong size fails here, not at the first request
        self.path = path
        self._key = key
        self._stop_key = derive_box_key(key, STOP_PURPOSE)
        self._busy_timeout = busy_timeout
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="breakglass-board")
        #: Owed-stop rows a sweep took that did not open (reason code ``unreadable``).
        self.unreadable = 0

    def _id(self, binding: str, patient: str) -> bytes:
        return keyed_digest(self._key, (binding.encode(), patient.encode()))

    def _connect(self) -> sqlite3.Connection:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA secure_delete=ON")
        db.executescript(_SCHEMA)
        _add_columns(db)
        return db

    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            db = self._connect()
            db.execute("PRAGMA query_only=ON")
            self._reader = db
        return self._reader

    def _write_conn(self) -> sqlite3.Connection:
        """The writer (on the board's thread only); drops the first version's table."""
        if self._writer is None:
            db = self._connect()
            old = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_OLD_TABLE,)
            ).fetchone()
            if old is not None:
                db.execute(f"DROP TABLE IF EXISTS {_OLD_TABLE}")
                db.execute("VACUUM")  # the dropped pages, zeroed, leave the file
                _truncate_wal(db)
            self._writer = db
        return self._writer

    async def active(self, binding: str, patients: Iterable[str], now: float) -> frozenset[str]:
        """Which of ``patients`` ``binding`` holds an open session for, in any process; none
        when the file cannot be read (the caller then asks for the reason again: the safe
        direction)."""
        try:
            db = self._read_conn()
            return frozenset(
                patient
                for patient in patients
                if db.execute(
                    "SELECT 1 FROM open_session WHERE id = ? AND ends > ? AND pending_until = ?",
                    (self._id(binding, patient), now, STARTED),
                ).fetchone()
                is not None
            )
        except (sqlite3.Error, OSError):
            return frozenset()

    async def claim(self, binding: str, patient: str, ends: float, now: float) -> bool:
        """Record a session until ``ends``, pending, unless one is open (True: this process
        opened it and records its start; False: a started one is open), on the board's
        thread; lapsed rows (and inert pending ones) are deleted first. Raises
        :class:`ServiceUnavailable` when the file cannot be written, or when another's pending
        claim holds the session (the exchange then fails: nothing is released)."""
        row_id = self._id(binding, patient)
        loop = asyncio.get_running_loop()
        try:
            held = await loop.run_in_executor(self._thread, self._claim, row_id, ends, now)
        except (sqlite3.Error, OSError, RuntimeError) as exc:  # RuntimeError: closed
            raise ServiceUnavailable("break-the-glass sessions unavailable") from exc
        if held is not None and held != STARTED:
            raise BeingOpened
        return held is None

    def _claim(self, row_id: bytes, ends: float, now: float) -> float | None:
        """The ``pending_until`` of the row holding the session, None when this call wrote
        one."""
        db = self._write_conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            swept = db.execute(_SWEEP, (now, now)).rowcount
            held = db.execute(
                "SELECT pending_until FROM open_session WHERE id = ?", (row_id,)
            ).fetchone()
            if held is None:
                db.execute(
                    "INSERT INTO open_session (id, ends, pending_until, claim_ends) "
                    "VALUES (?, ?, ?, ?)",
                    (row_id, UNSTARTED, now + PENDING, ends),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if swept:
            _truncate_wal(db)
        return None if held is None else float(held[0])

    async def confirm(self, binding: str, patient: str, ends: float) -> None:
        """Mark the pending session until ``ends`` started (module docstring): honoured by
        every process from now on. A failure is swallowed (it stays pending: inert)."""
        with contextlib.suppress(ServiceUnavailable):
            await self._write(_CONFIRM, (STARTED, self._id(binding, patient), ends))

    def release(self, binding: str, patient: str, ends: float) -> Future[None]:
        """Forget the session until ``ends``, closed now (its stop recorded); a row another
        process has since claimed anew is kept. Queued on the board's thread (the event loop
        does not wait; the future is done when it ran); a row that cannot be deleted
        lapses (as after :meth:`close`)."""
        try:
            return self._thread.submit(self._release, self._id(binding, patient), ends)
        except RuntimeError:  # closed: the row lapses
            done: Future[None] = Future()
            done.set_result(None)
            return done

    def _release(self, row_id: bytes, ends: float) -> None:
        try:
            db = self._write_conn()
            gone = db.execute(
                "DELETE FROM open_session WHERE id = ? AND claim_ends = ?", (row_id, ends)
            ).rowcount
            if gone:
                _truncate_wal(db)
        except (sqlite3.Error, OSError):
            return

    async def owe(self, binding: str, patient: str, ends: float, stop: bytes) -> None:
        """Keep ``stop``, sealed, for the session until ``ends`` (on the board's thread).
        Raises :class:`ServiceUnavailable` when the file cannot be written."""
        row_id = self._id(binding, patient)
        sealed = seal_stop(self._stop_key, row_id, ends, stop)
        await self._write(
            "INSERT OR REPLACE INTO owed_stop (id, ends, stop) VALUES (?, ?, ?)",
            (row_id, ends, sealed),
        )

    async def take(self, binding: str, patient: str, ends: float, now: float) -> Owed | str:
        """Take the session's owed stop, else why not
        (:func:`~middleware.storage.breakglass_rows.verdict`, from the row read in the same
        transaction). Raises :class:`ServiceUnavailable` when the file cannot be written."""
        row_id = self._id(binding, patient)
        rows = await self._write(
            _TAKE_ONE,
            (now + LEASE, row_id, ends, now),
            then=(
                "SELECT stop, taken_until FROM owed_stop WHERE id = ? AND ends = ?",
                (row_id, ends),
            ),
        )
        if rows and len(rows[0]) == 1:  # taken
            stop = open_row(self._stop_key, row_id, ends, rows[0][0])
            if stop is None or stop is True:
                return "unreadable" if stop is None else RECORDED_BY_OTHER
            return Owed(row_id, ends, stop)
        row = (bytes(rows[0][0]), float(rows[0][1])) if rows else None
        return verdict(self._stop_key, row_id, ends, row, now)

    async def recorded(self, binding: str, patient: str, ends: float) -> bool:
        """Mark the session's stop recorded (module docstring); False when the file cannot
        be written (the caller may try again)."""
        return await self._mark(self._id(binding, patient), ends)

    async def _mark(self, row_id: bytes, ends: float) -> bool:
        sealed = seal_recorded(self._stop_key, row_id, ends)
        try:
            await self._write(_MARK, (row_id, ends, sealed, RECORDED))
        except ServiceUnavailable:
            return False
        with contextlib.suppress(ServiceUnavailable):  # forgotten at a later mark
            await self._write(_FORGET, (RECORDED, ends - KEEP), truncate=True)
        return True

    async def take_overdue(self, before: float, now: float) -> list[Owed]:
        """Take up to ``BATCH`` owed stops of sessions ended by ``before`` and not held by a
        live take; none when nothing is owed or the file cannot be used (the next sweep tries
        again). A row that does not open under this key stays taken until its lease lapses."""
        try:
            db = self._read_conn()
            due = db.execute(
                "SELECT 1 FROM owed_stop WHERE ends <= ? AND taken_until <= ? LIMIT 1",
                (before, now),
            ).fetchone()
            if due is None:
                return []
            rows = await self._write(_TAKE_OVERDUE, (now + LEASE, before, now, BATCH))
        except (sqlite3.Error, OSError, ServiceUnavailable):
            return []
        taken, unreadable = opened_all(
            self._stop_key, ((bytes(i), float(e), bytes(s)) for i, e, s in rows)
        )
        self.unreadable += unreadable
        return taken

    async def settle(self, owed: Owed, *, recorded: bool) -> bool:
        """Mark ``owed``'s row recorded once ``recorded``, else give it back (its lease ends
        now); False when the file cannot be written (the lease then lapses)."""
        if recorded:
            return await self._mark(owed.id, owed.ends)
        try:
            await self._write(
                "UPDATE owed_stop SET taken_until = 0 WHERE id = ? AND ends = ?",
                (owed.id, owed.ends),
            )
        except ServiceUnavailable:
            return False
        return True

    async def _write(
        self,
        sql: str,
        args: tuple[object, ...],
        *,
        truncate: bool = False,
        then: tuple[str, tuple[object, ...]] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement in a write transaction on the board's thread; its rows (or, when
        it has none, those of the query ``then`` in the same transaction). Raises
        :class:`ServiceUnavailable` when the file cannot be written."""

        def run() -> list[tuple[Any, ...]]:
            db = self._write_conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(sql, args).fetchall()
                if not rows and then is not None:
                    rows = db.execute(*then).fetchall()
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if truncate:
                _truncate_wal(db)
            return rows

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, run)
        except (sqlite3.Error, OSError, RuntimeError) as exc:  # RuntimeError: closed
            raise ServiceUnavailable("break-the-glass sessions unavailable") from exc

    async def aclose(self) -> None:
        """:meth:`close`, waiting for the board's thread off the event loop."""
        await asyncio.to_thread(self._close_writer)
        self.close()

    def close(self) -> None:
        """Finish the queued releases and close the file (idempotent); on the thread that
        reads (the event loop's)."""
        self._close_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _close_writer(self) -> None:
        """Finish the queued releases and close the writer, on the board's thread."""

        def close_writer() -> None:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

        with contextlib.suppress(RuntimeError):  # closed before
            self._thread.submit(close_writer)
        self._thread.shutdown(wait=True)


def _add_columns(db: sqlite3.Connection) -> None:
    """Give a file of an older version the ``pending_until`` and ``claim_ends`` columns
    (idempotent; another worker adding them at the same moment is no error). Its rows get 0:
    inert, never honoured."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(open_session)")}
    for column in ("pending_until", "claim_ends"):
        if column in columns:
            continue
        try:
            db.execute(f"ALTER TABLE open_session ADD COLUMN {column} REAL NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


def _truncate_wal(db: sqlite3.Connection) -> None:
    """Move the WAL into the file and cut it to zero bytes (deleted rows' page images go)."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
