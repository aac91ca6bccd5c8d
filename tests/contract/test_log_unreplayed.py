"""A store opened without its replay (``open(replay=False)``: what ``consentry audit export``
opens) refuses every write with one error, before it writes anything, and still reads.

SQLite and PostgreSQL (a memory store is always replayed). Each write of
``storage.ledger_unreplayed.WRITES`` is called on such a store over a filled log; a replayed
store on the same log then sees the log, the index, the keys, the evidence and the heartbeat
exactly as before."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import msgspec
import pytest

from middleware.audit.row import AuditQuery
from middleware.errors import ServiceUnavailable
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import LedgerError
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.storage.ledger_unreplayed import UNREPLAYED, WRITES
from tests.contract.backends import Backend, PostgresBackend, SqliteBackend
from tests.contract.helpers import KEY, ORIGIN, PSEUDONYMS, SIGN
from tests.contract.test_audit_index import EXPECTED, PA, ROWS, _filled, audit_entry

#: A pseudonym with no key yet (``audit_key`` would create one).
KEYLESS = PSEUDONYMS[4]

#: The first stored row with a field changed: a reindex that slipped through would show.
CHANGED = msgspec.structs.replace(EXPECTED[0], request_id="changed-by-reindex")

#: One call of each write, with arguments it would accept on a replayed store.
WRITE_CALLS: dict[str, Callable[[LogStore], Awaitable[object]]] = {
    "append": lambda s: s.append([audit_entry(ROWS[0])], sign=SIGN),
    "audit_key": lambda s: s.audit_key(KEYLESS, b"wrapped key"),
    "shred": lambda s: s.shred(PA),
    "shred_entries": lambda s: s.shred_entries([0, 1]),
    "reindex": lambda s: s.reindex([CHANGED]),
    "clear_index": lambda s: s.clear_index(),
    "probe_commit": lambda s: s.probe_commit(),
    "keep_witnessed": lambda s: s.keep_witnessed(
        KEY.sign_checkpoint(Checkpoint(ORIGIN, 99, bytes(32)))
    ),
}


def test_each_write_is_called_here() -> None:
    assert set(WRITE_CALLS) == WRITES


async def _unreplayed(backend: Backend) -> LogStore:
    if isinstance(backend, SqliteBackend):
        return await SqliteLogStore.open(backend.path, replay=False)
    assert isinstance(backend, PostgresBackend)
    return await PostgresLogStore.open(backend.dsn, schema=backend.schema, max_size=2, replay=False)


async def _seen(store: LogStore, backend: Backend) -> object:
    """What a write could change: leaves, evidence, index rows, keys, tombstones, heartbeat."""
    size = await store.size()
    return (
        await store.leaves(0, size),
        await store.evidence_range(0, size),
        await store.audit_rows(AuditQuery(include_shredded=True)),
        await store.audit_key_get(KEYLESS),
        await store.shredded_chains(b"link"),
        await backend.heartbeats(),
        await store.witnessed(),
    )


@pytest.mark.parametrize("write", sorted(WRITE_CALLS))
async def test_a_store_opened_without_its_replay_refuses_each_write(
    sql_backend: Backend, write: str
) -> None:
    checked = await _filled(await sql_backend.open())
    try:
        before = await _seen(checked, sql_backend)
        unchecked = await _unreplayed(sql_backend)
        try:
            with pytest.raises(LedgerError) as refused:
                await WRITE_CALLS[write](unchecked)
            assert str(refused.value) == UNREPLAYED
        finally:
            await unchecked.close()
        assert await _seen(checked, sql_backend) == before
    finally:
        await checked.close()


async def test_a_store_opened_without_its_replay_still_reads(sql_backend: Backend) -> None:
    checked = await _filled(await sql_backend.open())
    try:
        unchecked = await _unreplayed(sql_backend)
        try:
            assert await unchecked.state() == await checked.state()
            assert await unchecked.leaves(0, 5) == await checked.leaves(0, 5)
            assert await unchecked.checkpoint() == await checked.checkpoint()
            assert await unchecked.audit_rows(AuditQuery()) == EXPECTED
            assert await unchecked.chain(PA) == await checked.chain(PA)
        finally:
            await unchecked.close()
    finally:
        await checked.close()


async def test_an_unreplayed_postgres_store_creates_nothing_and_needs_its_tables() -> None:
    """Opened without its replay on a schema with no log, PostgreSQL runs no DDL (the session
    is read-only) and refuses clearly, creating neither the schema nor a table."""
    backend = await PostgresBackend.create()
    with pytest.raises(ServiceUnavailable, match="no log tables"):
        await PostgresLogStore.open(backend.dsn, schema=backend.schema, replay=False)
    conn = await asyncpg.connect(backend.dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", backend.schema
        )
    finally:
        await conn.close()
    assert found == 0


async def test_an_unreplayed_postgres_session_is_read_only() -> None:
    """Past the guard, the connection itself refuses to write."""
    backend = await PostgresBackend.create()
    made = await backend.open()
    await made.close()
    try:
        store = await _unreplayed(backend)
        try:
            assert isinstance(store, PostgresLogStore)
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                async with store._pool.acquire() as conn:
                    await conn.execute("DELETE FROM consentry_ledger_heartbeat")
        finally:
            await store.close()
    finally:
        await backend.cleanup()
