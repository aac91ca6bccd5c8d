"""PostgreSQL: every write of an administrator's command to the revocation list takes
``WRITE_LOCK`` first, so that a revocation and a lift of one thing go one after the other and
end as the ledger orders them (``revocations_postgres.record_revocation``,
``revocations_admin_postgres.lift_postgres``). Each test fails without one of the locks."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.auth.revocation import Lifted, Revocation
from middleware.storage.revocations_open import find, lift, record
from middleware.storage.revocations_postgres import WRITE_LOCK
from tests.contract.backends import PostgresBackend

pytestmark = pytest.mark.integration


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    made = await PostgresBackend.create()
    yield made
    await made.cleanup()


async def _connect(backend: PostgresBackend) -> asyncpg.Connection:
    return await asyncpg.connect(backend.dsn, server_settings={"search_path": backend.schema})


async def _pid(conn: asyncpg.Connection, query: str, *args: object) -> int:
    """The first pid ``query`` finds, polled for 10 s at most."""
    for _ in range(500):
        pid = await conn.fetchval(query, *args)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError(f"never found: {query}")


async def test_a_revocation_and_a_lift_wait_for_a_holder_of_the_lock(
    backend: PostgresBackend,
) -> None:
    """Each reads the other's row, then writes: both wait while another session holds the
    list's write lock (red without the lock in ``record_revocation``: the revocation ran
    at once)."""
    url, schema = backend.dsn, backend.schema
    await record(url, Revocation("jti", "t-0"), reason="r", at=1.0, schema=schema, entry=1)
    conn = await _connect(backend)
    try:
        async with conn.transaction():
            await conn.execute(WRITE_LOCK)  # in the store's schema (search_path)
            revoking = asyncio.create_task(
                record(url, Revocation("jti", "t-1"), reason="r", at=1.0, schema=schema, entry=2)
            )
            lifting = asyncio.create_task(lift(url, "jti", "t-0", entry=3, at=2.0, schema=schema))
            await asyncio.sleep(0.5)
            assert not revoking.done()
            assert not lifting.done()
        assert await revoking is None
        assert await lifting == Lifted("removed")
    finally:
        await conn.close()


async def test_a_lift_from_an_earlier_entry_waits_for_a_revocation_in_flight(
    backend: PostgresBackend,
) -> None:
    """A revocation (entry 9) of a jti entry 5 revoked is stopped inside its upsert, holding
    the row, while a lift appended before it (entry 6) runs: the lift must wait for it and
    then keep the row, entry 9 being later. Red without the lock in ``lift_postgres``: the
    lift read the row entry 5 wrote, waited only for its DELETE, then deleted the row entry 9
    had just written (the revocation lost, the ledger saying it stands)."""
    url, schema = backend.dsn, backend.schema
    key = secrets.randbelow(2**31)  # an advisory lock no other test takes
    await record(url, Revocation("jti", "t"), reason="r", at=1.0, schema=schema, entry=5)
    conn = await _connect(backend)
    tasks: list[asyncio.Task[object]] = []
    try:
        await conn.execute(
            "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_advisory_xact_lock({key}); RETURN NEW; END $$; "
            "CREATE TRIGGER held AFTER UPDATE ON consentry_token_revocations "
            "FOR EACH ROW EXECUTE FUNCTION held()"
        )
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        revoking = asyncio.create_task(
            record(url, Revocation("jti", "t"), reason="r2", at=2.0, schema=schema, entry=9)
        )
        tasks.append(revoking)
        revoker = await _pid(  # inside its upsert's trigger: the row is updated, uncommitted
            conn,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = 0 AND objid = $1 AND objsubid = 1",
            key,
        )
        lifting = asyncio.create_task(lift(url, "jti", "t", entry=6, at=3.0, schema=schema))
        tasks.append(lifting)
        await _pid(  # the lift waits for the revocation (its lock, or without it the row)
            conn, "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", revoker
        )
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
        assert await revoking is None
        assert await lifting == Lifted("kept", 9)
        row = await find(url, "jti", "t", schema)
        assert row is not None
        assert (row.admin_entry, row.reason) == (9, "r2")
    finally:
        await conn.close()  # releases the advisory lock if a check failed before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
