"""The witnessed checkpoint kept in the log's store when the store fails or lies
(:mod:`middleware.ledger.publication`, :mod:`middleware.ledger.witnessed_store`):

- a quorum's note the store failed to keep stays pending and is kept at a later round (it was
  dropped: other replicas and a restarted one published an older one for good);
- a store error while a kept row is checked publishes what the replica had (it escaped
  ``published()``), and does not stop a replica publishing its own quorum's note;
- a kept note whose log signature line was replaced in both rows is refused (the log's key);
- a row refused for a cosignature dated ahead of our clock is published once the clock
  catches up (it stayed refused for good); other refusals are not checked again;
- concurrent calls seeing a new row check it once;
- reads of the published checkpoint during a store outage (``GET /ledger/checkpoint``,
  receipts, exports) count ``store`` once a witnessing round, not once a read (each added one
  to ``consentry_ledger_witness_failures``).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.note import parse_note
from middleware.ledger.publication import RECHECK
from middleware.ledger.quorum import FUTURE_SKEW
from middleware.ledger.witnessing import Witnessing
from middleware.storage.ledger_memory import MemoryLog, MemoryLogStore
from tests.contract.helpers import KEY
from tests.unit.ledger.test_witnessing import W1, W2, endpoint, router
from tests.unit.ledger.test_witnessing_kept import DOWN, NOW, gateway, grow, size_of, witnesses


class FlakyKeeper(MemoryLogStore):
    """``keep_witnessed`` fails ``fail`` times (a database blip), then works."""

    def __init__(self, log: MemoryLog, fail: int = 0) -> None:
        super().__init__(log)
        self.fail = fail

    async def keep_witnessed(self, note: str) -> bool:
        if self.fail:
            self.fail -= 1
            raise ServiceUnavailable("ledger store unavailable")
        return await super().keep_witnessed(note)


class CheckpointDown(MemoryLogStore):
    """``checkpoint(size)`` fails while ``down`` (the store drops between two reads); counts
    the reads of one size."""

    def __init__(self, log: MemoryLog) -> None:
        super().__init__(log)
        self.down = False
        self.reads = 0

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        if size is not None:
            self.reads += 1
            await asyncio.sleep(0)  # a read takes a turn of the loop: others run meanwhile
            if self.down:
                raise ServiceUnavailable("ledger store unavailable")
        return await super().checkpoint(size)


async def _cosigned(store: MemoryLogStore, size: int, at: int = NOW) -> str:
    logged = await store.checkpoint(size)
    assert logged is not None
    text = parse_note(logged.note).text
    return logged.note + W1.cosign(text, at).line() + W2.cosign(text, at).line()


async def test_a_quorum_the_store_failed_to_keep_is_kept_at_a_later_round() -> None:
    log = MemoryLog()
    flaky, other = FlakyKeeper(log), await MemoryLogStore.open(log)
    held: dict[str, int] = {}
    async with gateway(flaky, witnesses(held)) as a, gateway(other, DOWN) as b:
        await grow(flaky, 3)
        await a.submit_latest()
        await grow(flaky, 5)
        flaky.fail = 100
        await a.submit_latest()  # a quorum for 5; its writes fail (each answer's, the round's)
        assert size_of(await a.published()) == 5  # its own quorum's note, meanwhile ...
        assert size_of(await b.published()) == 3  # ... the others publish the store's
        assert 100 - flaky.fail > 1  # several writes failed in the round ...
        assert a.failures == {"store": 1}  # ... counted once: one round the store failed
        flaky.fail = 0
        await a.submit_latest()  # every witness cosigned 5 already: only the write again
        assert (await other.witnessed() or (0, ""))[0] == 5
        assert await b.published() == await a.published()
    async with gateway(await MemoryLogStore.open(log), DOWN) as restarted:
        assert size_of(await restarted.published()) == 5  # not back to 3


async def test_a_store_error_while_a_row_is_checked_publishes_what_it_had() -> None:
    log = MemoryLog()
    store = CheckpointDown(log)
    await grow(store, 3)
    note = await _cosigned(store, 3)
    assert await store.keep_witnessed(note)
    store.down = True
    async with gateway(store, DOWN) as replica:
        assert await replica.published() is None  # what it had: nothing, no exception
        assert replica.failures == {}  # a read counts at the next round, not per request
        await replica.submit_latest()
        assert replica.failures.get("store") == 1
        store.down = False
        assert await replica.published() == note  # not refused: checked again
        assert replica.failures.get("store") == 1


async def test_a_store_error_while_a_row_is_checked_does_not_stop_a_quorum_published() -> None:
    log = MemoryLog()
    store, other = CheckpointDown(log), await MemoryLogStore.open(log)
    await grow(store, 3)
    first = await _cosigned(other, 3, at=NOW - 10)
    assert await other.keep_witnessed(first)  # another replica kept size 3 first
    async with gateway(store, witnesses({})) as replica:
        store.down = True  # from here: its keep is refused, and checking theirs fails
        await replica.submit_latest()
        published = await replica.published()
        assert published is not None
        assert published != first  # its own quorum's note
        assert size_of(published) == 3
        # Its reads before and after its keep failed: one round, one count; the read after
        # the round counts at the next round.
        assert replica.failures == {"store": 1}


async def test_a_log_signature_replaced_in_both_rows_is_refused() -> None:
    log = MemoryLog()
    store = await MemoryLogStore.open(log)
    await grow(store, 3)
    logged = await store.checkpoint(3)
    assert logged is not None
    # The DBA (triggers dropped) replaces the log's signature line in the checkpoint row and
    # writes a witnessed row over that note: both rows agree, the witnesses' lines are good.
    # Same key name and ID, another signature: only the log's key tells them apart.
    signature = logged.note.rstrip("\n").rsplit(" ", 1)[1]
    other = base64.b64encode(base64.b64decode(signature)[:4] + bytes(64)).decode()
    forged = logged.note.replace(signature, other)
    log.checkpoints[3] = replace(logged, note=forged)
    text = parse_note(forged).text
    log.witnessed[3] = forged + W1.cosign(text, NOW).line() + W2.cosign(text, NOW).line()
    async with gateway(store, DOWN) as replica:
        assert await replica.published() is None
        assert replica.failures == {"kept-log-signature": 1}


async def test_a_future_dated_row_is_published_once_the_clock_catches_up() -> None:
    store = await MemoryLogStore.open()
    await grow(store, 3)
    at = NOW + FUTURE_SKEW + int(RECHECK) // 2  # the witnesses' clocks run ahead of ours
    note = await _cosigned(store, 3, at=at)
    assert await store.keep_witnessed(note)
    clock = [float(NOW)]

    async def opened() -> MemoryLogStore:
        return store

    async with router(DOWN, []) as client:
        replica = Witnessing(
            opened,
            [endpoint(W1), endpoint(W2)],
            quorum=2,
            client=client,
            clock=lambda: clock[0],
            kept=opened,
            log_key=KEY.verifier(),
        )
        try:
            assert await replica.published() is None
            clock[0] += RECHECK / 2
            assert await replica.published() is None  # not checked again yet
            assert replica.failures == {"kept-cosignature": 1}
            clock[0] += RECHECK / 2
            assert await replica.published() == note
        finally:
            await replica.aclose()


async def test_a_refusal_that_does_not_depend_on_the_clock_is_not_checked_again() -> None:
    store = await MemoryLogStore.open()
    await grow(store, 3)
    logged = await store.checkpoint(3)
    assert logged is not None
    store.log.witnessed[3] = logged.note + W1.cosign(parse_note(logged.note).text, NOW).line()
    clock = [float(NOW)]

    async def opened() -> MemoryLogStore:
        return store

    async with router(DOWN, []) as client:
        replica = Witnessing(
            opened,
            [endpoint(W1), endpoint(W2)],
            quorum=2,
            client=client,
            clock=lambda: clock[0],
            kept=opened,
            log_key=KEY.verifier(),
        )
        try:
            for _ in range(3):
                assert await replica.published() is None
                clock[0] += 10 * RECHECK
            assert replica.failures == {"kept-quorum": 1}
        finally:
            await replica.aclose()


async def test_concurrent_calls_check_a_new_row_once() -> None:
    log = MemoryLog()
    store = CheckpointDown(log)
    await grow(store, 3)
    note = await _cosigned(store, 3)
    assert await store.keep_witnessed(note)
    store.reads = 0
    async with gateway(store, DOWN) as replica:
        published = await asyncio.gather(*(replica.published() for _ in range(8)))
    assert published == [note] * 8
    assert store.reads == 1


async def test_reads_during_a_store_outage_count_once_a_round() -> None:
    store = await MemoryLogStore.open()
    await grow(store, 3)

    async def opened() -> MemoryLogStore:
        return store

    async def broken() -> MemoryLogStore:
        raise ServiceUnavailable("ledger store unavailable")

    async with router(DOWN, []) as client:
        replica = Witnessing(
            opened,
            [endpoint(W1), endpoint(W2)],
            quorum=2,
            client=client,
            clock=lambda: NOW,
            kept=broken,
            log_key=KEY.verifier(),
        )
        try:
            for _ in range(50):  # 50 requests for the witnessed checkpoint, the database down
                assert await replica.published() is None
            assert replica.failures == {}
            await replica.submit_latest()
            await replica.submit_latest()
            assert replica.failures.get("store") == 2  # two rounds, each failed on the store
        finally:
            await replica.aclose()
