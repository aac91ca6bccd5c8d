"""Sequencing a batch: the pure step every log store runs inside its append transaction.

A store, holding its log's sequencing lock, reads the tree state, looks up which idempotency
keys are already recorded and the last index of each pseudonym in the batch, and calls
:func:`plan_batch`. The plan assigns consecutive indexes, fills each leaf's ``previous``
(RFC 9162 leaves are opaque to the tree; the chain is this ledger's, see ``leaf``), hashes the
leaves (RFC 9162 §2.1.1) and extends the compact range. The store then calls
:func:`sign_state` and writes the plan, the new state and the checkpoint before it commits.

A store may keep a :class:`ChainTails` across appends: the last index of the pseudonyms it
appended recently, valid only while the log is the one it last planned (same size and root),
so it reads each of those from the log only after another writer has appended.

Because signing happens under the lock, in the transaction that makes the size durable, at
most one root is ever stored and published for a size (C2SP tlog-checkpoint: a log must never
sign two different roots for one size). A signature made in a transaction that then rolls back
never leaves the store: the signer returns it to the store and to nobody else.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import AppendResult, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.errors import VerificationError
from middleware.ledger.merkle import leaf_hash
from middleware.ledger.note import parse_note

__all__ = [
    "BatchPlan",
    "ChainTails",
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


class PlannedLeaf(msgspec.Struct, frozen=True, gc=False):
    """One row to insert: the leaf at ``index`` with the columns stores index it by (a
    ``msgspec.Struct``: one is made per entry sequenced, at a fifth of a frozen dataclass's
    cost; its fields are bytes, numbers and text, which cannot form a cycle)."""

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


class ChainTails:
    """The last index of up to ``max_size`` pseudonyms (``None``: none in the log) in the log
    of one tree state; a store's memory of the chains it extended, so that an append reads
    the log only for pseudonyms it has not seen (one indexed ``max(idx)`` query each).

    Valid for the log of :meth:`valid_for`'s state only: the root commits to every leaf, and
    the leaves say every chain (RFC 9162 §2.1.1; a leaf names its pseudonym and ``previous``),
    so equal size and root mean equal tails. Any other state (another process appended, or
    the transaction of the last plan rolled back) empties it. Not thread-safe: the store's
    one writer thread uses it, under the log's lock.
    """

    __slots__ = ("_last", "_max", "_root", "_size")

    def __init__(self, max_size: int = 100_000) -> None:
        if max_size < 1:
            raise ValueError("max_size is positive")
        self._max = max_size
        self._last: dict[bytes, int | None] = {}
        self._size = -1
        self._root = b""

    def valid_for(self, state: TreeState) -> ChainTails:
        """This memory, emptied unless it was planned for ``state`` (the log as read now)."""
        if state.size != self._size or not hmac.compare_digest(state.root, self._root):
            self._last.clear()
            self._size, self._root = state.size, state.root
        return self

    def known(self, pseudonyms: Iterable[bytes]) -> tuple[dict[bytes, int], list[bytes]]:
        """The known last indexes among ``pseudonyms`` (those not in the log left out, as
        :func:`plan_batch` wants them), and the pseudonyms not known, to read from the log."""
        found: dict[bytes, int] = {}
        missing: list[bytes] = []
        for pseudonym in pseudonyms:
            if pseudonym not in self._last:
                missing.append(pseudonym)
            elif (index := self._last[pseudonym]) is not None:
                found[pseudonym] = index
        return found, missing

    def learn(self, read: Mapping[bytes, int | None]) -> None:
        """Remember what was read from the log at the current state."""
        self._put(read.items())

    def planned(self, plan: BatchPlan) -> None:
        """Move on to the state after ``plan``, its leaves' pseudonyms now ending at them."""
        self._put((p.pseudonym, p.index) for p in plan.leaves if p.pseudonym is not None)
        self._size, self._root = plan.state.size, plan.state.root

    def _put(self, items: Iterable[tuple[bytes, int | None]]) -> None:
        last = self._last
        for pseudonym, index in items:
            last.pop(pseudonym, None)  # re-inserted last: the oldest go first when full
            last[pseudonym] = index
        while len(last) > self._max:
            del last[next(iter(last))]


def sign_state(sign: CheckpointSigner, state: TreeState) -> StoredCheckpoint:
    """Have ``sign`` sign ``state`` and check the note says what was asked (size and root),
    so a misconfigured signer cannot store a checkpoint for another tree.

    A signer whose ``exact_body`` attribute is true (``ledger.writer.checkpoint_signer``'s:
    it formats the body from the size and root it is given) is checked by comparing the
    body's size and root lines (C2SP tlog-checkpoint: origin, size, base64 root hash) with
    those asked for; any other signer's note, or one whose lines differ, is parsed whole
    (:func:`check_checkpoint_note`, which raises on a malformed note too)."""
    note = sign(state.size, state.root)
    if not (getattr(sign, "exact_body", False) is True and _states(note, state)):
        check_checkpoint_note(note, state.size, state.root)
    return StoredCheckpoint(state.size, state.root, note)


def _states(note: str, state: TreeState) -> bool:
    """Are the note's second and third lines ``state``'s size and root (base64, RFC 4648)?"""
    lines = note.split("\n", 3)
    return (
        len(lines) == 4
        and lines[1] == str(state.size)
        and lines[2] == base64.b64encode(state.root).decode("ascii")
    )


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
