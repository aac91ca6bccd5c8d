"""``LogStore.probe_commit`` on every backend: it proves a commit can happen now, and adds
nothing to the log.

The attack it answers: readiness used to ask the store for ``SELECT 1``, which a database that
can no longer commit (a full or read-only disk, a write lock held elsewhere) still answers, so
``/readyz`` said ready while every audited request failed.
"""

from __future__ import annotations

import inspect
import time

import pytest

from middleware.errors import ServiceUnavailable
from middleware.storage.ledger_base import PROBE_LOCK_WAIT, LogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.backends import Backend
from tests.contract.helpers import SIGN, assert_consistent, entry

#: How long an append waits for the lock: SQLite's default busy timeout (PostgreSQL without
#: the probe's lock_timeout waits for ever). A probe giving up well before it is bounded by
#: its own wait, however slowly a loaded machine runs.
APPEND_WAIT: float = inspect.signature(SqliteLogStore).parameters["busy_timeout"].default


async def test_a_probe_commits_a_heartbeat_and_leaves_the_log_as_it_was(
    backend: Backend, store: LogStore
) -> None:
    await store.append([entry(0), entry(1)], sign=SIGN)
    before = (await store.state(), await store.checkpoints(), await store.leaves(0, 2))
    beats = await backend.heartbeats()
    await store.probe_commit()
    await store.probe_commit()
    # Committed: another connection sees both beats.
    assert await backend.heartbeats() == beats + 2
    assert (await store.state(), await store.checkpoints(), await store.leaves(0, 2)) == before
    reopened = await backend.open()
    try:  # replay on open accepts the log with its heartbeat row
        assert await reopened.state() == before[0]
        await assert_consistent(reopened)
    finally:
        await reopened.close()
    results = await store.append([entry(2)], sign=SIGN)
    assert [r.index for r in results] == [2]  # the heartbeat took no index


async def test_a_closed_store_fails_the_probe(backend: Backend) -> None:
    opened = await backend.open()
    await opened.probe_commit()
    await opened.close()
    with pytest.raises(ServiceUnavailable):
        await opened.probe_commit()


async def test_a_probe_fails_while_the_append_lock_is_held_though_ping_answers(
    sql_backend: Backend,
) -> None:
    """Another writer holds the lock every append needs: reads (``ping``) still answer, the
    probe does not, and it gives up after about :data:`PROBE_LOCK_WAIT` seconds."""
    opened = await sql_backend.open()
    try:
        async with sql_backend.hold_append_lock():
            await opened.ping()
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                await opened.probe_commit()
            waited = time.monotonic() - started
            assert PROBE_LOCK_WAIT * 0.8 <= waited < APPEND_WAIT * 0.8
        await opened.probe_commit()  # the lock released, the store commits again
        # the connection's own busy timeout is back: an append waits as before
        await opened.append([entry(0)], sign=SIGN)
    finally:
        await opened.close()
