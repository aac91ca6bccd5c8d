"""The token revocation list a ``store`` setting's gateway enforces
(:class:`~middleware.auth.revocation.RevocationList`), and recording a revocation in it.

- ``sqlite:PATH``: a file beside the store, read by every worker process
  (:mod:`~middleware.storage.revocations_sqlite`);
- ``postgresql://...``: a table in the log store's schema, pushed to every replica by
  LISTEN/NOTIFY (:mod:`~middleware.storage.revocations_postgres`);
- ``memory:``: none (a development store: nothing to share).

:func:`ledger_exists` and :func:`where` serve ``consentry auth revoke``, which must write to
the list a running gateway reads, never to a new store it created by mistake.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.auth.revocation import Revocation
from middleware.errors import ServiceUnavailable, SettingsError
from middleware.storage.breakglass_open import store_schema
from middleware.storage.ledger_base import LogStore
from middleware.storage.postgres_pool import open_pool, translated
from middleware.storage.revocations_postgres import SCHEMA, PostgresRevocations, record_revocation
from middleware.storage.revocations_sqlite import (
    SqliteRevocations,
    record_sqlite_revocation,
    revocations_path,
)

__all__ = ["ledger_exists", "record", "token_revocations", "where"]

_POSTGRES = ("postgresql://", "postgres://")


def token_revocations(
    store: str, *, log_store: Callable[[], Awaitable[LogStore]] | None = None
) -> SqliteRevocations | PostgresRevocations | None:
    """The list of the gateway whose ``store`` setting is ``store`` (module docstring); the
    PostgreSQL table joins ``log_store``'s schema (``public`` without it)."""
    if store.startswith(_POSTGRES):

        async def schema() -> str:
            return "public" if log_store is None else store_schema(await log_store())

        return PostgresRevocations(store, schema=schema)
    path = revocations_path(store)
    return None if path is None else SqliteRevocations(path)


async def record(
    store: str, revocation: Revocation, *, reason: str, at: float, schema: str = "public"
) -> None:
    """Record ``revocation`` in the list of ``store`` (tables in ``schema`` for PostgreSQL);
    raises :class:`ServiceUnavailable` when it cannot be written, :class:`SettingsError` for
    a store that has no list."""
    if store.startswith(_POSTGRES):
        pool = await open_pool(store, schema=schema, ddl=SCHEMA, what="token revocation")
        try:
            await record_revocation(pool, revocation, reason=reason, at=at)
        finally:
            await pool.close()
        return
    path = revocations_path(store)
    if path is None:
        raise SettingsError(f"store {store!r} keeps no token revocations")
    try:
        record_sqlite_revocation(path, revocation, reason=reason, at=at)
    except (OSError, sqlite3.Error) as exc:
        raise ServiceUnavailable("token revocation store unavailable") from exc


async def ledger_exists(store: str, schema: str = "public") -> bool:
    """Whether ``store`` already holds a ledger (an SQLite file that exists; a PostgreSQL
    schema with the ledger's table), found without creating anything."""
    if store.startswith(_POSTGRES):
        async with translated("log"):
            conn = await asyncpg.connect(store, timeout=10)
            try:
                found = await conn.fetchval(
                    "SELECT to_regclass(format('%I.consentry_ledger_leaves', $1::text))", schema
                )
            finally:
                await conn.close()
        return found is not None
    if store.startswith("sqlite:"):
        return await asyncio.to_thread(Path(store.removeprefix("sqlite:")).is_file)
    return False


def where(store: str, schema: str = "public") -> str:
    """Where ``store``'s list is, for an operator: the file's absolute path, or the table."""
    path = revocations_path(store)
    if path is not None:
        return str(path)
    return f"PostgreSQL table {schema}.consentry_token_revocations"
