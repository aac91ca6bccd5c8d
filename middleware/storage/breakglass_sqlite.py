"""Open break-the-glass sessions in a SQLite file every worker of one gateway reads.

:class:`~middleware.pipeline.breakglass.BreakGlass` keeps the sessions a process opened (with
the caller's identity, for the stop event it records); this board tells every process which
sessions are open, so a worker that did not see the request opening one honours it, and two
workers never both start one. A row is ``(binding, patient) -> ends``: who (the caller's
issuer/subject/client binding), for whom, until when; nothing else (no reason, no identity).

The file is its own (``<store>.sessions`` beside a SQLite store): a session check never waits
for a ledger commit. Calls are synchronous and short (an indexed read; a write only when a
session opens or closes), made on the event loop like
:meth:`~middleware.storage.sqlite_worker.SqliteWorker.read_now`; WAL mode, so a read never
waits for a writer. A row whose ``ends`` has passed is not a session: a process that died
with its sessions open leaves rows that lapse by themselves.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

__all__ = ["SqliteSessionBoard", "session_board", "sessions_path"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS session (
    binding TEXT NOT NULL,
    patient TEXT NOT NULL,
    ends REAL NOT NULL,
    PRIMARY KEY (binding, patient)
) WITHOUT ROWID;
"""


def sessions_path(store: str) -> Path | None:
    """The board's file beside a ``sqlite:`` store; None for any other store (sessions then
    stay in each process, which asks for the reason again: the safe direction)."""
    if not store.startswith("sqlite:"):
        return None
    return Path(str(Path(store.removeprefix("sqlite:"))) + ".sessions")


def session_board(store: str) -> SqliteSessionBoard | None:
    """The board of the ``store`` setting's gateway, None when it has none (sessions_path)."""
    path = sessions_path(store)
    return None if path is None else SqliteSessionBoard(path)


class SqliteSessionBoard:
    """The shared board (module docstring); opened on first use, file mode 0600."""

    def __init__(self, path: Path, *, busy_timeout: float = 2.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def active(self, binding: str, now: float) -> frozenset[str]:
        """The patients ``binding`` holds an open session for, in any process; none when the
        file cannot be read (the caller then asks for the reason again: the safe
        direction)."""
        try:
            rows = self._conn().execute(
                "SELECT patient FROM session WHERE binding = ? AND ends > ?", (binding, now)
            )
            return frozenset(patient for (patient,) in rows)
        except (sqlite3.Error, OSError):
            return frozenset()

    def claim(self, binding: str, patient: str, ends: float, now: float) -> bool:
        """Record a session until ``ends`` unless one is open (True: this process opened it
        and records its start). A lapsed row is replaced. Raises ``sqlite3.Error`` when the
        file cannot be written (the exchange then fails: nothing is released)."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT ends FROM session WHERE binding = ? AND patient = ?", (binding, patient)
            ).fetchone()
            if row is not None and row[0] > now:
                db.execute("ROLLBACK")
                return False
            db.execute(
                "INSERT OR REPLACE INTO session (binding, patient, ends) VALUES (?, ?, ?)",
                (binding, patient, ends),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return True

    def release(self, binding: str, patient: str, ends: float) -> None:
        """Forget the session until ``ends``, closed now (its stop recorded); a row another
        process has since claimed anew is kept. A row that cannot be deleted lapses."""
        try:
            self._conn().execute(
                "DELETE FROM session WHERE binding = ? AND patient = ? AND ends = ?",
                (binding, patient, ends),
            )
        except (sqlite3.Error, OSError):
            return

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
