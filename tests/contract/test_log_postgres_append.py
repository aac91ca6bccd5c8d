"""PostgreSQL appends cost four statements (``ledger_postgres_append``): ``BEGIN``, the
lock-and-read function, one write, ``COMMIT``; a batch of duplicates writes only what it must.

Each statement is a round trip to the database while the log's row lock is held, so their
number bounds what one PostgreSQL ledger carries. Counted with asyncpg's query logger on the
store's connection, which would also see the pool's reset query on release (the ledger's
pool sends none: its sessions keep no state past a transaction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.storage.ledger_postgres import PostgresLogStore
from tests.contract.backends import PostgresBackend
from tests.contract.helpers import PSEUDONYMS, SIGN, assert_consistent, entry

pytestmark = pytest.mark.integration


@pytest.fixture
async def counted() -> AsyncIterator[tuple[PostgresLogStore, list[str]]]:
    backend = await PostgresBackend.create()
    store = await PostgresLogStore.open(backend.dsn, schema=backend.schema, min_size=1, max_size=1)
    sent: list[str] = []

    def log(record: asyncpg.connection.LoggedQuery) -> None:
        sent.append(record.query.split()[0])

    async with store._pool.acquire() as conn:  # the one connection the store has
        conn.add_query_logger(log)
    try:
        yield store, sent
    finally:
        await store.close()
        await backend.cleanup()


async def test_an_append_is_four_statements(
    counted: tuple[PostgresLogStore, list[str]],
) -> None:
    store, sent = counted
    await store.append([entry(0, pseudonym=PSEUDONYMS[0], key="k0")], sign=SIGN)
    sent.clear()
    batch = [
        entry(1, pseudonym=PSEUDONYMS[0], key="k1"),
        entry(2, pseudonym=PSEUDONYMS[1]),
        entry(3, pseudonym=PSEUDONYMS[0], key="k0"),  # recorded before: a duplicate
        entry(4),
    ]
    results = await store.append(batch, sign=SIGN)
    assert sent == ["BEGIN;", "SELECT", "WITH", "COMMIT;"]
    assert [(r.index, r.duplicate) for r in results] == [
        (1, False),
        (2, False),
        (0, True),
        (3, False),
    ]
    assert await store.chain(PSEUDONYMS[0]) == [0, 1]
    await assert_consistent(store)


async def test_a_batch_of_duplicates_writes_nothing_when_its_size_is_signed(
    counted: tuple[PostgresLogStore, list[str]],
) -> None:
    store, sent = counted
    await store.append([entry(0, key="k0")], sign=SIGN)
    sent.clear()
    results = await store.append([entry(1, key="k0")], sign=SIGN)
    assert sent == ["BEGIN;", "SELECT", "COMMIT;"]
    assert [(r.index, r.duplicate) for r in results] == [(0, True)]
    assert [c.size for c in await store.checkpoints()] == [1]
