"""Recovery: rebuild the tree state from the stored leaves and check everything stored against it.

A store replays its log when it opens and whenever asked (``rebuild_state``). It feeds the leaf
rows in index order to a :class:`Replay`, which checks, for each row:

- indexes are contiguous from 0 (an append-only log has no gaps);
- the stored leaf hash is ``SHA-256(0x00 || leaf)`` of the stored bytes (RFC 9162 §2.1.1),
  and the bytes are a valid leaf (``decode_leaf``);
- the stored pseudonym column (what ``previous`` lookups use) is the leaf's pseudonym, and
  ``previous`` points at the pseudonym's latest earlier entry;
- at every checkpointed size, the recomputed root is the checkpoint's root and the note's
  body says that size and root.

:meth:`Replay.finish` then compares the stored tree state with the recomputed one. A state
*behind* the leaves is recoverable (the store rewrites it: ``Outcome.rebuilt``); anything else
(a state ahead of the leaves, a different range or root at the same size, a checkpoint beyond
the leaves) means the tables were edited outside the store, and raises
:class:`VerificationError`: the store then refuses to open rather than extend a forged log.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from middleware.ledger.entry import StoredCheckpoint, TreeState
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.leaf import decode_leaf
from middleware.ledger.merkle import CompactRange, leaf_hash
from middleware.ledger.sequencer import check_checkpoint_note

__all__ = ["Outcome", "Replay"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The replayed ``state``; ``rebuilt`` is true when the stored state was behind it (or
    missing) and must be rewritten; ``unsigned`` is true when no checkpoint covers its size."""

    state: TreeState
    rebuilt: bool
    unsigned: bool


class Replay:
    """Feed leaf rows with :meth:`feed` in index order, then call :meth:`finish` once."""

    def __init__(self, checkpoints: Iterable[StoredCheckpoint]) -> None:
        self._compact = CompactRange()
        self._last: dict[bytes, int] = {}
        self._checkpoints = {c.size: c for c in checkpoints}
        if 0 in self._checkpoints:
            self._check_checkpoint(self._checkpoints[0])

    def feed(self, index: int, leaf: bytes, stored_hash: bytes, pseudonym: bytes | None) -> None:
        """Check one leaf row and add it to the tree (raises :class:`VerificationError`)."""
        if index != self._compact.size:
            raise VerificationError(
                "leaf indexes are not contiguous", expected=self._compact.size, computed=index
            )
        computed = leaf_hash(leaf)
        if not hmac.compare_digest(computed, stored_hash):
            raise VerificationError(
                f"stored hash of leaf {index} does not match its bytes",
                expected=stored_hash,
                computed=computed,
            )
        try:
            decoded = decode_leaf(leaf)
        except MalformedError as exc:
            raise VerificationError(f"leaf {index} is malformed: {exc}") from exc
        if decoded.pseudonym != pseudonym:
            raise VerificationError(f"pseudonym column of leaf {index} differs from the leaf")
        if decoded.pseudonym is not None:
            expected_previous = self._last.get(decoded.pseudonym)
            if decoded.previous != expected_previous:
                raise VerificationError(
                    f"leaf {index} breaks its pseudonym chain",
                    expected=expected_previous,
                    computed=decoded.previous,
                )
            self._last[decoded.pseudonym] = index
        self._compact.append(computed)
        size = self._compact.size
        if size in self._checkpoints:
            self._check_checkpoint(self._checkpoints[size])

    def finish(self, stored: TreeState | None) -> Outcome:
        """Compare the stored state (``None``: no state row) with the replayed one."""
        replayed = TreeState.of(self._compact)
        beyond = [s for s in self._checkpoints if s > replayed.size]
        if beyond:
            raise VerificationError(
                "a checkpoint is beyond the stored leaves",
                expected=replayed.size,
                computed=max(beyond),
            )
        unsigned = replayed.size not in self._checkpoints
        if stored is None:
            return Outcome(replayed, rebuilt=True, unsigned=unsigned)
        if stored.size > replayed.size:
            raise VerificationError(
                "tree state is ahead of the leaves", expected=replayed.size, computed=stored.size
            )
        if stored.size < replayed.size:
            # Cannot happen when leaves and state commit in one transaction; recoverable if the
            # stored state is an honest earlier state, which the checkpoints already pin down.
            return Outcome(replayed, rebuilt=True, unsigned=unsigned)
        if stored.hashes != replayed.hashes or not hmac.compare_digest(stored.root, replayed.root):
            raise VerificationError(
                "stored tree state does not match the leaves",
                expected=replayed.root,
                computed=stored.root,
            )
        return Outcome(replayed, rebuilt=False, unsigned=unsigned)

    def _check_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        computed = self._compact.root()
        if not hmac.compare_digest(checkpoint.root, computed):
            raise VerificationError(
                f"checkpoint for size {checkpoint.size} has another root than the leaves",
                expected=checkpoint.root,
                computed=computed,
            )
        try:
            check_checkpoint_note(checkpoint.note, checkpoint.size, checkpoint.root)
        except MalformedError as exc:
            raise VerificationError(f"checkpoint note for size {checkpoint.size}: {exc}") from exc
