"""RFC 9162 inclusion proofs for many entries of one tree size, fast (an export's proofs).

An RFC 9162 tree of ``n`` leaves is the left-balanced tree whose node at level ``k`` and
position ``p`` covers the leaves ``[p * 2**k, min((p + 1) * 2**k, n))``; a node whose block
runs past ``n`` with nothing in its right half is its left child, promoted. So the inclusion
path of leaf ``i`` (§2.1.3.1, sibling first) is, level by level, the node beside the leaf's
ancestor, ``p = (i >> k) ^ 1``, when its block starts before ``n``: a stored complete subtree,
or, at the tree's right edge, the hash of a partial block (one per level, computed once).
That is a loop of ``log2(n)`` list lookups instead of the recursive split of
:meth:`~middleware.ledger.tree.MerkleLevels.inclusion_proof`, which it equals (a property test
checks). Neighbouring leaves share the path above the node where their paths meet, so the
maker remembers, per level, the last node's path above it: proofs asked in index order (an
export's) cost about two tuple joins each instead of the loop. Pure: hashlib only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.merkle import NODE_PREFIX

__all__ = ["ProofMaker"]


class ProofMaker:
    """Inclusion proofs in the tree over ``leaf_hashes`` at its full size."""

    __slots__ = ("_above", "_height", "_levels", "_partial", "size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.size = len(leaf_hashes)
        levels = [list(leaf_hashes)]
        sha = hashlib.sha256
        while len(levels[-1]) >= 2:  # complete subtrees only: a pair per node above
            below = levels[-1]
            # An odd last node has no pair: strict=False leaves it out (it is no complete node).
            pairs = zip(below[::2], below[1::2], strict=False)
            levels.append([sha(NODE_PREFIX + a + b).digest() for a, b in pairs])
        self._levels = levels
        self._partial: dict[tuple[int, int], bytes] = {}
        self._height = max(self.size - 1, 0).bit_length()  # levels k with 2**k < size
        #: per level k: (the last node asked for at k, its path from level k up)
        self._above: list[tuple[int, tuple[bytes, ...]]] = [(-1, ())] * (self._height + 1)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1; ``size`` must be the full size."""
        n = self.size
        if size is not None and size != n:
            raise OutOfRangeError(f"proofs are made at size {n}, not {size}")
        if not 0 <= index < n:
            raise OutOfRangeError(f"leaf index {index} is not in a tree of size {n}")
        return list(self._path(0, index))

    def _path(self, k: int, node: int) -> tuple[bytes, ...]:
        """The path of the level-``k`` ``node`` from level ``k`` up (remembered per level)."""
        if k >= self._height:
            return ()
        last, path = self._above[k]
        if last == node:
            return path
        n, sibling = self.size, node ^ 1
        start = sibling << k
        path = self._path(k + 1, node >> 1)
        if start < n:
            if start + (1 << k) <= n:
                path = (self._levels[k][sibling], *path)
            else:
                path = (self._block(start, n), *path)
        self._above[k] = (node, path)
        return path

    def _block(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) of a block ending at the tree's right edge (cached)."""
        key = (lo, hi)
        found = self._partial.get(key)
        if found is None:
            width = hi - lo
            if width & (width - 1) == 0 and lo % width == 0:
                found = self._levels[width.bit_length() - 1][lo // width]
            else:
                split = 1 << ((width - 1).bit_length() - 1)
                left = self._levels[split.bit_length() - 1][lo // split]
                right = self._block(lo + split, hi)
                found = hashlib.sha256(NODE_PREFIX + left + right).digest()
            self._partial[key] = found
        return found
