"""The token revocation list a ``store`` setting's gateway enforces
(:class:`~middleware.auth.revocation.RevocationList`), and recording a revocation in it.

- ``sqlite:PATH``: a file beside the store, read by every worker process
  (:mod:`~middleware.storage.revocations_sqlite`);
- ``postgresql://...``: a table in the log store's schema, pushed to every replica by
  LISTEN/NOTIFY (:mod:`~middleware.storage.revocations_postgres`);
- ``memory:``: none (a development store: nothing to share).

:func:`record`, :func:`lift`, :func:`listed`, :func:`find` and :func:`prune` serve
``consentry auth revoke`` and ``consentry auth revocations``; :func:`ledger_exists` and
:func:`where` make sure those act on the list a running gateway reads, never on a new store
they created by mistake.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.auth.revocation import Lifted, Revocation, StoredRevocation
from middleware.errors import ServiceUnavailable, SettingsError
from middleware.storage.breakglass_open import store_schema
from middleware.storage.ledger_base import LogStore
from middleware.storage.postgres_pool import open_pool, translated
from middleware.storage.revocations_admin_postgres import (
    find_postgres,
    lift_postgres,
    list_postgres,
    prune_postgres,
)
from middleware.storage.revocations_admin_sqlite import (
    find_sqlite,
    lift_sqlite,
    list_sqlite,
    prune_sqlite,
)
from middleware.storage.revocations_postgres import (
    ADMIN_SCHEMA,
    PostgresRevocations,
    record_revocation,
)
from middleware.storage.revocations_sqlite import (
    SqliteRevocations,
    record_sqlite_revocation,
    revocations_path,
)

__all__ = [
    "find",
    "ledger_exists",
    "lift",
    "listed",
    "prune",
    "record",
    "token_revocations",
    "where",
]

_POSTGRES = ("postgresql://", "postgres://")
T = TypeVar("T")


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


@asynccontextmanager
async def _pool(store: str, schema: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(store, schema=schema, ddl=ADMIN_SCHEMA, what="token revocation")
    try:
        yield pool
    finally:
        await pool.close()


def _path(store: str) -> Path:
    path = revocations_path(store)
    if path is None:
        raise SettingsError(f"store {store!r} keeps no token revocations")
    return path


async def _in_thread(call: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(call)
    except (OSError, sqlite3.Error) as exc:
        raise ServiceUnavailable("token revocation store unavailable") from exc


async def _on_list(
    store: str,
    schema: str,
    postgres: Callable[[asyncpg.Pool], Awaitable[T]],
    sqlite: Callable[[Path], T],
) -> T:
    """``postgres`` on a pool in ``schema`` of a PostgreSQL ``store`` (its tables made first),
    else ``sqlite`` on the list's file, on a worker thread; errors as :func:`record`."""
    if store.startswith(_POSTGRES):
        async with _pool(store, schema) as pool:
            return await postgres(pool)
    path = _path(store)
    return await _in_thread(lambda: sqlite(path))


async def record(
    store: str,
    revocation: Revocation,
    *,
    reason: str,
    at: float,
    schema: str = "public",
    entry: int | None = None,
    expires: float | None = None,
) -> int | None:
    """Record ``revocation`` (admin entry ``entry``; a ``jti``'s token ``exp`` if known) in
    the list of ``store`` (tables in ``schema`` for PostgreSQL); None once done, else the
    entry of a lift appended after ``entry``, which wins (nothing written). Raises
    :class:`ServiceUnavailable` when it cannot be written, :class:`SettingsError` for a store
    that has no list."""
    return await _on_list(
        store,
        schema,
        lambda pool: record_revocation(
            pool, revocation, reason=reason, at=at, entry=entry, expires=expires
        ),
        lambda path: record_sqlite_revocation(
            path, revocation, reason=reason, at=at, entry=entry, expires=expires
        ),
    )


async def listed(store: str, schema: str = "public") -> list[StoredRevocation]:
    """Every revocation in the list of ``store``, oldest first (errors as :func:`record`)."""
    return await _on_list(store, schema, list_postgres, list_sqlite)


async def find(
    store: str, kind: str, value: str, schema: str = "public"
) -> StoredRevocation | None:
    """The revocation of ``kind`` ``value`` in the list of ``store``, if any."""
    return await _on_list(
        store,
        schema,
        lambda pool: find_postgres(pool, kind, value),
        lambda path: find_sqlite(path, kind, value),
    )


async def lift(
    store: str, kind: str, value: str, *, entry: int, at: float, schema: str = "public"
) -> Lifted:
    """Lift the revocation of ``kind`` ``value`` under admin entry ``entry``: the ledger's
    order wins (:class:`~middleware.auth.revocation.Lifted`); errors as :func:`record`."""
    return await _on_list(
        store,
        schema,
        lambda pool: lift_postgres(pool, kind, value, entry=entry, at=at),
        lambda path: lift_sqlite(path, kind, value, entry=entry, at=at),
    )


async def prune(store: str, *, expired_before: float, schema: str = "public") -> int:
    """Drop the ``jti`` revocations whose recorded token ``exp`` is before ``expired_before``;
    how many (errors as :func:`record`)."""
    return await _on_list(
        store,
        schema,
        lambda pool: prune_postgres(pool, expired_before=expired_before),
        lambda path: prune_sqlite(path, expired_before=expired_before),
    )


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
