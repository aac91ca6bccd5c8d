"""One SQLite connection driven by one worker thread: the plumbing every SQLite store shares.

WAL lets readers run beside the writer; ``synchronous=FULL`` syncs the WAL on every commit, so
a commit that returned survives power loss (https://sqlite.org/pragma.html#pragma_synchronous).
Writes run under ``BEGIN IMMEDIATE``, which takes the database's write lock before the first
read, so several processes may share one file; the others wait up to ``busy_timeout`` seconds
(https://sqlite.org/lang_transaction.html).

One worker thread (a single-thread executor) rather than ``asyncio.to_thread`` plus a lock,
because a cancelled awaiter does not stop its thread: with one worker the next call still waits
until the transaction in flight has committed or rolled back. SQLite errors become
:class:`~middleware.errors.ServiceUnavailable` in :meth:`SqliteWorker.run`, the one place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from middleware.errors import ServiceUnavailable
from middleware.storage.write_lock import WriteLock

__all__ = ["SqliteWorker"]

T = TypeVar("T")


class SqliteWorker:
    """A connection to ``path`` (``what`` names the store in error messages); call
    :meth:`connect` once, then :meth:`run` / :meth:`transaction`; :meth:`close` is idempotent."""

    def __init__(
        self,
        path: Path,
        *,
        what: str,
        schema: str,
        busy_timeout: float = 10.0,
        pragmas: Sequence[str] = (),
        read_only: bool = False,
    ) -> None:
        """``read_only``: open an existing file only (``mode=ro``, ``query_only``), without
        ``schema`` or the WAL pragma, so connecting writes nothing and creates no file."""
        self.path = path
        self._what = what
        self._schema = "" if read_only else schema
        self._busy_timeout = busy_timeout
        self._read_only = read_only
        self._pragmas: tuple[str, ...] = (
            ("query_only=ON", *pragmas)
            if read_only
            else ("journal_mode=WAL", "synchronous=FULL", *pragmas)
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"consentry-sqlite-{what}")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._closed = False
        # Writers of one gateway take turns through it, not through SQLite's busy naps.
        self._turn = None if read_only else WriteLock(path)

    async def connect(self) -> None:
        """Open the connection, set the pragmas and run the schema script (which brackets
        itself in ``BEGIN IMMEDIATE ... COMMIT``: Python 3.11's ``executescript`` commits any
        open transaction first, so it cannot run inside ours)."""

        def attempt() -> sqlite3.Connection:
            conn = self._open(self._busy_timeout)
            try:
                for pragma in self._pragmas:
                    conn.execute(f"PRAGMA {pragma}")
                conn.executescript(self._schema)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
                raise
            return conn

        def connect() -> None:
            # Switching a new file to WAL needs an exclusive lock, and SQLite does not always
            # run the busy handler for it: replicas opening one new file at once can get
            # "database is locked" at once. Retry until busy_timeout, like the handler would.
            deadline = time.monotonic() + self._busy_timeout
            delay = 0.005
            while True:
                try:
                    self._conn = attempt()
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                else:
                    return

        await self._submit(connect)

    def _open(self, timeout: float) -> sqlite3.Connection:
        """A connection to the file: read-only (``mode=ro``: a missing file is an error, never
        created: :class:`ServiceUnavailable` naming the path) if this worker is."""
        if not self._read_only:
            return sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        if not self.path.is_file():
            raise ServiceUnavailable(f"{self._what} store: no SQLite file at {self.path}")
        uri = f"{self.path.absolute().as_uri()}?mode=ro"
        return sqlite3.connect(uri, timeout=timeout, isolation_level=None, uri=True)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the connection on the worker thread."""

        def call() -> T:
            if self._conn is None:
                raise ServiceUnavailable(f"{self._what} store is closed")
            return fn(self._conn)

        return await self._submit(call)

    async def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run the short read ``fn`` at once, on the event loop's own read-only connection.

        For small indexed reads on the hot path (a patient's consent mark on every request):
        handing a query to the worker thread and back costs a thread wake-up each way (about
        0.1 ms here), the query itself a few microseconds. In WAL mode a reader never waits
        for writers (https://sqlite.org/wal.html#concurrency); should the file be busy all the
        same (WAL recovery), the read goes through the worker thread instead.
        """
        if self._closed or self._conn is None:
            raise ServiceUnavailable(f"{self._what} store is closed")
        try:
            if self._reader is None:
                reader = self._open(0.05)
                reader.execute("PRAGMA query_only=ON")
                self._reader = reader
            return fn(self._reader)
        except sqlite3.OperationalError:
            return await self.run(fn)
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"{self._what} store unavailable") from exc

    async def transaction(
        self, body: Callable[[sqlite3.Connection], T], *, begin: str = "BEGIN IMMEDIATE"
    ) -> T:
        """Run ``body`` in one transaction: committed if it returns, rolled back if it raises."""

        def call(conn: sqlite3.Connection) -> T:
            turn = self._turn if begin == "BEGIN IMMEDIATE" else None
            held = turn is not None and turn.acquire(self._busy_timeout)
            if turn is not None and not held:  # its holder is stuck in its transaction
                raise sqlite3.OperationalError("database is locked (write turn)")
            try:
                conn.execute(begin)
                try:
                    result = body(conn)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            finally:
                if held and turn is not None:
                    turn.release()

        return await self.run(call)

    async def ping(self) -> None:
        """Return when the database answers."""
        await self.run(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        if self._turn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._turn.close)
        self._executor.shutdown(wait=False)

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise ServiceUnavailable(f"{self._what} store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"{self._what} store unavailable") from exc
