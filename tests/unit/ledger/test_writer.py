"""The group-commit writer: batching, the time bound, back-pressure, failures, stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.sequencer import CheckpointSigner
from middleware.ledger.signing import verify_checkpoint
from middleware.ledger.writer import LedgerWriter, checkpoint_signer
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.helpers import KEY, ORIGIN, VERIFIER, assert_consistent, entry


class SpyStore(MemoryLogStore):
    """A memory store that records batch sizes, can be held shut, and can fail on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = 0

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ServiceUnavailable("disk on fire")
        if batch:
            self.batches.append(len(batch))
        return await super().append(batch, sign=sign)


@pytest.fixture
async def spy() -> SpyStore:
    return SpyStore()


@pytest.fixture
async def writer(spy: SpyStore) -> AsyncIterator[LedgerWriter]:
    made = LedgerWriter(spy, KEY, max_batch=16, max_wait=0.01, max_pending=64)
    await made.start()
    yield made
    spy.gate.set()  # a failed test must not leave the store hung under stop()
    await made.stop()


# --- group commit ---------------------------------------------------------------------------


async def test_append_returns_the_index_after_the_commit(
    writer: LedgerWriter, spy: SpyStore
) -> None:
    index = await writer.append(entry(0))
    assert index == 0
    assert await spy.size() == 1, "durable (committed) before append returned"


async def test_concurrent_appends_share_transactions(writer: LedgerWriter, spy: SpyStore) -> None:
    indexes = await asyncio.gather(*(writer.append(entry(n)) for n in range(50)))
    assert sorted(indexes) == list(range(50))
    assert sum(spy.batches) == 50
    assert len(spy.batches) <= 5, f"50 appenders, batches of <= 16: {spy.batches}"
    assert max(spy.batches) <= 16
    await assert_consistent(spy)


async def test_a_lone_entry_waits_at_most_max_wait(spy: SpyStore) -> None:
    writer = LedgerWriter(spy, KEY, max_batch=1000, max_wait=0.05)
    await writer.start()
    try:
        started = time.monotonic()
        await writer.append(entry(0))
        elapsed = time.monotonic() - started
        assert 0.04 <= elapsed < 1.0
    finally:
        await writer.stop()


async def test_a_full_batch_goes_without_waiting(spy: SpyStore) -> None:
    writer = LedgerWriter(spy, KEY, max_batch=4, max_wait=30.0)
    await writer.start()
    try:
        async with asyncio.timeout(5):
            await asyncio.gather(*(writer.append(entry(n)) for n in range(8)))
        assert spy.batches == [4, 4]
    finally:
        await writer.stop()


async def test_start_signs_an_empty_log(spy: SpyStore, writer: LedgerWriter) -> None:
    latest = await spy.checkpoint()
    assert latest is not None
    assert verify_checkpoint(latest.note, [VERIFIER], origin=ORIGIN).size == 0


async def test_the_origin_can_differ_from_the_key_name(spy: SpyStore) -> None:
    writer = LedgerWriter(spy, KEY, origin="ledger.example/other")
    await writer.start()
    await writer.stop()
    latest = await spy.checkpoint()
    assert latest is not None
    assert verify_checkpoint(latest.note, [VERIFIER]).origin == "ledger.example/other"


# --- back-pressure --------------------------------------------------------------------------


async def test_a_full_queue_pushes_back_at_once(writer: LedgerWriter, spy: SpyStore) -> None:
    spy.gate.clear()  # the store hangs: the first batch stays in flight, the rest queue up
    in_flight = [asyncio.create_task(writer.append(entry(n))) for n in range(16)]
    await asyncio.sleep(0.05)
    assert writer.pending == 0
    queued = [asyncio.create_task(writer.append(entry(n))) for n in range(16, 80)]
    await asyncio.sleep(0)
    assert writer.pending == 64
    with pytest.raises(ServiceUnavailable, match="full"):
        await writer.append(entry(999))
    spy.gate.set()
    assert sorted(await asyncio.gather(*in_flight, *queued)) == list(range(80))


# --- failures -------------------------------------------------------------------------------


async def test_a_store_error_fails_the_whole_batch_and_the_writer_goes_on(
    writer: LedgerWriter, spy: SpyStore
) -> None:
    spy.gate.clear()
    doomed = [asyncio.create_task(writer.append(entry(n))) for n in range(5)]
    await asyncio.sleep(0.05)
    spy.fail_next = 1
    spy.gate.set()
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(o, ServiceUnavailable) for o in outcomes)
    assert all(o.__cause__ is not None for o in outcomes if isinstance(o, BaseException))
    assert await spy.size() == 0
    assert writer.failed_batches == 1
    assert await writer.append(entry(5)) == 0


async def test_a_cancelled_appender_does_not_disturb_its_batch(
    writer: LedgerWriter, spy: SpyStore
) -> None:
    spy.gate.clear()
    tasks = [asyncio.create_task(writer.append(entry(n))) for n in range(3)]
    await asyncio.sleep(0.02)
    tasks[1].cancel()
    spy.gate.set()
    assert await tasks[0] == 0
    assert await tasks[2] == 2
    assert await spy.size() == 3, "the cancelled caller's entry is still recorded"


# --- lifecycle ------------------------------------------------------------------------------


async def test_stop_commits_what_is_queued_then_refuses(spy: SpyStore) -> None:
    writer = LedgerWriter(spy, KEY, max_batch=8, max_wait=10.0)
    await writer.start()
    tasks = [asyncio.create_task(writer.append(entry(n))) for n in range(3)]
    await asyncio.sleep(0)
    await writer.stop()
    assert sorted(await asyncio.gather(*tasks)) == [0, 1, 2]
    with pytest.raises(ServiceUnavailable, match="not running"):
        await writer.append(entry(3))
    await writer.stop()


async def test_an_unstarted_writer_refuses(spy: SpyStore) -> None:
    with pytest.raises(ServiceUnavailable):
        await LedgerWriter(spy, KEY).append(entry(0))


async def test_idempotent_retries_through_the_writer(writer: LedgerWriter) -> None:
    first = await writer.append(entry(0, key="request-1"))
    again = await asyncio.gather(*(writer.append(entry(1, key="request-1")) for _ in range(3)))
    assert again == [first] * 3


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        LedgerWriter(MemoryLogStore(), KEY, max_batch=0)
    with pytest.raises(ValueError):
        checkpoint_signer(KEY, origin="two\nlines")
