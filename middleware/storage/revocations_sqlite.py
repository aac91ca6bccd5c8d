"""Token revocations the worker processes of one SQLite store enforce: ``<store>.revocations``.

The embedded default's counterpart of :mod:`~middleware.storage.revocations_postgres`: the
same table, in a file of its own beside the store (mode 0600, WAL mode, so a read never
waits for a writer). Each process holds the whole set in memory and, before each check, asks
its connection for ``PRAGMA data_version``, which changes when another connection (another
worker, ``consentry auth revoke``) has committed to the file since: then it reloads the set.
So a revocation binds every worker on its very next request, at the cost of one pragma per
request. A file that cannot be read raises :class:`~middleware.errors.ServiceUnavailable`
(fail closed). Reads are short and run on the event loop (like the session board's).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation, RevocationSet
from middleware.errors import ServiceUnavailable
from middleware.storage.sidecar import beside, open_beside

__all__ = ["SqliteRevocations", "record_sqlite_revocation", "revocations_path"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS consentry_token_revocations (
    kind TEXT NOT NULL CHECK (kind IN ('jti', 'subject', 'client')),
    value TEXT NOT NULL,
    before REAL,
    revoked_at REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (kind, value),
    CHECK ((kind = 'jti') = (before IS NULL))
) WITHOUT ROWID;
"""
_SUFFIX: Final = ".revocations"
_ALL: Final = "SELECT kind, value, before FROM consentry_token_revocations"
_INSERT: Final = (
    "INSERT INTO consentry_token_revocations (kind, value, before, revoked_at, reason) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, value) DO UPDATE SET "
    "before = max(consentry_token_revocations.before, excluded.before), "
    "revoked_at = excluded.revoked_at, reason = excluded.reason"
)


def revocations_path(store: str) -> Path | None:
    """The file beside a ``sqlite:`` store; None for any other store."""
    if not store.startswith("sqlite:"):
        return None
    return beside(store.removeprefix("sqlite:"), _SUFFIX)


def _connect(path: Path) -> sqlite3.Connection:
    # Created by `consentry auth revoke` run as root, the file gets the database's owner, so
    # the gateway's user can still open it (storage.sidecar).
    os.close(open_beside(path, Path(str(path).removesuffix(_SUFFIX)), os.O_RDWR))
    db = sqlite3.connect(path, timeout=2.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    return db


def record_sqlite_revocation(path: Path, revocation: Revocation, *, reason: str, at: float) -> None:
    """Insert ``revocation`` (a subject's or client's time only ever moves later). Raises
    ``sqlite3.Error`` or ``OSError``."""
    db = _connect(path)
    try:
        db.execute(_INSERT, (revocation.kind, revocation.value, revocation.before, at, reason))
    finally:
        db.close()


class SqliteRevocations:
    """The revocation list of one process on ``path`` (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._version: int | None = None
        self._set = RevocationSet()

    def _current(self) -> RevocationSet:
        if self._db is None:
            self._db = _connect(self.path)
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            rows = self._db.execute(_ALL).fetchall()
            self._set = RevocationSet.of(Revocation(k, v, b) for k, v, b in rows)
            self._version = version
        return self._set

    async def revoked(self, identity: Identity, issued_at: float | None) -> bool:
        """Whether the token is revoked (the set reloaded first if the file changed)."""
        try:
            return self._current().revokes(identity, issued_at)
        except (sqlite3.Error, OSError) as exc:
            self._version = None
            raise ServiceUnavailable("token revocation store unavailable") from exc

    async def aclose(self) -> None:
        """Close the file (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
