"""PostgreSQL log store: the store several gateway replicas share.

Sequencing (ARCHITECTURE "Scale"): an append transaction first locks the one state row
(``SELECT ... FOR UPDATE``), so appends from every process are serialised on that row while
reads never wait. Still holding it, the transaction takes the *signer* advisory lock
(:data:`~middleware.storage.ledger_postgres_schema.SIGNER_LOCK`): whoever holds it is the one
integrator allowed to sign a checkpoint. Here that is always the appender that holds the row
lock, so the second lock costs no waiting; it exists so that any later path
that signs without appending (key rotation, a standalone integrator) serialises with the
appenders through the same lock, taken in the same order (row, then advisory: no deadlock).

Transactions run at READ COMMITTED: after the row lock is granted, each later statement sees
every append committed before it, which is exactly the log the new batch extends. An append
is four statements (:mod:`~middleware.storage.ledger_postgres_append`): ``BEGIN``, one
function call that locks and reads, one statement that writes, ``COMMIT``.

Database errors become :class:`~middleware.errors.ServiceUnavailable` in
:func:`~middleware.storage.postgres_pool.translated`, the one place. Tables live in ``schema``
(default ``public``), set as the pool's ``search_path``; tests use a fresh schema each.

The audit index and the evidence keys live in the same schema
(:mod:`~middleware.storage.audit_index_postgres`); index rows are written in the append's
transaction, the other audit methods are
:class:`~middleware.storage.audit_index_stores.PostgresAuditIndex`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, Evidence, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.replay import Outcome, Replay
from middleware.ledger.sequencer import CheckpointSigner
from middleware.storage.audit_index_stores import PostgresAuditIndex
from middleware.storage.ledger_base import EVIDENCE_RANGE, PROBE_LOCK_WAIT, evidence_of_range
from middleware.storage.ledger_postgres_append import append_batch
from middleware.storage.ledger_postgres_schema import CONSENT_LEAF, SCHEMA, SIGNER_LOCK
from middleware.storage.ledger_unreplayed import refuse_writes_unreplayed
from middleware.storage.ledger_witnessed import PostgresWitnessed
from middleware.storage.postgres_pool import open_pool, translated

__all__ = ["PostgresLogStore"]

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy  # type: ignore[import-untyped,unused-ignore]

    _Connection: TypeAlias = (
        "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
    )

_STATE = "SELECT size, compact, root FROM consentry_ledger_state WHERE id = 1"
#: Leaf rows fetched at a time by a replay (about 150 bytes each).
_REPLAY_CHUNK = 5000
# Resolved on the search_path (the store's schema); to_regclass is NULL for a missing table.
_HAS_TABLES = (
    "SELECT to_regclass('consentry_ledger_leaves') IS NOT NULL "
    "AND to_regclass('consentry_ledger_checkpoints') IS NOT NULL "
    "AND to_regclass('consentry_ledger_evidence') IS NOT NULL "
    "AND to_regclass('consentry_ledger_state') IS NOT NULL"
)
_LOCK_STATE = "SELECT size, compact, root FROM consentry_ledger_state WHERE id = 1 FOR UPDATE"
_LATEST_CHECKPOINT = (
    "SELECT size, root, note FROM consentry_ledger_checkpoints ORDER BY size DESC LIMIT 1"
)
_CHECKPOINT_AT = "SELECT size, root, note FROM consentry_ledger_checkpoints WHERE size = $1"
# Both spell CONSENT_LEAF exactly as the partial index does, which is what lets it serve them.
_LATEST_CONSENT = f"SELECT max(idx) FROM consentry_ledger_leaves WHERE {CONSENT_LEAF}"  # noqa: S608
_CONSENTS_AFTER = (
    f"SELECT idx FROM consentry_ledger_leaves WHERE {CONSENT_LEAF} AND idx > $1 ORDER BY idx"  # noqa: S608
)
_BEAT = (
    "INSERT INTO consentry_ledger_heartbeat (id, beats) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET beats = consentry_ledger_heartbeat.beats + 1"
)
_RANGES = {
    "leaf": "SELECT leaf FROM consentry_ledger_leaves WHERE idx >= $1 AND idx < $2 ORDER BY idx",
    "leaf_hash": "SELECT leaf_hash FROM consentry_ledger_leaves "
    "WHERE idx >= $1 AND idx < $2 ORDER BY idx",
}


#: ``evidence_range``'s query with PostgreSQL's placeholders.
_EVIDENCE_RANGE = EVIDENCE_RANGE.replace("?", "$1", 1).replace("?", "$2", 1)


def _translated() -> AbstractAsyncContextManager[None]:
    return translated("ledger")


@refuse_writes_unreplayed
class PostgresLogStore(PostgresAuditIndex, PostgresWitnessed):
    """A log store in PostgreSQL; create it with :meth:`open` (witnessed checkpoints:
    :class:`~middleware.storage.ledger_witnessed.PostgresWitnessed`)."""

    name = "postgresql"

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    #: Opened without its replay (``open(replay=False)``): every write refused
    #: (:func:`~middleware.storage.ledger_unreplayed.refuse_writes_unreplayed`).
    _unreplayed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        replay: bool = True,
    ) -> PostgresLogStore:
        """Connect, create ``schema`` and the tables if missing, then replay the log.
        ``replay=False``: as :meth:`SqliteLogStore.open
        <middleware.storage.ledger_sqlite.SqliteLogStore.open>`'s (no replay, no writes): the
        session is read-only and creates nothing, and missing tables are refused."""
        pool = await open_pool(
            dsn,
            schema=schema,
            ddl=SCHEMA if replay else None,
            what="ledger",
            min_size=min_size,
            max_size=max_size,
            # Only transaction-scoped state here (SET LOCAL, xact advisory locks, cursors
            # inside transactions): no reset round trip after each append.
            session_state=False,
        )
        store = cls(pool, schema)
        try:
            if not replay and not await _has_tables(pool):
                raise ServiceUnavailable(f"ledger store: no log tables in schema {schema!r}")
            if replay:
                await store.rebuild_state()
            else:
                store._unreplayed = True
        except BaseException:
            await store.close()
            raise
        return store

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            return await append_batch(conn, self.schema, batch, sign)

    async def size(self) -> int:
        return (await self.state()).size

    async def state(self) -> TreeState:
        async with _translated():
            row = await self._pool.fetchrow(_STATE)
        if row is None:
            raise ServiceUnavailable("ledger state row is missing; rebuild_state() restores it")
        return TreeState.unpack(row["size"], row["compact"], row["root"])

    async def leaves(self, start: int, end: int) -> list[bytes]:
        return await self._column("leaf", start, end)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return await self._column("leaf_hash", start, end)

    async def evidence(self, index: int) -> Evidence | None:
        sql = (
            "SELECT e.salt, e.data FROM consentry_ledger_leaves l "
            "LEFT JOIN consentry_ledger_evidence e ON e.idx = l.idx WHERE l.idx = $1"
        )
        async with _translated():
            row = await self._pool.fetchrow(sql, index)
        if row is None:
            raise OutOfRangeError(f"leaf {index} is not in the log")
        return None if row[0] is None or row[1] is None else Evidence(row[0], row[1])

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        if not 0 <= start <= end:
            raise OutOfRangeError(f"[{start}, {end}) is not a range of leaf indexes")
        async with _translated():
            rows = await self._pool.fetch(_EVIDENCE_RANGE, start, end)
        return evidence_of_range(rows, start, end)

    async def chain(self, pseudonym: bytes) -> list[int]:
        sql = "SELECT idx FROM consentry_ledger_leaves WHERE pseudonym = $1 ORDER BY idx"
        async with _translated():
            return [r[0] for r in await self._pool.fetch(sql, pseudonym)]

    async def latest_consent(self) -> int | None:
        async with _translated():
            value = await self._pool.fetchval(_LATEST_CONSENT)
        return None if value is None else int(value)

    async def consents_after(self, index: int) -> list[int]:
        async with _translated():
            return [r[0] for r in await self._pool.fetch(_CONSENTS_AFTER, index)]

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        async with _translated():
            if size is None:
                row = await self._pool.fetchrow(_LATEST_CHECKPOINT)
            else:
                row = await self._pool.fetchrow(_CHECKPOINT_AT, size)
        return None if row is None else StoredCheckpoint(row[0], row[1], row[2])

    async def checkpoints(self) -> list[StoredCheckpoint]:
        async with _translated(), self._pool.acquire() as conn:
            return await _read_checkpoints(conn)

    async def rebuild_state(self) -> TreeState:
        """Replay in a REPEATABLE READ snapshot without blocking appenders; only if the state
        row is behind (or missing), replay again holding the row and signer locks and rewrite
        it."""
        async with _translated(), self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                outcome = await _replay(conn)
            if not outcome.rebuilt:
                return outcome.state
            async with conn.transaction():
                await conn.fetchrow(_LOCK_STATE)
                await conn.execute(SIGNER_LOCK, self.schema)
                outcome = await _replay(conn)
                if outcome.rebuilt:
                    new = outcome.state
                    await conn.execute(
                        "INSERT INTO consentry_ledger_state (id, size, compact, root) "
                        "VALUES (1, $1, $2, $3) "
                        "ON CONFLICT (id) DO UPDATE SET size = excluded.size, "
                        "compact = excluded.compact, root = excluded.root",
                        new.size,
                        new.packed_hashes(),
                        new.root,
                    )
            return outcome.state

    async def ping(self) -> None:
        async with _translated():
            await self._pool.fetchval("SELECT 1")

    async def probe_commit(self) -> None:
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            # lock_timeout bounds the wait for the row lock appends take (ms, no parameters
            # in SET); the heartbeat row is outside the log.
            await conn.execute(f"SET LOCAL lock_timeout = {int(PROBE_LOCK_WAIT * 1000)}")
            await conn.fetchrow(_LOCK_STATE)
            await conn.execute(_BEAT)

    async def close(self) -> None:
        await self._pool.close()  # idempotent in asyncpg

    async def _column(self, column: str, start: int, end: int) -> list[bytes]:
        if not 0 <= start <= end:
            raise OutOfRangeError(f"[{start}, {end}) is not a range of leaf indexes")
        async with _translated():
            values = [r[0] for r in await self._pool.fetch(_RANGES[column], start, end)]
        if len(values) != end - start:
            raise OutOfRangeError(f"[{start}, {end}) is not within the log")
        return values


async def _read_checkpoints(conn: _Connection) -> list[StoredCheckpoint]:
    rows = await conn.fetch(
        "SELECT size, root, note FROM consentry_ledger_checkpoints ORDER BY size"
    )
    return [StoredCheckpoint(r[0], r[1], r[2]) for r in rows]


async def _replay(conn: _Connection) -> Outcome:
    """Replay inside the caller's transaction (a cursor needs one), streaming the leaves."""
    replay = Replay(await _read_checkpoints(conn))
    sql = "SELECT idx, leaf, leaf_hash, pseudonym FROM consentry_ledger_leaves ORDER BY idx"
    cursor = await conn.cursor(sql)
    while rows := await cursor.fetch(_REPLAY_CHUNK):
        replay.feed_rows(rows)  # a Record unpacks like the row's tuple
    row = await conn.fetchrow(_STATE)
    stored = None if row is None else TreeState.unpack(row[0], row[1], row[2])
    return replay.finish(stored)


async def _has_tables(pool: asyncpg.Pool) -> bool:
    """Whether the log's tables are on the pool's ``search_path``."""
    async with _translated(), pool.acquire() as conn:
        found = await conn.fetchval(_HAS_TABLES)
    return bool(found)
