"""When the SQLite log store merges its staged audit-index rows, off the append's path.

An append stages its index rows (:mod:`~middleware.storage.audit_index_staged`); once
``merge_at`` are staged, :meth:`StagedMerge.appended` starts a merge in a task of its own and
returns at once, so the batch that passed the mark is answered like any other (its entries
are committed; its rows are found staged). The merge runs as slices of ``slice_rows`` rows,
each its own ``BEGIN IMMEDIATE`` transaction on the writer's thread: an append queued
meanwhile runs between two slices, so it waits for one slice at most, never for the whole
merge. A slice that fails is logged (no PHI: the error's class and the row counts) and
counted (:attr:`StagedMerge.failures`); its rows stay staged, still found by every search,
and the next append past the mark starts the merge again. :meth:`StagedMerge.close` merges
what is left only if this store staged rows itself: a store opened to read (the accounting,
the access report, a search from the command line) takes no write lock when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.storage import audit_index_staged
from middleware.storage.sqlite_worker import SqliteWorker

__all__ = ["StagedMerge"]


def _truncate_wal(c: sqlite3.Connection) -> None:
    """After a slice rewrote rows shredded: the WAL still holds their pages (as a shred)."""
    with contextlib.suppress(sqlite3.OperationalError):  # committed; the truncate is a bonus
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class StagedMerge:
    """The staged rows of one store's file, as far as the store knows, and their merge."""

    def __init__(self, db: SqliteWorker, staged: int = 0) -> None:
        self._db = db
        #: Staged rows in the file as far as this store knows (others may add more).
        self.staged = staged
        #: This store staged rows itself (its close merges what is left).
        self.own = False
        #: Merges that failed (logged; their rows stay staged and are merged later).
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger("consentry.ledger")

    def appended(self, rows: int, *, merge_at: int, slice_rows: int) -> None:
        """An append committed ``rows`` staged rows: start a merge in the background once
        ``merge_at`` are staged and none is running. Never waits, never raises."""
        if rows:
            self.staged += rows
            self.own = True
        running = self._task is not None and not self._task.done()
        if self.staged >= merge_at and not running:
            self._task = asyncio.create_task(
                self._background(slice_rows), name="consentry-audit-merge"
            )

    async def merge(self, slice_rows: int) -> None:
        """Merge every staged row now, a slice a transaction (a merge already running is
        waited for first). Store errors propagate (:class:`ServiceUnavailable`)."""
        await self.settle()
        await self._slices(slice_rows)

    async def settle(self) -> None:
        """Wait for the background merge, if one runs (its failure is already logged)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self, slice_rows: int) -> None:
        """The store closes: wait for the running merge, then merge what is left only if
        this store staged rows (a failure is logged: the next writer merges them)."""
        await self.settle()
        if self.own:
            try:
                await self._slices(slice_rows)
            except ServiceUnavailable as exc:
                self._failed(exc)

    async def _background(self, slice_rows: int) -> None:
        try:
            await self._slices(slice_rows)
        except Exception as exc:  # noqa: BLE001  # logged and counted; rows stay staged
            self._failed(exc)

    async def _slices(self, slice_rows: int) -> None:
        while True:
            done = await self._db.transaction(
                lambda c: audit_index_staged.merge_slice(c, slice_rows)
            )
            self.staged = max(0, self.staged - done.moved)
            if done.shredded:
                await self._db.run(_truncate_wal)
            if done.moved < slice_rows:
                self.staged = 0  # the rest of the file's staging was in that slice
                return

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._log.warning(
            "audit index merge failed; rows stay staged",
            error=type(exc).__name__,
            staged=self.staged,
            failures=self.failures,
        )
