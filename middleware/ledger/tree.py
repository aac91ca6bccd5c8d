"""Every complete subtree of a growing RFC 9162 tree, for roots and proofs at any size.

:class:`MerkleLevels` keeps, for each level ``k``, the hashes of the complete subtrees of
``2**k`` leaves that start at multiples of ``2**k`` (level 0 holds the leaf hashes). That is
about ``2n`` hashes for ``n`` leaves, and it answers:

- :meth:`root` at any size ``m <= n`` in O(log n): MTH(D[0:m]) of RFC 9162 §2.1.1 is the
  right-to-left fold of the complete subtrees named by the set bits of ``m``;
- :meth:`inclusion_proof` and :meth:`consistency_proof` (§2.1.3.1, §2.1.4.1) in O(log² n),
  through :func:`~middleware.ledger.merkle.inclusion_path` and
  :func:`~middleware.ledger.merkle.consistency_path`, whose subtrees are all aligned.

:meth:`extend` hashes a whole level at a time (one comprehension per level), which is what
makes offline verification fast; appending a few leaves costs a few hashes. Everything here
is pure: hashlib only, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from middleware.ledger.errors import MalformedError, OutOfRangeError
from middleware.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    LEAF_PREFIX,
    NODE_PREFIX,
    consistency_path,
    inclusion_path,
    node_hash,
)

__all__ = ["MerkleLevels", "hash_leaves"]

_LEAF_STATE = hashlib.sha256(LEAF_PREFIX)


def hash_leaves(leaves: Iterable[bytes]) -> list[bytes]:
    """``SHA-256(0x00 || leaf)`` of each stored leaf, in order (RFC 9162 §2.1.1).

    A copied hash state that has already absorbed the prefix is faster than concatenating.
    """
    out: list[bytes] = []
    append = out.append
    start = _LEAF_STATE.copy
    for leaf in leaves:
        h = start()
        h.update(leaf)
        append(h.digest())
    return out


class MerkleLevels:
    """The complete subtrees of a tree that only grows (see the module docstring)."""

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Leaves in the tree."""
        return len(self._levels[0])

    def leaf_hash(self, index: int) -> bytes:
        """The RFC 9162 hash of leaf ``index``."""
        if not 0 <= index < self.size:
            raise OutOfRangeError(f"leaf index {index} is not in a tree of size {self.size}")
        return self._levels[0][index]

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaf hashes (32 bytes each) and every subtree they complete."""
        added = list(leaf_hashes)
        if any(len(h) != HASH_SIZE for h in added):
            raise MalformedError(f"a leaf hash is {HASH_SIZE} bytes")
        levels = self._levels
        levels[0].extend(added)
        k = 0
        while len(levels[k]) >= 2:
            if len(levels) == k + 1:
                levels.append([])
            below, above = levels[k], levels[k + 1]
            start = 2 * len(above)
            if start + 1 < len(below):
                prefix = NODE_PREFIX
                sha = hashlib.sha256
                left, right = below[start::2], below[start + 1 :: 2]
                above.extend(
                    [sha(prefix + a + b).digest() for a, b in zip(left, right, strict=False)]
                )
            k += 1

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]) (RFC 9162 §2.1.1); the whole tree's root by default."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), from the leaf's sibling upwards."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise OutOfRangeError(f"leaf index {index} is not in a tree of size {size}")
        return inclusion_path(self._subtree, index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) (RFC 9162 §2.1.4.1); empty for 0 or equal sizes."""
        new_size = self.size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise OutOfRangeError(f"old size {old_size} is not within new size {new_size}")
        return consistency_path(self._subtree, old_size, new_size)

    def _subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]): a stored node when the range is an aligned power of two, else the
        RFC's split at the largest power of two below the length (O(log n) when aligned)."""
        width = hi - lo
        if width == 0:
            return EMPTY_ROOT
        if width & (width - 1) == 0 and lo % width == 0:
            k = width.bit_length() - 1
            return self._levels[k][lo >> k]
        split = 1 << ((width - 1).bit_length() - 1)
        return node_hash(self._subtree(lo, lo + split), self._subtree(lo + split, hi))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise OutOfRangeError(f"tree size {size} is not within the {self.size} leaves")

    @classmethod
    def of_leaves(cls, leaves: Sequence[bytes]) -> MerkleLevels:
        """The tree over stored leaf bytes (hashed with :func:`hash_leaves`)."""
        return cls(hash_leaves(leaves))
