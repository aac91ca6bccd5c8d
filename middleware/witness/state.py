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
- :meth:`WitnessState.keep_evidence` stores a validly signed request that conflicts with the
  cosigned state (a fork, a bad proof), as tlog-witness allows: proof of log misbehaviour.
- Tree sizes are stored as decimal text: they are uint64 and SQLite integers are signed.
- Losing this file means the witness forgets what it cosigned: retire the witness key then,
  do not restart it with an empty file (it would cosign a rolled-back or forked log).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from middleware.witness.protocol import LogState

__all__ = ["WitnessState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS witness_log (
    origin TEXT PRIMARY KEY,
    size TEXT NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_evidence (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    request BLOB NOT NULL
);
"""


class WitnessState:
    """The state file. Thread-safe (one connection behind a lock); call from worker threads."""

    def __init__(self, path: Path) -> None:
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

    def keep_evidence(self, origin: str, status: int, reason: str, request: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO witness_evidence (origin, received_at, status, reason, request)"
                " VALUES (?, ?, ?, ?, ?)",
                (origin, int(time.time()), status, reason, request),
            )

    def evidence(self, origin: str) -> list[tuple[int, str, bytes]]:
        """The kept requests of ``origin``, oldest first: ``(status, reason, request)``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, reason, request FROM witness_evidence WHERE origin = ? ORDER BY id",
                (origin,),
            ).fetchall()
        return [(int(s), str(r), bytes(b)) for s, r, b in rows]

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
