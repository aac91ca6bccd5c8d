"""RFC 9162 inclusion proofs for many entries of one tree size, fast (an export's proofs).

An RFC 9162 tree of ``n`` leaves is the left-balanced tree whose node at level ``k`` and
position ``p`` covers the leaves ``[p * 2**k, min((p + 1) * 2**k, n))``; a node whose block
runs past ``n`` with nothing in its right half is its left child, promoted. So the inclusion
path of leaf ``i`` (§2.1.3.1, sibling first) is, level by level, the node beside the leaf's
ancestor, ``p = (i >> k) ^ 1``, when its block starts before ``n``: a stored complete subtree,
or, at the tree's right edge, the hash of a partial block (one per level, computed once).
That is a loop of ``log2(n)`` list lookups instead of the recursive split of
:meth:`~middleware.ledger.tree.MerkleLevels.inclusion_proof`, which it equals (a property test
checks). Pure: hashlib only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.merkle import NODE_PREFIX

__all__ = ["ProofMaker"]


class ProofMaker:
    """Inclusion proofs in the tree over ``leaf_hashes`` at its full size."""

    __slots__ = ("_levels", "_partial", "size")

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

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1; ``size`` must be the full size."""
        n = self.size
        if size is not None and size != n:
            raise OutOfRangeError(f"proofs are made at size {n}, not {size}")
        if not 0 <= index < n:
            raise OutOfRangeError(f"leaf index {index} is not in a tree of size {n}")
        levels, path, k = self._levels, [], 0
        while (1 << k) < n:
            sibling = (index >> k) ^ 1
            start = sibling << k
            if start < n:
                if start + (1 << k) <= n:
                    path.append(levels[k][sibling])
                else:
                    path.append(self._block(start, n))
            k += 1
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
