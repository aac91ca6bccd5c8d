"""An administrator's reads and removals on a PostgreSQL store's token revocation list
(``consentry_token_revocations`` in the store's schema,
:mod:`~middleware.storage.revocations_postgres`): the rows as stored, one row, a lift, and
pruning.

A lift and a prune each run in one transaction that first takes
:data:`~middleware.storage.revocations_postgres.WRITE_LOCK` (as a revocation does, so a lift
and a revocation of one thing go one after the other) and, when it removed a row, sends the
same ``NOTIFY`` as a revocation: every replica reloads its set at the commit. ``pool``'s
search_path is the store's schema, its tables made with
:data:`~middleware.storage.revocations_postgres.ADMIN_SCHEMA`.
"""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.auth.revocation import Lifted, StoredRevocation
from middleware.storage.postgres_pool import translated
from middleware.storage.revocations_postgres import CHANNEL, NOTIFY, WRITE_LOCK

__all__ = ["find_postgres", "lift_postgres", "list_postgres", "prune_postgres"]

_WHAT: Final = "token revocation"
_COLUMNS: Final = "kind, value, before, revoked_at, reason, admin_entry, expires"
_ALL: Final = (
    f"SELECT {_COLUMNS} FROM consentry_token_revocations "  # noqa: S608  (constants only)
    "ORDER BY revoked_at, kind, value"
)
_ONE: Final = (
    f"SELECT {_COLUMNS} FROM consentry_token_revocations "  # noqa: S608  (constants only)
    "WHERE kind = $1 AND value = $2"
)
_DELETE: Final = "DELETE FROM consentry_token_revocations WHERE kind = $1 AND value = $2"
# The later lift's entry stays (an older one, applied late by --ledger-entry, changes nothing).
_TOMBSTONE: Final = (
    "INSERT INTO consentry_token_revocation_lifts (kind, value, admin_entry, lifted_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (kind, value) DO UPDATE SET "
    "admin_entry = GREATEST(consentry_token_revocation_lifts.admin_entry, excluded.admin_entry), "
    "lifted_at = excluded.lifted_at"
)
_PRUNE: Final = (
    "DELETE FROM consentry_token_revocations "
    "WHERE kind = 'jti' AND expires IS NOT NULL AND expires < $1"
)


def _row(row: asyncpg.Record) -> StoredRevocation:
    return StoredRevocation(
        kind=row["kind"],
        value=row["value"],
        before=row["before"],
        revoked_at=row["revoked_at"],
        reason=row["reason"],
        admin_entry=row["admin_entry"],
        expires=row["expires"],
    )


async def list_postgres(pool: asyncpg.Pool) -> list[StoredRevocation]:
    """Every row, oldest first."""
    async with translated(_WHAT):
        return [_row(row) for row in await pool.fetch(_ALL)]


async def find_postgres(pool: asyncpg.Pool, kind: str, value: str) -> StoredRevocation | None:
    """The row revoking ``kind`` ``value``, if any."""
    async with translated(_WHAT):
        row = await pool.fetchrow(_ONE, kind, value)
    return None if row is None else _row(row)


async def lift_postgres(
    pool: asyncpg.Pool, kind: str, value: str, *, entry: int, at: float
) -> Lifted:
    """Remove the row revoking ``kind`` ``value`` unless an entry after ``entry`` recorded it,
    and remember the lift (so a revocation from an earlier entry, applied later, is refused)."""
    async with translated(_WHAT), pool.acquire() as conn, conn.transaction():
        await conn.execute(WRITE_LOCK)
        row = await conn.fetchrow(_ONE, kind, value)
        lifted = Lifted.of(None if row is None else _row(row), entry)
        if lifted.outcome == "removed":
            await conn.execute(_DELETE, kind, value)
            await conn.execute(NOTIFY, CHANNEL)
        await conn.execute(_TOMBSTONE, kind, value, entry, at)
    return lifted


async def prune_postgres(pool: asyncpg.Pool, *, expired_before: float) -> int:
    """Delete the ``jti`` rows whose recorded ``exp`` is before ``expired_before``; how many."""
    async with translated(_WHAT), pool.acquire() as conn, conn.transaction():
        await conn.execute(WRITE_LOCK)
        status = await conn.execute(_PRUNE, expired_before)
        count = int(status.rsplit(" ", 1)[-1])
        if count:
            await conn.execute(NOTIFY, CHANNEL)
    return count
