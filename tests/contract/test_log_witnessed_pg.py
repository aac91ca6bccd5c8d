"""PostgreSQL's advisory lock around keeping a witnessed checkpoint
(:class:`~middleware.storage.ledger_witnessed.PostgresWitnessed`): two pools keeping one size
at once never fail (without the lock one of them hits the primary key or the trigger); a
transaction holding the table or the lock does not hold a keeper longer than
``KEEP_LOCK_WAIT``; a role with only ``SELECT`` and ``INSERT`` keeps (``LOCK TABLE`` refused
it: it needs ``UPDATE``, ``DELETE`` or ``TRUNCATE``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

import middleware.storage.ledger_witnessed as witnessed
from middleware.errors import ServiceUnavailable
from middleware.ledger.note import parse_note
from middleware.storage.ledger_postgres import PostgresLogStore
from tests.contract.backends import PostgresBackend
from tests.contract.helpers import SIGN, entry
from tests.contract.test_log_witnessed import NOW, W1, W2

pytestmark = pytest.mark.integration


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    made = await PostgresBackend.create()
    yield made
    await made.cleanup()


async def test_two_pools_keeping_one_size_at_once_never_fail(backend: PostgresBackend) -> None:
    one, two = await backend.open(), await backend.open()
    try:
        for size in range(1, 21):
            await one.append([entry(size - 1)], sign=SIGN)
            logged = await one.checkpoint(size)
            assert logged is not None
            text = parse_note(logged.note).text
            ours = logged.note + W1.cosign(text, NOW).line()
            theirs = logged.note + W2.cosign(text, NOW).line()
            kept = await asyncio.gather(one.keep_witnessed(ours), two.keep_witnessed(theirs))
            assert sorted(kept) == [False, True]  # one wins, the other is told so: no error
            assert await two.witnessed() == (size, ours if kept[0] else theirs)
    finally:
        await one.close()
        await two.close()


async def test_a_held_table_waits_a_keeper_at_most_the_lock_wait(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(witnessed, "KEEP_LOCK_WAIT", 0.2)
    store = await backend.open()
    dba = await asyncpg.connect(backend.dsn, server_settings={"search_path": backend.schema})
    try:
        await store.append([entry(0)], sign=SIGN)
        logged = await store.checkpoint(1)
        assert logged is not None
        note = logged.note + W1.cosign(parse_note(logged.note).text, NOW).line()
        async with dba.transaction():  # a session left open holding the table
            await dba.execute("LOCK TABLE consentry_ledger_witnessed IN SHARE ROW EXCLUSIVE MODE")
            async with asyncio.timeout(5):  # without lock_timeout: until the DBA commits
                with pytest.raises(ServiceUnavailable):
                    await store.keep_witnessed(note)
            assert await store.witnessed() is None  # readers are not held
        assert await store.keep_witnessed(note)  # released: kept
    finally:
        await dba.close()
        await store.close()


async def test_a_session_holding_the_keepers_lock_waits_a_keeper_at_most_the_lock_wait(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(witnessed, "KEEP_LOCK_WAIT", 0.2)
    store = await backend.open()
    other = await asyncpg.connect(backend.dsn, server_settings={"search_path": backend.schema})
    try:
        await store.append([entry(0)], sign=SIGN)
        logged = await store.checkpoint(1)
        assert logged is not None
        note = logged.note + W1.cosign(parse_note(logged.note).text, NOW).line()
        async with other.transaction():  # another keeper, stuck inside its transaction
            await other.execute(witnessed._PG_LOCK)
            async with asyncio.timeout(5):
                with pytest.raises(ServiceUnavailable):
                    await store.keep_witnessed(note)
        assert await store.keep_witnessed(note)
    finally:
        await other.close()
        await store.close()


async def test_a_role_with_only_select_and_insert_keeps(backend: PostgresBackend) -> None:
    store = await backend.open()
    role = f"consentry_t_keeper_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(backend.dsn)
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    pool = None
    try:
        await admin.execute(f"GRANT USAGE ON SCHEMA {backend.schema} TO {role}")
        await admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {backend.schema} TO {role}")
        await admin.execute(
            f"GRANT INSERT ON {backend.schema}.consentry_ledger_witnessed TO {role}"
        )
        await store.append([entry(0)], sign=SIGN)
        logged = await store.checkpoint(1)
        assert logged is not None
        note = logged.note + W1.cosign(parse_note(logged.note).text, NOW).line()
        pool = await asyncpg.create_pool(
            backend.dsn,
            user=role,
            min_size=1,
            max_size=1,
            server_settings={"search_path": backend.schema},
        )
        keeper = PostgresLogStore(pool, backend.schema)
        assert await keeper.keep_witnessed(note)
        assert await keeper.witnessed() == (1, note)
    finally:
        if pool is not None:
            await pool.close()
        await store.close()
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
