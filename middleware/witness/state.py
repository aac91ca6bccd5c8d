"""The witness's state file: SQLite, one row per log, and the evidence it kept.

Contract:

- :meth:`WitnessState.get` returns what the witness last cosigned for an origin
  (:meth:`LogState.empty` if never).
- :meth:`WitnessState.swap` is the atomic compare-and-swap tlog-witness requires: in one
  ``BEGIN IMMEDIATE`` transaction it reads the row, and only if it still holds the size and
  root the caller checked against does it write the new checkpoint; it returns after a
  durable commit (WAL, ``synchronous=FULL``: the commit is on disk, not only in the OS). If
  another request (this process or another on the same file) moved the log in between, it
  writes nothing and returns the current state, and the caller answers 409 with its size.
  A ``new`` equal to ``expected`` (the same checkpoint again) is confirmed the same way,
  inside the transaction, and nothing is written.
- :meth:`WitnessState.keep_fork` stores a fork (a checkpoint of the cosigned size with another
  root, with only the log's verified signatures), as tlog-witness allows: proof of log
  misbehaviour. Kept once per checkpoint text (UNIQUE SHA-256 of it) and at most
  ``fork_cap`` per origin, so what anyone can send cannot grow the file without limit (only
  the log's key can make a fork at all).
- Tree sizes are stored as decimal text: they are uint64 and SQLite integers are signed.
- Losing this file means the witness forgets what it cosigned: retire the witness key then,
  do not restart it with an empty file (it would cosign a rolled-back or forked log).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

from middleware.ledger.note import SignedNote
from middleware.witness.protocol import LogState

__all__ = ["FORK_CAP", "ForkOutcome", "WitnessState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS witness_log (
    origin TEXT PRIMARY KEY,
    size TEXT NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_fork (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS witness_fork_origin ON witness_fork (origin);
"""

#: Forks kept per origin: a log that signed this many has long been caught.
FORK_CAP = 1000

#: What :meth:`WitnessState.keep_fork` did: stored it, had it already, or had no room.
ForkOutcome = Literal["kept", "known", "full"]


class WitnessState:
    """The state file. Thread-safe (one connection behind a lock); call from worker threads."""

    def __init__(self, path: Path, *, fork_cap: int = FORK_CAP) -> None:
        self._fork_cap = fork_cap
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    def get(self, origin: str) -> LogState:
        with self._lock:
            return self._read(origin)

    def swap(self, expected: LogState, new: LogState) -> tuple[bool, LogState]:
        """Record ``new`` if the log still is at ``expected``; ``(True, new)`` once durable,
        else ``(False, current)`` with nothing written."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                current = self._read(expected.origin)
                if (current.size, current.root_hash) != (expected.size, expected.root_hash):
                    self._db.execute("ROLLBACK")
                    return False, current
                if (new.size, new.root_hash) == (current.size, current.root_hash):
                    self._db.execute("ROLLBACK")  # confirmed; the stored note stays
                    return True, current
                self._db.execute(
                    "INSERT INTO witness_log (origin, size, root, note, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                    " size = excluded.size, root = excluded.root, note = excluded.note,"
                    " updated_at = excluded.updated_at",
                    (new.origin, str(new.size), new.root_hash, new.note, int(time.time())),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return True, new

    def keep_fork(self, origin: str, note: SignedNote) -> ForkOutcome:
        """Keep ``note`` (a fork, signatures by the log only) unless its text is kept already
        or ``origin`` has ``fork_cap`` forks; durable before it returns "kept"."""
        digest = hashlib.sha256(note.message).digest()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                outcome: ForkOutcome = "kept"
                count = "SELECT count(*) FROM witness_fork WHERE origin = ?"
                if self._db.execute(
                    "SELECT 1 FROM witness_fork WHERE digest = ?", (digest,)
                ).fetchone():
                    outcome = "known"
                elif self._db.execute(count, (origin,)).fetchone()[0] >= self._fork_cap:
                    outcome = "full"
                else:
                    self._db.execute(
                        "INSERT OR IGNORE INTO witness_fork (origin, digest, received_at, note)"
                        " VALUES (?, ?, ?, ?)",
                        (origin, digest, int(time.time()), note.format()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return outcome

    def forks(self, origin: str) -> list[str]:
        """The forks kept for ``origin``, oldest first: each a signed note."""
        with self._lock:
            rows = self._db.execute(
                "SELECT note FROM witness_fork WHERE origin = ? ORDER BY id", (origin,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read(self, origin: str) -> LogState:
        row = self._db.execute(
            "SELECT size, root, note FROM witness_log WHERE origin = ?", (origin,)
        ).fetchone()
        if row is None:
            return LogState.empty(origin)
        return LogState(origin, int(row[0]), bytes(row[1]), str(row[2]))
