"""Taking turns at a SQLite file's write lock across processes, without SQLite's long naps.

Several processes of one gateway (``consentry serve --workers N``) append to one file. SQLite
lets one write at a time; a process that finds the lock taken runs the busy handler, which
sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries
(``sqliteDefaultBusyCallback`` in SQLite's ``main.c``) while a commit holds the lock about a
millisecond (one WAL fsync). Measured with two workers (docs/performance.md): the waiting
process overslept the release by milliseconds, so each worker's group commit stalled and the
p99 grew fivefold.

:class:`WriteLock` is an advisory ``flock`` on a file beside the database (``<db>.write-lock``,
mode 0600) that every writer of the gateway takes before ``BEGIN IMMEDIATE`` and drops after
``COMMIT``/``ROLLBACK``. A waiter tries again after 50 µs, doubling up to 1 ms, so it gets the
lock within a millisecond of its release; SQLite's own lock is then free (the holder has
committed) unless a process that does not take this lock writes (``consentry audit`` and
``ledger`` commands), which SQLite's busy handler still covers. The kernel drops the lock of
a process that dies. Blocking calls: run them on the store's worker thread.

A lock file this process cannot open or lock (left by another user, say a CLI command run as
root, mode 0600; a read-only directory; a file system without ``flock``) does not fail the
writes: the turns are an optimisation, SQLite's own lock keeps the writes correct. The lock
then goes without turns (every :meth:`~WriteLock.acquire` answers True at once), logged once
with the path and the error, and writers wait in SQLite's busy handler as before it existed.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Final

from middleware.logging import get_logger
from middleware.storage.sidecar import beside, open_beside

__all__ = ["WriteLock"]

_FIRST_WAIT: Final = 0.00005
_LONGEST_WAIT: Final = 0.001


class WriteLock:
    """The write turn of the SQLite file at ``database`` (module docstring)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = beside(database, ".write-lock")  # the real file's: storage.sidecar
        self._fd: int | None = None
        #: Set when the lock file cannot be used: no turns from then on (module docstring).
        self.unusable: OSError | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the turn, waiting at most ``timeout`` seconds; False when it was not free by
        then (its holder is stuck: the caller fails as SQLite's busy timeout would). True at
        once, without a turn, when the lock file cannot be used (module docstring)."""
        if self.unusable is not None:
            return True
        try:
            if self._fd is None:
                self._fd = open_beside(self.path, self.database, os.O_RDWR | os.O_CLOEXEC)
            deadline = time.monotonic() + timeout
            wait = _FIRST_WAIT
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() + wait > deadline:
                        return False
                    time.sleep(wait)
                    wait = min(wait * 2, _LONGEST_WAIT)
                else:
                    return True
        except OSError as exc:
            self._give_up(exc)
            return True

    def _give_up(self, exc: OSError) -> None:
        self.unusable = exc
        self.close()
        get_logger("consentry.store").warning(
            "write lock file unusable; writers wait in SQLite's busy handler instead",
            path=str(self.path),
            error=f"{type(exc).__name__}: {exc.strerror or exc}",
        )

    def release(self) -> None:
        """Give the turn up (only after :meth:`acquire` returned True)."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as exc:  # closing the file drops the lock all the same
                self._give_up(exc)

    def close(self) -> None:
        """Close the lock file (releasing the turn if held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
