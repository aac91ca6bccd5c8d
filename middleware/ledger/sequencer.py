"""Sequencing a batch: the pure step every log store runs inside its append transaction.

A store, holding its log's sequencing lock, reads the tree state, looks up which idempotency
keys are already recorded and the last index of each pseudonym in the batch, and calls
:func:`plan_batch`. The plan assigns consecutive indexes, fills each leaf's ``previous``
(RFC 9162 leaves are opaque to the tree; the chain is this ledger's, see ``leaf``), hashes the
leaves (RFC 9162 §2.1.1) and extends the compact range. The store then calls
:func:`sign_state` and writes the plan, the new state and the checkpoint before it commits.

Because signing happens under the lock, in the transaction that makes the size durable, at
most one root is ever stored and published for a size (C2SP tlog-checkpoint: a log must never
sign two different roots for one size). A signature made in a transaction that then rolls back
never leaves the store: the signer returns it to the store and to nobody else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import AppendResult, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.errors import VerificationError
from middleware.ledger.merkle import leaf_hash
from middleware.ledger.note import parse_note

__all__ = [
    "BatchPlan",
    "CheckpointSigner",
    "PlannedLeaf",
    "check_checkpoint_note",
    "distinct_keys",
    "distinct_pseudonyms",
    "plan_batch",
    "sign_state",
]

#: ``sign(size, root_hash) -> signed checkpoint note``: the store's only view of the key.
CheckpointSigner = Callable[[int, bytes], str]


@dataclass(frozen=True, slots=True)
class PlannedLeaf:
    """One row to insert: the leaf at ``index`` with the columns stores index it by."""

    index: int
    leaf: bytes
    leaf_hash: bytes
    pseudonym: bytes | None
    idempotency_key: str | None
    salt: bytes
    evidence: bytes


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What one append transaction writes: ``leaves`` (possibly none, when every entry was a
    duplicate), the ``results`` in batch order, and the tree ``state`` after the batch."""

    leaves: tuple[PlannedLeaf, ...]
    results: tuple[AppendResult, ...]
    state: TreeState


def distinct_keys(batch: Iterable[NewEntry]) -> list[str]:
    """The batch's idempotency keys, each once, in first-seen order."""
    return list(dict.fromkeys(e.idempotency_key for e in batch if e.idempotency_key is not None))


def distinct_pseudonyms(batch: Iterable[NewEntry]) -> list[bytes]:
    """The batch's pseudonyms, each once, in first-seen order."""
    return list(dict.fromkeys(e.pseudonym for e in batch if e.pseudonym is not None))


def plan_batch(
    state: TreeState,
    batch: Sequence[NewEntry],
    *,
    recorded: Mapping[str, int],
    last_index: Mapping[bytes, int],
) -> BatchPlan:
    """Sequence ``batch`` after ``state``.

    ``recorded`` maps the idempotency keys already in the log to their index; ``last_index``
    maps each pseudonym already in the log to its latest index (the store looks both up for
    :func:`distinct_keys` and :func:`distinct_pseudonyms` of the batch, under its lock). An
    entry whose key is recorded, or appeared earlier in the same batch, gets that index back
    with ``duplicate=True`` and writes nothing.
    """
    compact = state.compact_range()
    keys = dict(recorded)
    last = dict(last_index)
    planned: list[PlannedLeaf] = []
    positions: list[tuple[int, bool]] = []
    for entry in batch:
        key = entry.idempotency_key
        if key is not None and key in keys:
            positions.append((keys[key], True))
            continue
        index = compact.size
        previous = last.get(entry.pseudonym) if entry.pseudonym is not None else None
        leaf = entry.leaf_bytes(previous)
        hashed = leaf_hash(leaf)
        compact.append(hashed)
        planned.append(
            PlannedLeaf(index, leaf, hashed, entry.pseudonym, key, entry.salt, entry.evidence)
        )
        positions.append((index, False))
        if key is not None:
            keys[key] = index
        if entry.pseudonym is not None:
            last[entry.pseudonym] = index
    results = tuple(AppendResult(i, compact.size, dup) for i, dup in positions)
    return BatchPlan(tuple(planned), results, TreeState.of(compact))


def sign_state(sign: CheckpointSigner, state: TreeState) -> StoredCheckpoint:
    """Have ``sign`` sign ``state`` and check the note says what was asked (size and root),
    so a misconfigured signer cannot store a checkpoint for another tree."""
    note = sign(state.size, state.root)
    check_checkpoint_note(note, state.size, state.root)
    return StoredCheckpoint(state.size, state.root, note)


def check_checkpoint_note(note: str, size: int, root: bytes) -> None:
    """Raise :class:`VerificationError` unless the note's checkpoint body is for ``size`` and
    ``root``. Checks the text only (signatures are the verifier's job, with its keys)."""
    checkpoint = parse_checkpoint(parse_note(note).text)
    if checkpoint.size != size:
        raise VerificationError(
            "checkpoint note has another size", expected=size, computed=checkpoint.size
        )
    if not hmac.compare_digest(checkpoint.root_hash, root):
        raise VerificationError(
            "checkpoint note has another root", expected=root, computed=checkpoint.root_hash
        )
