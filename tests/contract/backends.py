"""One harness per log-store backend: open a store on a fresh log, reopen it, and play the DBA.

The contract suite only talks to a :class:`Backend`. Each backend can open any number of
stores on the same log (as several processes would), and can change the log *behind* the
store: the named SQL edits a DBA might type (which the triggers must refuse), and edits with
the triggers switched off (which replay must detect or repair).

PostgreSQL: ``TEST_POSTGRES_DSN`` or ``postgresql://127.0.0.1:5432/test``; each
backend object gets a fresh schema, dropped afterwards. When the server is unreachable,
:func:`postgres_dsn` raises: these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.ledger.entry import TreeState
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLog, MemoryLogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore

DEFAULT_DSN = "postgresql://127.0.0.1:5432/test"
#: The PostgreSQL parameter of backend fixtures: marked, run by default, never skipped.
POSTGRES = pytest.param("postgres", marks=pytest.mark.integration, id="postgres")

#: SQL a DBA might type, per dialect; every one of them must be refused.
REFUSED_EDITS: Mapping[str, Mapping[str, str]] = {
    "update-leaf": {
        "sqlite": "UPDATE consentry_ledger_leaves SET leaf_hash = leaf_hash WHERE idx = 0",
        "postgres": "UPDATE consentry_ledger_leaves SET leaf_hash = leaf_hash WHERE idx = 0",
    },
    "delete-leaf": {
        "sqlite": "DELETE FROM consentry_ledger_leaves WHERE idx = 1",
        "postgres": "DELETE FROM consentry_ledger_leaves WHERE idx = 1",
    },
    "update-checkpoint": {
        "sqlite": "UPDATE consentry_ledger_checkpoints SET note = 'forged'",
        "postgres": "UPDATE consentry_ledger_checkpoints SET note = 'forged'",
    },
    "delete-checkpoint": {
        "sqlite": "DELETE FROM consentry_ledger_checkpoints",
        "postgres": "DELETE FROM consentry_ledger_checkpoints",
    },
    "replace-leaf": {  # SQLite's REPLACE deletes without firing delete triggers
        "sqlite": "INSERT OR REPLACE INTO consentry_ledger_leaves "
        "SELECT * FROM consentry_ledger_leaves WHERE idx = 0",
        "postgres": "INSERT INTO consentry_ledger_leaves SELECT * FROM consentry_ledger_leaves "
        "WHERE idx = 0 ON CONFLICT (idx) DO UPDATE SET leaf = excluded.leaf",
    },
    "replace-checkpoint": {
        "sqlite": "INSERT OR REPLACE INTO consentry_ledger_checkpoints "
        "SELECT * FROM consentry_ledger_checkpoints",
        "postgres": "INSERT INTO consentry_ledger_checkpoints "
        "SELECT * FROM consentry_ledger_checkpoints "
        "ON CONFLICT (size) DO UPDATE SET note = excluded.note",
    },
    "insert-leaf-past-the-end": {
        "sqlite": "INSERT INTO consentry_ledger_leaves SELECT idx + 100, leaf, leaf_hash, "
        "pseudonym, NULL FROM consentry_ledger_leaves WHERE idx = 0",
        "postgres": "INSERT INTO consentry_ledger_leaves SELECT idx + 100, leaf, leaf_hash, "
        "pseudonym, NULL FROM consentry_ledger_leaves WHERE idx = 0",
    },
    "truncate": {  # SQLite has no TRUNCATE; its truncate optimisation is off with triggers
        "sqlite": "DELETE FROM consentry_ledger_leaves",
        "postgres": "TRUNCATE consentry_ledger_leaves CASCADE",
    },
}


class EditRefused(Exception):
    """The database refused a DBA's edit."""


def postgres_dsn() -> str:
    return os.environ.get("TEST_POSTGRES_DSN", DEFAULT_DSN)


class Backend:
    """A fresh log on one backend. ``open()`` returns a new store on it each time."""

    name: str
    dialect: str | None = None

    async def open(self) -> LogStore:
        raise NotImplementedError

    async def dba(self, sql: str) -> None:
        """Run ``sql`` as a DBA would; raise :class:`EditRefused` if the database refuses."""
        raise NotImplementedError

    async def tamper_leaf(self, index: int, leaf: bytes, leaf_hash: bytes) -> None:
        """Overwrite a leaf row with the triggers off (a superuser's forgery)."""
        raise NotImplementedError

    async def set_state(self, state: TreeState) -> None:
        """Overwrite the state row (updatable by design)."""
        raise NotImplementedError

    async def drop_checkpoint(self, size: int) -> None:
        """Delete one checkpoint with the triggers off."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Drop whatever the backend created."""

    async def heartbeats(self) -> int:
        """The heartbeat counter :meth:`LogStore.probe_commit` advances, read afresh."""
        raise NotImplementedError

    def hold_append_lock(self) -> AbstractAsyncContextManager[None]:
        """Hold the lock an append takes, from another connection, for the block."""
        raise NotImplementedError


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        self.log = MemoryLog()

    async def open(self) -> LogStore:
        return await MemoryLogStore.open(self.log)

    async def tamper_leaf(self, index: int, leaf: bytes, leaf_hash: bytes) -> None:
        self.log.leaves[index] = leaf
        self.log.hashes[index] = leaf_hash

    async def set_state(self, state: TreeState) -> None:
        self.log.state = state

    async def drop_checkpoint(self, size: int) -> None:
        del self.log.checkpoints[size]

    async def heartbeats(self) -> int:
        return self.log.heartbeats


class SqliteBackend(Backend):
    name = dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self) -> LogStore:
        return await SqliteLogStore.open(self.path)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=10)

    async def dba(self, sql: str) -> None:
        conn = self._connect()
        try:
            conn.execute(sql)
        except sqlite3.DatabaseError as exc:
            raise EditRefused(str(exc)) from exc
        finally:
            conn.close()

    def _untriggered(self, table: str, sql: str, *args: object) -> None:
        """Drop the table's append-only triggers, run ``sql``, and leave them dropped: the
        next ``open`` recreates them (CREATE TRIGGER IF NOT EXISTS)."""
        conn = self._connect()
        try:
            for suffix in ("no_update", "no_delete", "in_order", "once"):
                conn.execute(f"DROP TRIGGER IF EXISTS {table}_{suffix}")
            conn.execute(sql, args)
        finally:
            conn.close()

    async def tamper_leaf(self, index: int, leaf: bytes, leaf_hash: bytes) -> None:
        sql = "UPDATE consentry_ledger_leaves SET leaf = ?, leaf_hash = ? WHERE idx = ?"
        self._untriggered("consentry_ledger_leaves", sql, leaf, leaf_hash, index)

    async def set_state(self, state: TreeState) -> None:
        sql = "UPDATE consentry_ledger_state SET size = ?, compact = ?, root = ? WHERE id = 1"
        args = (state.size, state.packed_hashes(), state.root)
        self._untriggered("consentry_ledger_state", sql, *args)

    async def drop_checkpoint(self, size: int) -> None:
        sql = "DELETE FROM consentry_ledger_checkpoints WHERE size = ?"
        self._untriggered("consentry_ledger_checkpoints", sql, size)

    async def heartbeats(self) -> int:
        conn = self._connect()
        try:
            row = conn.execute("SELECT beats FROM consentry_ledger_heartbeat").fetchone()
        finally:
            conn.close()
        return int(row[0])

    @asynccontextmanager
    async def hold_append_lock(self) -> AsyncIterator[None]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()


class PostgresBackend(Backend):
    name = "postgres"
    dialect = "postgres"

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    @classmethod
    async def create(cls) -> PostgresBackend:
        dsn = postgres_dsn()
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise RuntimeError(
                f"PostgreSQL at {dsn} is unreachable ({exc}); PostgreSQL tests fail, not skip"
            ) from exc
        await conn.close()
        return cls(dsn, f"consentry_t_{secrets.token_hex(6)}")

    async def open(self) -> LogStore:
        return await PostgresLogStore.open(self.dsn, schema=self.schema, max_size=4)

    async def _with(self, fn: Callable[[asyncpg.Connection], Awaitable[object]]) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": self.schema})
        try:
            await fn(conn)
        finally:
            await conn.close()

    async def dba(self, sql: str) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                raise EditRefused(str(exc)) from exc

        await self._with(run)

    async def _untriggered(self, table: str, sql: str, *args: object) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
                await conn.execute(sql, *args)
                await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")

        await self._with(run)

    async def tamper_leaf(self, index: int, leaf: bytes, leaf_hash: bytes) -> None:
        sql = "UPDATE consentry_ledger_leaves SET leaf = $1, leaf_hash = $2 WHERE idx = $3"
        await self._untriggered("consentry_ledger_leaves", sql, leaf, leaf_hash, index)

    async def set_state(self, state: TreeState) -> None:
        sql = "UPDATE consentry_ledger_state SET size = $1, compact = $2, root = $3 WHERE id = 1"
        await self._untriggered(
            "consentry_ledger_state", sql, state.size, state.packed_hashes(), state.root
        )

    async def drop_checkpoint(self, size: int) -> None:
        sql = "DELETE FROM consentry_ledger_checkpoints WHERE size = $1"
        await self._untriggered("consentry_ledger_checkpoints", sql, size)

    async def cleanup(self) -> None:
        await self._with(lambda conn: conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))

    async def heartbeats(self) -> int:
        beats: list[int] = []

        async def read(conn: asyncpg.Connection) -> None:
            beats.append(await conn.fetchval("SELECT beats FROM consentry_ledger_heartbeat"))

        await self._with(read)
        return beats[0]

    @asynccontextmanager
    async def hold_append_lock(self) -> AsyncIterator[None]:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": self.schema})
        try:
            async with conn.transaction():
                await conn.fetchrow("SELECT 1 FROM consentry_ledger_state WHERE id = 1 FOR UPDATE")
                yield
        finally:
            await conn.close()


async def make_backend(name: str, tmp_path: Path) -> Backend:
    """A fresh log on ``memory``, ``sqlite`` (a file in ``tmp_path``) or ``postgres``."""
    if name == "memory":
        return MemoryBackend()
    if name == "sqlite":
        return SqliteBackend(tmp_path / "ledger.sqlite3")
    return await PostgresBackend.create()
