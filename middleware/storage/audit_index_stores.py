"""The audit index's half of the SQL log stores, as mixins (the ledger modules keep the log).

:class:`SqliteAuditIndex` runs searches on the store's read-only connection (its own thread:
a long accounting never holds up the writer) and every write on the writer's connection under
``BEGIN IMMEDIATE``, the file's write lock, so ``audit_key`` is atomic across processes.
:class:`PostgresAuditIndex` runs each method on one pooled connection; writes run in one
transaction. The statements are :mod:`~middleware.storage.audit_index_sqlite`'s and
:mod:`~middleware.storage.audit_index_postgres`'s; the contract is
:class:`~middleware.storage.ledger_base.LogStore`'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage import audit_index_postgres as pg
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_match import (
    check_indexes,
    check_key,
    check_pseudonym,
    check_pseudonyms,
    check_reindex,
    refuse_disagreeing,
)
from middleware.storage.postgres_pool import translated
from middleware.storage.sqlite_worker import SqliteWorker

__all__ = ["PostgresAuditIndex", "SqliteAuditIndex"]

#: Pseudonyms per statement of :func:`_sqlite_keys` (well under SQLite's parameter limit).
_KEYS_AT_ONCE = 500
_PG_KEYS = "SELECT pseudonym, wrapped FROM consentry_audit_keys WHERE pseudonym = ANY($1::bytea[])"


def _sqlite_keys(c: sqlite3.Connection, pseudonyms: Sequence[bytes]) -> dict[bytes, bytes]:
    """The stored keys of ``pseudonyms`` (``audit_keys_get``), a statement per chunk."""
    out: dict[bytes, bytes] = {}
    for start in range(0, len(pseudonyms), _KEYS_AT_ONCE):
        chunk = pseudonyms[start : start + _KEYS_AT_ONCE]
        sql = (
            "SELECT pseudonym, wrapped FROM consentry_audit_keys "  # noqa: S608  (placeholders)
            f"WHERE pseudonym IN ({', '.join('?' * len(chunk))})"
        )
        out.update((bytes(p), bytes(w)) for p, w in c.execute(sql, chunk))
    return out


def _reindex(c: sqlite3.Connection, rows: Sequence[AuditRow]) -> None:
    refuse_disagreeing(lite.disagreeing(c, rows))  # as PostgreSQL's (PostgresAuditIndex)
    # A shred may have run since the caller read the keys: its patients' rows go in shredded.
    lite.write_rows(c, lite.tombstoned(c, rows))


class SqliteAuditIndex:
    """Needs ``_db`` (the writer) and ``_reader`` (a ``query_only`` connection) on one file."""

    _db: SqliteWorker
    _reader: SqliteWorker
    #: ``clear_index`` dropped the secondary indexes; built before the next search or close.
    _unbuilt = False

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        await self._build_indexes()
        return await self._reader.run(lambda c: lite.read_rows(c, query))

    async def audit_count(self, query: AuditQuery) -> int:
        await self._build_indexes()
        return await self._reader.run(lambda c: lite.count_rows(c, query))

    async def audit_row(self, index: int) -> AuditRow | None:
        return await self._reader.run(lambda c: lite.read_row(c, index))

    async def audit_key(self, pseudonym: bytes, candidate: bytes) -> bytes:
        check_key(pseudonym, candidate)
        return await self._db.transaction(lambda c: lite.store_key(c, pseudonym, candidate))

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        check_pseudonym(pseudonym)
        return await self._reader.run(lambda c: lite.get_key(c, pseudonym))

    async def audit_keys_get(self, pseudonyms: Sequence[bytes]) -> dict[bytes, bytes]:
        wanted = check_pseudonyms(pseudonyms)
        return await self._reader.run(lambda c: _sqlite_keys(c, wanted))

    async def shred(self, pseudonym: bytes, *, link: bytes | None = None) -> int:
        check_pseudonym(pseudonym)
        await self._build_indexes()
        return await self._db.run(lambda c: lite.shred(c, pseudonym, link))

    async def shredded_chains(self, link: bytes) -> list[bytes]:
        return await self._reader.run(lambda c: lite.shredded_chains(c, link))

    async def shred_entries(self, indexes: Sequence[int]) -> int:
        wanted = check_indexes(indexes)
        await self._build_indexes()
        return await self._db.run(lambda c: lite.shred_entries(c, wanted))

    async def reindex(self, rows: Sequence[AuditRow]) -> None:
        check_reindex(rows)
        await self._db.transaction(lambda c: _reindex(c, rows))

    async def clear_index(self) -> None:
        """Empty the index for a bulk rebuild: the secondary indexes are dropped now and
        built (sorted, once) before this store's next search, shred or close."""
        await self._db.transaction(lite.clear_index)
        self._unbuilt = True

    async def _build_indexes(self) -> None:
        if self._unbuilt:
            await self._db.transaction(lite.build_indexes)
            self._unbuilt = False


class PostgresAuditIndex:
    """Needs ``_pool``, whose ``search_path`` is the log's schema."""

    _pool: asyncpg.Pool

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        async with translated("ledger"), self._pool.acquire() as conn:
            return await pg.read_rows(conn, query)

    async def audit_count(self, query: AuditQuery) -> int:
        async with translated("ledger"), self._pool.acquire() as conn:
            return await pg.count_rows(conn, query)

    async def audit_row(self, index: int) -> AuditRow | None:
        async with translated("ledger"), self._pool.acquire() as conn:
            return await pg.read_row(conn, index)

    async def audit_key(self, pseudonym: bytes, candidate: bytes) -> bytes:
        check_key(pseudonym, candidate)
        async with translated("ledger"), self._pool.acquire() as conn, conn.transaction():
            return await pg.store_key(conn, pseudonym, candidate)

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        check_pseudonym(pseudonym)
        async with translated("ledger"), self._pool.acquire() as conn:
            return await pg.get_key(conn, pseudonym)

    async def audit_keys_get(self, pseudonyms: Sequence[bytes]) -> dict[bytes, bytes]:
        wanted = check_pseudonyms(pseudonyms)
        async with translated("ledger"), self._pool.acquire() as conn:
            found = await conn.fetch(_PG_KEYS, wanted)
        return {bytes(r[0]): bytes(r[1]) for r in found}

    async def shred(self, pseudonym: bytes, *, link: bytes | None = None) -> int:
        check_pseudonym(pseudonym)
        async with translated("ledger"), self._pool.acquire() as conn, conn.transaction():
            return await pg.shred(conn, pseudonym, link)

    async def shredded_chains(self, link: bytes) -> list[bytes]:
        async with translated("ledger"), self._pool.acquire() as conn:
            return await pg.shredded_chains(conn, link)

    async def shred_entries(self, indexes: Sequence[int]) -> int:
        wanted = check_indexes(indexes)
        async with translated("ledger"), self._pool.acquire() as conn, conn.transaction():
            return await pg.shred_entries(conn, wanted)

    async def reindex(self, rows: Sequence[AuditRow]) -> None:
        check_reindex(rows)
        async with translated("ledger"), self._pool.acquire() as conn, conn.transaction():
            refuse_disagreeing(await pg.disagreeing(conn, rows))
            await pg.write_rows(conn, await pg.tombstoned(conn, rows))  # as SQLite's

    async def clear_index(self) -> None:
        async with translated("ledger"), self._pool.acquire() as conn:
            await pg.clear_index(conn)
