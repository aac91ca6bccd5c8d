"""Key rotation recorded in the log: where the key event lands, who signs what, retries when
the log moves, resuming an interrupted rotation, and refusing the wrong key."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.errors import VerificationError
from middleware.ledger.rotation import RotationError, record_rotation
from middleware.ledger.sequencer import CheckpointSigner
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.ledger.snapshot import LogSnapshot
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.ledger.verify import VerificationReport, verify_snapshot
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.helpers import KEY, ORIGIN, SIGN, entry

NEW = SigningKey.from_seed(ORIGIN, bytes([7]) * 32)
POLICY = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),))


class MovingStore(MemoryLogStore):
    """Someone else appends right before each of the first ``moves`` rotation attempts."""

    def __init__(self, moves: int) -> None:
        super().__init__()
        self.moves = moves

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        if self.moves and batch:
            self.moves -= 1
            await super().append([entry(1000 + self.moves)], sign=SIGN)
        return await super().append(batch, sign=sign)


async def _log(store: MemoryLogStore, count: int, sign: CheckpointSigner = SIGN) -> None:
    await store.append([], sign=sign)
    for n in range(count):
        await store.append([entry(n)], sign=sign)


def _verify(store: MemoryLogStore, policy: TrustPolicy) -> VerificationReport:
    log = store.log
    notes = [c.note for c in log.checkpoints.values()]
    return verify_snapshot(LogSnapshot(log.leaves, notes, dict(log.evidence)), policy)


async def test_the_retired_key_signs_the_event_and_the_successor_what_follows() -> None:
    store = await MemoryLogStore.open()
    await _log(store, 5)
    result = await record_rotation(store, KEY, NEW, origin=ORIGIN, recorded_us=1)
    assert (result.index, result.resumed) == (5, False)
    assert (result.event.retired_not_after, result.event.successor_not_before) == (6, 7)
    signed = await store.checkpoint(6)
    assert signed is not None
    verify_checkpoint(signed.note, [KEY.verifier()], origin=ORIGIN)
    await _log(store, 3, checkpoint_signer(NEW, ORIGIN))
    rotated = POLICY.rotated(KEY.vkey(), 6, NEW.vkey(), 7)
    report = _verify(store, rotated)
    assert report.ok, report.findings
    assert report.key_events == 1
    stale = {f.code for f in _verify(store, POLICY).findings}
    assert stale == {"checkpoint-signature", "key-event", "unsigned-leaves"}


async def test_a_retired_key_still_signing_is_reported() -> None:
    """A gateway that was not restarted after the rotation keeps signing with the old key."""
    store = await MemoryLogStore.open()
    await _log(store, 2)
    await record_rotation(store, KEY, NEW, origin=ORIGIN, recorded_us=1)
    await store.append([entry(50)], sign=SIGN)
    report = _verify(store, POLICY.rotated(KEY.vkey(), 3, NEW.vkey(), 4))
    assert {f.code for f in report.findings} == {"key-window", "unsigned-leaves"}
    assert [f.size for f in report.findings if f.code == "key-window"] == [4]


@pytest.mark.parametrize("moves", [1, 3], ids=["once", "three-times"])
async def test_the_event_lands_where_it_says_even_when_the_log_moves(moves: int) -> None:
    store = MovingStore(moves)
    await _log(store, 2)
    result = await record_rotation(store, KEY, NEW, origin=ORIGIN, recorded_us=1)
    assert result.index == 2 + moves
    assert result.event.placed_at(result.index)
    event = result.event
    rotated = POLICY.rotated(
        KEY.vkey(), event.retired_not_after, NEW.vkey(), event.successor_not_before
    )
    report = _verify(store, rotated)
    assert report.ok, report.findings


async def test_a_log_that_keeps_moving_is_an_error_and_records_nothing() -> None:
    store = MovingStore(100)
    await _log(store, 1)
    with pytest.raises(RotationError, match="kept growing"):
        await record_rotation(store, KEY, NEW, origin=ORIGIN, recorded_us=1, attempts=3)
    report = _verify(store, POLICY)
    assert report.ok
    assert report.key_events == 0


async def test_rerunning_a_rotation_resumes_it() -> None:
    store = await MemoryLogStore.open()
    await _log(store, 3)
    first = await record_rotation(store, KEY, NEW, origin=ORIGIN, recorded_us=1)
    again = await record_rotation(store, KEY, NEW, origin=ORIGIN, recorded_us=2)
    assert (again.index, again.event, again.resumed) == (first.index, first.event, True)
    assert await store.size() == 4


@pytest.mark.parametrize(
    ("key", "origin"),
    [(NEW, ORIGIN), (KEY, "other.example/ledger")],
    ids=["not-the-signing-key", "other-origin"],
)
async def test_the_wrong_key_or_origin_is_refused(key: SigningKey, origin: str) -> None:
    store = await MemoryLogStore.open()
    await _log(store, 2)
    with pytest.raises(RotationError) as caught:
        await record_rotation(store, key, SigningKey.generate(ORIGIN), origin=origin, recorded_us=1)
    assert isinstance(caught.value.__cause__, VerificationError)
    assert await store.size() == 2
