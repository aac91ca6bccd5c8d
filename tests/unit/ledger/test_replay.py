"""Replay (pure): what recovery accepts, rebuilds, and refuses as a forged log."""

from __future__ import annotations

import pytest

from middleware.ledger.entry import StoredCheckpoint, TreeState
from middleware.ledger.errors import VerificationError
from middleware.ledger.merkle import CompactRange, leaf_hash
from middleware.ledger.replay import Replay
from middleware.ledger.sequencer import PlannedLeaf, plan_batch, sign_state
from tests.contract.helpers import PSEUDONYMS, SIGN, entry

A, B = PSEUDONYMS[:2]


def _log() -> tuple[list[PlannedLeaf], list[StoredCheckpoint], TreeState]:
    """Five leaves in two batches, with a checkpoint after each."""
    state = TreeState.of(CompactRange())
    rows: list[PlannedLeaf] = []
    checkpoints = []
    last: dict[bytes, int] = {}
    batches = [
        [entry(0, pseudonym=A), entry(1), entry(2, pseudonym=A)],
        [entry(3, pseudonym=B), entry(4, pseudonym=A)],
    ]
    for batch in batches:
        plan = plan_batch(state, batch, recorded={}, last_index=last)
        rows += plan.leaves
        for row in plan.leaves:
            if row.pseudonym:
                last[row.pseudonym] = row.index
        state = plan.state
        checkpoints.append(sign_state(SIGN, state))
    return rows, checkpoints, state


def _replay(
    rows: list[PlannedLeaf], checkpoints: list[StoredCheckpoint], stored: TreeState | None
) -> TreeState:
    replay = Replay(checkpoints)
    for row in rows:
        replay.feed(row.index, row.leaf, row.leaf_hash, row.pseudonym)
    outcome = replay.finish(stored)
    return outcome.state


def test_an_honest_log_replays_to_its_state() -> None:
    rows, checkpoints, state = _log()
    replay = Replay(checkpoints)
    for row in rows:
        replay.feed(row.index, row.leaf, row.leaf_hash, row.pseudonym)
    outcome = replay.finish(state)
    assert (outcome.state, outcome.rebuilt, outcome.unsigned) == (state, False, False)


def test_a_missing_or_lagging_state_is_rebuilt_and_an_unsigned_size_reported() -> None:
    rows, checkpoints, state = _log()
    for stored in (None, TreeState.of(CompactRange())):
        replay = Replay(checkpoints[:1])
        for row in rows:
            replay.feed(row.index, row.leaf, row.leaf_hash, row.pseudonym)
        outcome = replay.finish(stored)
        assert (outcome.state, outcome.rebuilt, outcome.unsigned) == (state, True, True)


def _forge(row: PlannedLeaf, **changes: object) -> PlannedLeaf:
    fields = {
        "index": row.index,
        "leaf": row.leaf,
        "leaf_hash": row.leaf_hash,
        "pseudonym": row.pseudonym,
        "idempotency_key": row.idempotency_key,
        "salt": row.salt,
        "evidence": row.evidence,
    }
    fields.update(changes)
    return PlannedLeaf(**fields)  # type: ignore[arg-type]


OTHER = entry(9).leaf_bytes(None)
BROKEN_CHAIN = entry(4, pseudonym=A).leaf_bytes(0)  # A's latest before index 4 is 2


@pytest.mark.parametrize(
    ("position", "changes", "message"),
    [
        (1, {"index": 5}, "contiguous"),
        (1, {"leaf_hash": leaf_hash(b"x")}, "stored hash"),
        (1, {"leaf": OTHER}, "stored hash"),
        (1, {"leaf": OTHER, "leaf_hash": leaf_hash(OTHER)}, "checkpoint"),
        (1, {"leaf": b"short", "leaf_hash": leaf_hash(b"short")}, "malformed"),
        (2, {"pseudonym": B}, "pseudonym column"),
        (4, {"leaf": BROKEN_CHAIN, "leaf_hash": leaf_hash(BROKEN_CHAIN)}, "chain"),
    ],
    ids=["gap", "hash", "bytes", "bytes-and-hash", "malformed", "pseudonym", "chain"],
)
def test_an_edited_row_is_refused(position: int, changes: dict[str, object], message: str) -> None:
    rows, checkpoints, state = _log()
    rows[position] = _forge(rows[position], **changes)
    with pytest.raises(VerificationError, match=message):
        _replay(rows, checkpoints, state)


def test_a_state_ahead_or_different_is_refused() -> None:
    rows, checkpoints, state = _log()
    with pytest.raises(VerificationError, match="ahead"):
        _replay(rows[:3], checkpoints[:1], state)
    other = CompactRange()
    other.extend(leaf_hash(bytes([n])) for n in range(5))
    with pytest.raises(VerificationError, match="does not match"):
        _replay(rows, checkpoints, TreeState.of(other))


def test_a_checkpoint_beyond_the_leaves_or_with_another_note_is_refused() -> None:
    rows, checkpoints, _ = _log()
    with pytest.raises(VerificationError, match="beyond"):
        _replay(rows[:3], checkpoints, None)
    swapped = StoredCheckpoint(checkpoints[0].size, checkpoints[0].root, checkpoints[1].note)
    with pytest.raises(VerificationError, match="another size"):
        _replay(rows, [swapped, checkpoints[1]], None)
