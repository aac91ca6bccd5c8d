"""Ledger liveness: a crashed writer is replaced, readiness proves a commit, a full queue
pushes back before any work.

The attacks these pin: a writer whose task died stayed cached, so every later append failed
while ``/readyz`` (which pinged the store) still said ready; and a store that reads but cannot
commit (a full disk) answered that ping too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.sequencer import CheckpointSigner
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore

KEY = SigningKey.generate("t")


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (polled), at most 10 s: synchronisation, never a timing bound."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 10 s")


def entry(n: int) -> NewEntry:
    return NewEntry.create(EntryKind.ADMIN, b"{}", recorded_us=1_700_000_000_000_000 + n)


class CrashOnce:
    """A commit observer that raises once: an error escaping the writer's task (observers
    must not raise; this one stands for any bug that kills the task)."""

    def __init__(self) -> None:
        self.armed = False

    def observe_commit(self, entries: int, seconds: float, *, ok: bool) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("observer bug")


def service_over(store: LogStore, *, max_pending: int = 10_000) -> LedgerService:
    async def open_store() -> LogStore:
        return store

    return LedgerService(open_store, KEY, origin="t", max_pending=max_pending)


async def test_a_crashed_writer_is_replaced_not_cached() -> None:
    store = await MemoryLogStore.open()
    crash = CrashOnce()

    async def open_store() -> LogStore:
        return store

    service = LedgerService(open_store, KEY, origin="t", observer=crash)
    assert await service.append(entry(0)) == 0
    first = await service.writer()
    crash.armed = True
    # The batch committed before the observer raised; the task is dead after it.
    await service.append(entry(1))
    await until(lambda: first.crashed)
    assert not first.running
    # The next append gets a new writer and commits: the dead one is not kept.
    assert await service.append(entry(2)) == 2
    second = await service.writer()
    assert second is not first
    assert second.running
    await service.check_commit(max_age=10)
    await service.admit()
    await service.aclose()


async def test_a_cancelled_writer_task_is_replaced() -> None:
    store = await MemoryLogStore.open()
    service = service_over(store)
    first = await service.writer()
    first._task.cancel()  # type: ignore[union-attr]  # a stray cancel kills the task
    await until(lambda: first.crashed)
    assert first.cause == "CancelledError"
    assert await service.append(entry(0)) == 0
    await service.aclose()


async def test_a_stopped_writer_is_not_taken_for_a_crashed_one() -> None:
    store = await MemoryLogStore.open()
    service = service_over(store)
    writer = await service.writer()
    await writer.stop()
    assert not writer.crashed
    assert not writer.running


async def test_check_commit_fails_while_the_store_cannot_commit_and_recovers() -> None:
    """A store that reads but cannot commit: ping answers, check_commit does not; once it
    can commit again, check_commit passes."""
    store = await MemoryLogStore.open()
    service = service_over(store)
    await service.append(entry(0))
    await service.check_commit(max_age=10)  # a fresh commit is proof enough
    store.writable = False
    with pytest.raises(ServiceUnavailable):
        await service.append(entry(1))  # the batch fails...
    await store.ping()  # ...while a ping still answers
    with pytest.raises(ServiceUnavailable):
        await service.check_commit(max_age=10)  # a failure since the last commit: probe
    store.writable = True
    await service.check_commit(max_age=10)
    await service.aclose()


async def test_an_old_commit_is_no_proof_the_probe_decides() -> None:
    store = await MemoryLogStore.open()
    service = service_over(store)
    await service.append(entry(0))
    store.writable = False  # nothing failed yet, but the last commit is too old
    await service.check_commit(max_age=10)
    with pytest.raises(ServiceUnavailable):
        await service.check_commit(max_age=0)
    await service.aclose()


class GatedStore(MemoryLogStore):
    """A memory store whose appends wait for :attr:`gate` (a slow commit); :attr:`entered` is
    set once a batch is waiting there."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        if batch:
            self.entered.set()
            await self.gate.wait()
        return await super().append(batch, sign=sign)


async def test_a_full_queue_is_refused_by_admit_before_any_work() -> None:
    store = GatedStore()
    service = service_over(store, max_pending=2)
    await service.admit()
    first = asyncio.create_task(service.append(entry(0)))
    # The writer took it into a batch that waits on the store (synchronised, not slept on).
    await asyncio.wait_for(store.entered.wait(), timeout=10)
    queued = [asyncio.create_task(service.append(entry(n))) for n in (1, 2)]
    await until(lambda: service.pending == 2)  # both queued behind it
    with pytest.raises(ServiceUnavailable, match="queue is full"):
        await service.admit()
    store.gate.set()
    assert sorted(await asyncio.gather(first, *queued)) == [0, 1, 2]
    await service.admit()
    await service.aclose()


async def test_sqlite_under_a_held_write_lock_fails_check_commit(tmp_path: Path) -> None:
    """A real SQLite file whose write lock another process holds: appends fail after the
    busy timeout, ``ping`` still answers, ``check_commit`` fails; released, it recovers."""
    path = tmp_path / "ledger.sqlite3"
    store = await SqliteLogStore.open(path, busy_timeout=0.2)
    service = service_over(store)
    await service.append(entry(0))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(ServiceUnavailable):
            await service.append(entry(1))
        await store.ping()
        with pytest.raises(ServiceUnavailable):
            await service.check_commit(max_age=10)
        other.execute("ROLLBACK")
    finally:
        other.close()
    await service.check_commit(max_age=10)
    assert await service.append(entry(1)) == 1
    await service.aclose()
