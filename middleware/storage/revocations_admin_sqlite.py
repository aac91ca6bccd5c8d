"""An administrator's reads and removals on a SQLite store's token revocation list
(``<store>.revocations``, :mod:`~middleware.storage.revocations_sqlite`): the rows as stored,
one row, a lift, and pruning.

None of these creates the file: a missing list holds nothing (no row to find, list, lift or
prune). A lift and a prune are one write transaction each (``BEGIN IMMEDIATE``), like a
revocation, so the three go one after another; every worker sees the change before its next
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

_COLUMNS: Final = "kind, value, before, revoked_at, reason, admin_entry, expires"
_ALL: Final = (
    f"SELECT {_COLUMNS} FROM consentry_token_revocations "  # noqa: S608  (constants only)
    "ORDER BY revoked_at, kind, value"
)
_ONE: Final = (
    f"SELECT {_COLUMNS} FROM consentry_token_revocations "  # noqa: S608  (constants only)
    "WHERE kind = ? AND value = ?"
)
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
    """The list's connection, columns upgraded; None when there is no file."""
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


def list_sqlite(path: Path) -> list[StoredRevocation]:
    """Every row, oldest first."""
    db = _open(path)
    if db is None:
        return []
    try:
        return [_row(row) for row in db.execute(_ALL).fetchall()]
    finally:
        db.close()


def find_sqlite(path: Path, kind: str, value: str) -> StoredRevocation | None:
    """The row revoking ``kind`` ``value``, if any."""
    db = _open(path)
    if db is None:
        return None
    try:
        row = db.execute(_ONE, (kind, value)).fetchone()
        return None if row is None else _row(row)
    finally:
        db.close()


def lift_sqlite(path: Path, kind: str, value: str, *, entry: int, at: float) -> Lifted:
    """Remove the row revoking ``kind`` ``value`` unless an entry after ``entry`` recorded it,
    and remember the lift (so a revocation from an earlier entry, applied later, is refused)."""
    db = connect(path, create=False)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            upgrade(db)
            row = db.execute(_ONE, (kind, value)).fetchone()
            found = None if row is None else _row(row)
            if found is None:
                lifted = Lifted("absent")
            elif found.admin_entry is not None and found.admin_entry > entry:
                lifted = Lifted("kept", found.admin_entry)
            else:
                db.execute(_DELETE, (kind, value))
                lifted = Lifted("removed")
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
