"""Recovery: rebuild the tree state from the stored leaves and check everything stored against it.

A store replays its log when it opens and whenever asked (``rebuild_state``). It feeds the leaf
rows in index order to a :class:`Replay` (:meth:`Replay.feed_rows`, or :meth:`Replay.feed` one
at a time), which checks, for each row:

- indexes are contiguous from 0 (an append-only log has no gaps);
- the stored leaf hash is ``SHA-256(0x00 || leaf)`` of the stored bytes (RFC 9162 §2.1.1),
  and the bytes are a valid leaf (``leaf.leaf_link``, the checks of ``decode_leaf``);
- the stored pseudonym column (what ``previous`` lookups use) is the leaf's pseudonym, and
  ``previous`` points at the pseudonym's latest earlier entry;
- at every checkpointed size, the recomputed root is the checkpoint's root and the note's
  body says that size and root.

:meth:`Replay.finish` then compares the stored tree state with the recomputed one. A state
*behind* the leaves is recoverable (the store rewrites it: ``Outcome.rebuilt``); anything else
(a state ahead of the leaves, a different range or root at the same size, a checkpoint beyond
the leaves) means the tables were edited outside the store, and raises
:class:`VerificationError`: the store then refuses to open rather than extend a forged log.

Speed: a replay runs on every open, over the whole log, so each row is checked by a flat loop
(:meth:`Replay.feed_rows`) that reads only the fields it checks with one ``struct`` unpack
(:func:`~middleware.ledger.leaf.leaf_link`, the leaf checks ``decode_leaf`` is built on) and
keeps the compact range as a plain list, about 1.4 µs a row instead of 4 to 7 µs with a
:class:`~middleware.ledger.leaf.Leaf` and a :class:`~middleware.ledger.merkle.CompactRange`
per row. A row the loop does not accept goes
through the step-by-step checks (:meth:`Replay.feed`'s), which raise the error saying what is
wrong, so a forged log is refused with the same error either way.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from middleware.ledger.entry import StoredCheckpoint, TreeState
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.leaf import decode_leaf, leaf_link
from middleware.ledger.merkle import EMPTY_ROOT, LEAF_PREFIX, NODE_PREFIX, leaf_hash, node_hash
from middleware.ledger.sequencer import check_checkpoint_note

__all__ = ["LeafRow", "Outcome", "Replay"]

#: ``(index, leaf, stored leaf hash, stored pseudonym column)``: one row as a store reads it.
LeafRow = tuple[int, bytes, bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The replayed ``state``; ``rebuilt`` is true when the stored state was behind it (or
    missing) and must be rewritten; ``unsigned`` is true when no checkpoint covers its size."""

    state: TreeState
    rebuilt: bool
    unsigned: bool


class Replay:
    """Feed leaf rows with :meth:`feed_rows` or :meth:`feed` in index order, then call
    :meth:`finish` once."""

    def __init__(self, checkpoints: Iterable[StoredCheckpoint]) -> None:
        self._size = 0
        #: The compact range: one subtree root per set bit of ``_size``, leftmost first.
        self._edge: list[bytes] = []
        self._last: dict[bytes, int] = {}
        self._checkpoints = {c.size: c for c in checkpoints}
        if 0 in self._checkpoints:
            self._check_checkpoint(self._checkpoints[0])

    def feed(self, index: int, leaf: bytes, stored_hash: bytes, pseudonym: bytes | None) -> None:
        """Check one leaf row and add it to the tree (raises :class:`VerificationError`)."""
        if index != self._size:
            raise VerificationError(
                "leaf indexes are not contiguous", expected=self._size, computed=index
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
        self._append(computed)

    def feed_rows(self, rows: Iterable[LeafRow]) -> None:
        """:meth:`feed` each row, in one loop: the same checks, state and errors."""
        sha256, compare, link = hashlib.sha256, hmac.compare_digest, leaf_link
        edge, last, checkpoints = self._edge, self._last, self._checkpoints
        # A row the fast path does not accept goes to feed, which raises the error for it.
        # Each such branch then continues all the same: should feed ever accept the row, it
        # has checked and added it itself, so the loop never adds a row it did not check.
        for index, leaf, stored_hash, column in rows:
            size = self._size
            if index != size:
                self.feed(index, leaf, stored_hash, column)  # raises
                continue
            computed = sha256(LEAF_PREFIX + leaf).digest()
            if not compare(computed, stored_hash):
                self.feed(index, leaf, stored_hash, column)  # raises
                continue
            try:
                pseudonym, previous = link(leaf)
            except MalformedError:
                self.feed(index, leaf, stored_hash, column)  # raises
                continue
            if pseudonym != column:
                self.feed(index, leaf, stored_hash, column)  # raises
                continue
            if pseudonym is not None:
                if previous != last.get(pseudonym):
                    self.feed(index, leaf, stored_hash, column)  # raises
                    continue
                last[pseudonym] = index
            # Append (merkle.CompactRange.append): merge the subtrees this leaf completes.
            carry, n = computed, size
            while n & 1:
                carry = sha256(NODE_PREFIX + edge.pop() + carry).digest()
                n >>= 1
            edge.append(carry)
            self._size = size = size + 1
            if size in checkpoints:
                self._check_checkpoint(checkpoints[size])

    def finish(self, stored: TreeState | None) -> Outcome:
        """Compare the stored state (``None``: no state row) with the replayed one."""
        replayed = TreeState(self._size, tuple(self._edge), self._root())
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

    def _append(self, computed: bytes) -> None:
        """Add a checked leaf hash to the tree, then check a checkpoint at the new size."""
        edge, n = self._edge, self._size
        carry = computed
        while n & 1:
            carry = node_hash(edge.pop(), carry)
            n >>= 1
        edge.append(carry)
        self._size += 1
        if self._size in self._checkpoints:
            self._check_checkpoint(self._checkpoints[self._size])

    def _root(self) -> bytes:
        """MTH of the leaves fed so far (``merkle.CompactRange.root``)."""
        if not self._edge:
            return EMPTY_ROOT
        acc = self._edge[-1]
        for h in reversed(self._edge[:-1]):
            acc = node_hash(h, acc)
        return acc

    def _check_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        computed = self._root()
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
