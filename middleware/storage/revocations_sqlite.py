"""Token revocations the worker processes of one SQLite store enforce: ``<store>.revocations``.

The embedded default's counterpart of :mod:`~middleware.storage.revocations_postgres`: the
same table, in a file of its own beside the store (mode 0600, WAL mode, so a read never
waits for a writer). Each process holds the whole set in memory and, before each check, asks
its connection for ``PRAGMA data_version``, which changes when another connection (another
worker, ``consentry auth revoke``) has committed to the file since: then it reloads the set.
So a revocation binds every worker on its very next request, at the cost of one pragma and
one ``stat`` of the path per request. A file that cannot be read raises
:class:`~middleware.errors.ServiceUnavailable` (fail closed) and drops the connection, so the
next check opens the file afresh; so does a path that no longer names the open file (deleted
and recreated, or replaced: its device and inode differ), so a replacement is enforced at once
rather than the unlinked file's rows. The path is checked before and after each open, and an
open during which it changed is retried, so the file recorded is the file opened. A list
creates the file only at its first open (a new store); once open, it reopens only a file that
exists: a path deleted while the gateway runs is a 503 on every check until the file is back
(``consentry auth revoke``, or a restore), never an empty list that accepts every revoked
token again. The pragma runs on the event loop; a reload (O(rows))
runs on a worker thread while checks wait for it. Rows are read back with
:meth:`~middleware.auth.revocation.RevocationSet.of_rows` (a bad row is skipped, counted and
logged, never an error). After :meth:`SqliteRevocations.aclose` every check is a 503: the
file is never reopened behind the gateway's back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Final
from urllib.parse import quote

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation, RevocationSet
from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.storage.sidecar import beside, open_beside

__all__ = [
    "SqliteRevocations",
    "connect",
    "record_sqlite_revocation",
    "revocations_path",
    "upgrade",
]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS consentry_token_revocations (
    kind TEXT NOT NULL CHECK (kind IN ('jti', 'subject', 'client')),
    value TEXT NOT NULL,
    before REAL,
    revoked_at REAL NOT NULL,
    reason TEXT NOT NULL,
    admin_entry INTEGER,
    expires REAL,
    PRIMARY KEY (kind, value),
    CHECK ((kind = 'jti') = (before IS NULL))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consentry_token_revocation_lifts (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    admin_entry INTEGER NOT NULL,
    lifted_at REAL NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
"""
#: Columns a list written by an earlier version lacks (added by :func:`upgrade`).
_ADDED: Final = (("admin_entry", "INTEGER"), ("expires", "REAL"))
_SUFFIX: Final = ".revocations"
#: Opens tried while the path keeps naming another file before the check is a 503.
_ATTEMPTS: Final = 3
_ALL: Final = "SELECT kind, value, before FROM consentry_token_revocations"
# admin_entry: the later of the two (either may be NULL); expires: the later, NULL (unknown:
# never pruned) if either is (SQLite's max() of a NULL is NULL).
_INSERT: Final = (
    "INSERT INTO consentry_token_revocations "
    "(kind, value, before, revoked_at, reason, admin_entry, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, value) DO UPDATE SET "
    "before = max(consentry_token_revocations.before, excluded.before), "
    "revoked_at = excluded.revoked_at, reason = excluded.reason, "
    "admin_entry = max(coalesce(consentry_token_revocations.admin_entry, excluded.admin_entry), "
    "coalesce(excluded.admin_entry, consentry_token_revocations.admin_entry)), "
    "expires = max(consentry_token_revocations.expires, excluded.expires)"
)
_LIFTED: Final = (
    "SELECT admin_entry FROM consentry_token_revocation_lifts WHERE kind = ? AND value = ?"
)


def revocations_path(store: str) -> Path | None:
    """The file beside a ``sqlite:`` store; None for any other store."""
    if not store.startswith("sqlite:"):
        return None
    return beside(store.removeprefix("sqlite:"), _SUFFIX)


def _create(path: Path) -> None:
    # Created by `consentry auth revoke` run as root, the file gets the database's owner, so
    # the gateway's user can still open it (storage.sidecar).
    os.close(open_beside(path, Path(str(path).removesuffix(_SUFFIX)), os.O_RDWR))


def _connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection to the file at ``path``, created first if ``create``; otherwise a
    missing file raises ``sqlite3.OperationalError`` (SQLite's ``mode=rw`` URI)."""
    if create:
        _create(path)
    # mode=rw: open, never create (sqlite3.connect alone creates a missing file).
    target = f"file:{quote(str(path.absolute()))}?mode=rw"
    # check_same_thread off: a reload reads on a worker thread, one at a time (the lock).
    db = sqlite3.connect(
        target, timeout=2.0, isolation_level=None, check_same_thread=False, uri=True
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection to the list at ``path`` for an administrator's command (created first
    only if ``create``); raises ``sqlite3.Error`` or ``OSError``."""
    return _connect(path, create=create)


def upgrade(db: sqlite3.Connection) -> None:
    """Add the columns a list written by an earlier version lacks (NULL in its rows)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(consentry_token_revocations)")}
    for name, kind in _ADDED:
        if name not in columns:
            db.execute(f"ALTER TABLE consentry_token_revocations ADD COLUMN {name} {kind}")


def record_sqlite_revocation(
    path: Path,
    revocation: Revocation,
    *,
    reason: str,
    at: float,
    entry: int | None = None,
    expires: float | None = None,
) -> int | None:
    """Insert ``revocation``, recorded by admin entry ``entry`` (a subject's or client's time
    only ever moves later); None once done. A lift recorded by an entry after ``entry``
    (:mod:`middleware.storage.revocations_admin_sqlite`) wins: nothing is written and its
    entry is returned. One write transaction, so a concurrent lift goes before or after it.
    Raises ``sqlite3.Error`` or ``OSError``."""
    db = _connect(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            upgrade(db)
            if entry is not None:
                lift = db.execute(_LIFTED, (revocation.kind, revocation.value)).fetchone()
                if lift is not None and lift[0] > entry:
                    db.execute("ROLLBACK")
                    return int(lift[0])
            db.execute(
                _INSERT,
                (revocation.kind, revocation.value, revocation.before, at, reason, entry, expires),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return None
    finally:
        db.close()


def _identity(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _open(path: Path, *, create: bool) -> tuple[sqlite3.Connection, tuple[int, int]]:
    """A connection and the (st_dev, st_ino) of the file it opened: the path's identity
    before and after the open agree (SQLite gives no descriptor to ``fstat``). Raises
    ``sqlite3.Error`` or ``OSError`` (also when the path kept changing)."""
    if create:
        _create(path)
    for _ in range(_ATTEMPTS):
        before = _identity(path)
        db = _connect(path, create=False)
        try:
            after = _identity(path)
        except BaseException:
            db.close()
            raise
        if after == before:
            return db, after
        db.close()  # replaced while it was opened: which file `db` has is unknown
    raise OSError("the token revocation file kept changing while it was opened")


class SqliteRevocations:
    """The revocation list of one process on ``path`` (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # the open file's (st_dev, st_ino)
        self._version: int | None = None
        self._set = RevocationSet()
        self._reloading = asyncio.Lock()
        self._closed = False
        self._was_open = False  # opened once: never created again (module docstring)
        #: Rows skipped by the last reload (not usable revocations).
        self.skipped = 0
        self._log = get_logger("consentry.auth")

    def _drop(self) -> None:
        db, self._db, self._file, self._version = self._db, None, None, None
        if db is not None:
            db.close()

    def _opened(self) -> sqlite3.Connection:
        """The connection, (re)opened when there is none or the path names another file."""
        if self._db is not None and _identity(self.path) != self._file:
            self._drop()
        if self._db is None:
            self._db, self._file = _open(self.path, create=not self._was_open)
            self._was_open = True
        return self._db

    def _load(self, db: sqlite3.Connection) -> RevocationSet:
        held, skipped = RevocationSet.of_rows(db.execute(_ALL).fetchall())
        if skipped:
            self._log.warning("unusable token revocation rows skipped", count=skipped)
        self.skipped = skipped
        return held

    async def _current(self) -> RevocationSet:
        async with self._reloading:  # a check waits for a reload in progress
            if self._closed:
                raise ServiceUnavailable("token revocation store closed")
            try:
                db = self._opened()
                version = db.execute("PRAGMA data_version").fetchone()[0]
                if version != self._version:
                    self._set = await asyncio.to_thread(self._load, db)
                    self._version = version
            except (sqlite3.Error, OSError) as exc:
                self._drop()
                raise ServiceUnavailable("token revocation store unavailable") from exc
            return self._set

    async def revoked(self, identity: Identity, issued_at: float | None) -> bool:
        """Whether the token is revoked (the set reloaded first if the file changed)."""
        return (await self._current()).revokes(identity, issued_at)

    async def aclose(self) -> None:
        """Close the file (idempotent); later checks are refused (module docstring)."""
        async with self._reloading:
            self._closed = True
            self._drop()
