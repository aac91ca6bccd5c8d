"""The PostgreSQL plumbing every PostgreSQL store shares: error translation and opening a pool
whose ``search_path`` is the store's schema, with the schema and tables created once.

asyncpg, OS and timeout errors become :class:`~middleware.errors.ServiceUnavailable` in
:func:`translated`, the one place. Schema creation runs under the DDL advisory lock
(:data:`~middleware.storage.ledger_postgres_schema.DDL_LOCK`), so replicas (and the log and
consent stores of one replica) starting together create each object once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable
from middleware.storage.ledger_postgres_schema import DDL_LOCK

__all__ = ["open_pool", "translated"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCHEMA_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn database errors inside the block into ``ServiceUnavailable`` naming ``what``."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise ServiceUnavailable(f"{what} store unavailable") from exc


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """A pool's reset for sessions that keep no state (asyncpg has rolled back any open
    transaction before calling it)."""


async def open_pool(
    dsn: str,
    *,
    schema: str,
    ddl: str | None,
    what: str,
    min_size: int = 1,
    max_size: int = 10,
    session_state: bool = True,
) -> asyncpg.Pool:
    """A pool on ``dsn`` with ``search_path`` = ``schema``, after creating the schema (if
    missing) and running ``ddl`` in one transaction under the DDL lock.

    ``ddl=None``: a read-only pool (``default_transaction_read_only``) that creates nothing;
    the caller checks that its tables exist. ``session_state=False``: the caller promises its
    statements leave nothing in a session past its transaction (no ``SET`` but ``SET
    LOCAL``, no session advisory lock, no ``LISTEN``, no cursor ``WITH HOLD``), so a released
    connection is not reset with asyncpg's reset query, one round trip per release (an open
    transaction is still rolled back)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema name {schema!r} is not a plain lowercase identifier")
    settings = {"search_path": schema}
    if ddl is None:
        settings["default_transaction_read_only"] = "on"
    async with translated(what):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=settings,
            reset=None if session_state else _nothing_to_reset,
        )
    if ddl is None:
        return pool
    try:
        async with translated(what), pool.acquire() as conn, conn.transaction():
            await conn.execute(DDL_LOCK, schema)
            # Look before creating: CREATE SCHEMA IF NOT EXISTS still needs the CREATE
            # privilege on the database, which a least-privilege role may lack.
            if not await conn.fetchval(_SCHEMA_EXISTS, schema):
                await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(ddl)
    except BaseException:
        await pool.close()
        raise
    return pool
