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
maker remembers, per level, the last node's path above it, its hashes already concatenated as
an export line carries them (:meth:`ProofMaker.inclusion_bytes`): proofs asked in index order
(an export's) cost about one bytes concatenation each. Pure: hashlib only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.merkle import EMPTY_ROOT, HASH_SIZE, NODE_PREFIX

__all__ = ["ProofMaker"]


class ProofMaker:
    """Inclusion proofs in the tree over ``leaf_hashes`` at its full size."""

    __slots__ = ("_height", "_levels", "_nodes", "_partial", "_paths", "size")

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
        #: per level k: the last node asked for at k, and its path from level k up (the hashes
        #: concatenated); level ``_height`` is the root's, whose path is empty.
        self._nodes = [-1] * self._height + [0]
        self._paths = [b""] * (self._height + 1)

    def root(self) -> bytes:
        """MTH of the leaves (RFC 9162 §2.1.1): the root a checkpoint of this size signs."""
        return self._block(0, self.size) if self.size else EMPTY_ROOT

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index`` the proofs are made from."""
        return self._levels[0][index]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1; ``size`` must be the full size."""
        path = self.inclusion_bytes(index, size)
        return [path[i : i + HASH_SIZE] for i in range(0, len(path), HASH_SIZE)]

    def inclusion_bytes(self, index: int, size: int | None = None) -> bytes:
        """:meth:`inclusion_proof`'s hashes concatenated, as an export line carries them."""
        n = self.size
        if size is not None and size != n:
            raise OutOfRangeError(f"proofs are made at size {n}, not {size}")
        if not 0 <= index < n:
            raise OutOfRangeError(f"leaf index {index} is not in a tree of size {n}")
        nodes, paths, levels = self._nodes, self._paths, self._levels
        k = 0
        while nodes[k] != index >> k:  # up to the lowest level whose path is remembered
            k += 1
        path = paths[k]
        while k:  # then down again, each level's sibling before the path above it
            k -= 1
            node = index >> k
            sibling = node ^ 1
            start = sibling << k
            if start < n:
                width = 1 << k
                path = (levels[k][sibling] if start + width <= n else self._block(start, n)) + path
            nodes[k], paths[k] = node, path
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
