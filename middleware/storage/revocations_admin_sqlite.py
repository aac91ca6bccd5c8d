"""An administrator's reads and removals on a SQLite store's token revocation list
(``<store>.revocations``, :mod:`~middleware.storage.revocations_sqlite`): the rows as stored,
one row, a lift, and pruning.

None of these creates the file: a missing list holds nothing (no row to find, list, lift or
prune). A list and a find are reads (one snapshot; they take no write lock, so they never wait
for a writer nor hold one up; a list an earlier version wrote reads its missing columns as
NULL, as the upgrade would fill them). A lift and a prune are one write transaction each
(``BEGIN IMMEDIATE``, adding those columns first), like a revocation, so the three go one
after another; every worker sees the change before its next
check (``PRAGMA data_version``). Each function blocks: run it on a worker thread. Raises
``sqlite3.Error`` or ``OSError``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from middleware.auth.revocation import Lifted, StoredRevocation
from middleware.storage.revocations_sqlite import connect, upgrade

__all__ = ["find_sqlite", "lift_sqlite", "list_sqlite", "prune_sqlite"]

_NAMES: Final = ("kind", "value", "before", "revoked_at", "reason", "admin_entry", "expires")
_COLUMNS: Final = ", ".join(_NAMES)
_FROM: Final = " FROM consentry_token_revocations "
_ORDER: Final = "ORDER BY revoked_at, kind, value"
_WHERE: Final = "WHERE kind = ? AND value = ?"
_ONE: Final = f"SELECT {_COLUMNS}{_FROM}{_WHERE}"
_DELETE: Final = "DELETE FROM consentry_token_revocations WHERE kind = ? AND value = ?"
# The later lift's entry stays (an older one, applied late by --ledger-entry, changes nothing).
_TOMBSTONE: Final = (
    "INSERT INTO consentry_token_revocation_lifts (kind, value, admin_entry, lifted_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (kind, value) DO UPDATE SET "
    "admin_entry = max(consentry_token_revocation_lifts.admin_entry, excluded.admin_entry), "
    "lifted_at = excluded.lifted_at"
)
_PRUNE: Final = (
    "DELETE FROM consentry_token_revocations "
    "WHERE kind = 'jti' AND expires IS NOT NULL AND expires < ?"
)


def _row(row: tuple[object, ...]) -> StoredRevocation:
    kind, value, before, revoked_at, reason, entry, expires = row
    return StoredRevocation(
        kind=str(kind),
        value=str(value),
        before=None if before is None else float(str(before)),
        revoked_at=float(str(revoked_at)),
        reason=str(reason),
        admin_entry=None if entry is None else int(str(entry)),
        expires=None if expires is None else float(str(expires)),
    )


def _open(path: Path) -> sqlite3.Connection | None:
    """The list's connection, columns upgraded (a write); None when there is no file."""
    if not path.is_file():
        return None
    db = connect(path, create=False)
    try:
        db.execute("BEGIN IMMEDIATE")
        upgrade(db)
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


def _read(path: Path, condition: str, args: tuple[str, ...] = ()) -> list[StoredRevocation]:
    """The rows meeting ``condition`` (SQL after ``FROM``), in one read transaction (no write
    lock; module docstring); none when there is no file."""
    if not path.is_file():
        return []
    db = connect(path, create=False)
    try:
        db.execute("BEGIN")  # deferred: a read snapshot of the columns and the rows
        present = {r[1] for r in db.execute("PRAGMA table_info(consentry_token_revocations)")}
        columns = ", ".join(c if c in present else f"NULL AS {c}" for c in _NAMES)
        rows = db.execute(f"SELECT {columns}{_FROM}{condition}", args).fetchall()
        db.execute("COMMIT")
        return [_row(row) for row in rows]
    finally:
        db.close()


def list_sqlite(path: Path) -> list[StoredRevocation]:
    """Every row, oldest first (a read)."""
    return _read(path, _ORDER)


def find_sqlite(path: Path, kind: str, value: str) -> StoredRevocation | None:
    """The row revoking ``kind`` ``value``, if any (a read)."""
    found = _read(path, _WHERE, (kind, value))
    return found[0] if found else None


def lift_sqlite(path: Path, kind: str, value: str, *, entry: int, at: float) -> Lifted:
    """Remove the row revoking ``kind`` ``value`` unless an entry after ``entry`` recorded it,
    and remember the lift (so a revocation from an earlier entry, applied later, is refused)."""
    db = connect(path, create=False)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            upgrade(db)
            row = db.execute(_ONE, (kind, value)).fetchone()
            lifted = Lifted.of(None if row is None else _row(row), entry)
            if lifted.outcome == "removed":
                db.execute(_DELETE, (kind, value))
            db.execute(_TOMBSTONE, (kind, value, entry, at))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return lifted
    finally:
        db.close()


def prune_sqlite(path: Path, *, expired_before: float) -> int:
    """Delete the ``jti`` rows whose recorded ``exp`` is before ``expired_before``; how many."""
    db = _open(path)
    if db is None:
        return 0
    try:
        return db.execute(_PRUNE, (expired_before,)).rowcount
    finally:
        db.close()
