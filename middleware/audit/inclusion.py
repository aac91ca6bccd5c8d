"""Many RFC 9162 inclusion proofs against one checkpoint, most in about one hash each.

:class:`InclusionChecker` gives the same answer as
:func:`~middleware.ledger.merkle.verify_inclusion` (RFC 9162 §2.1.3.2) for each proof, and
remembers the path of the last leaf it found included: every node from the leaf to the root
and the proof's hashes beside them. An export lists entries in ascending index, so a leaf's
path meets the one before at the level where their indexes part (the lowest common subtree):
below it the leaf is hashed up from its own proof; there its node must be the right sibling
the path before named and its proof must name that path's node as its left sibling; above it
its proof must be exactly the path before's. Then the leaf's path reaches the signed root
through authenticated hashes, without hashing them again. Anything else (a first line, an
index not above the last, a proof that does not meet the path) is checked in full.
Pure: hashlib and hmac only.
"""

from __future__ import annotations

import hashlib
import hmac

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.merkle import (
    HASH_SIZE,
    LEAF_PREFIX,
    NODE_PREFIX,
    leaf_hash,
    verify_inclusion,
)

__all__ = ["InclusionChecker"]

_SHA = hashlib.sha256


class InclusionChecker:
    """RFC 9162 §2.1.3.2 inclusion checks against one checkpoint, meeting the path of the
    last included leaf (see the module docstring).

    The path is kept by level (0: the leaf): ``nodes[k]`` the path's node at level ``k`` (up
    to the root; a node carried up the tree's right edge repeats), ``ends[k]`` where the hash
    beside it at that level is, when it is a right sibling, as its distance from the end of
    ``proof`` (0: a left sibling or none). Distances from the end stay valid for a later leaf
    whose proof ends as this one's does, so levels above the meeting point are kept as they
    are and only the levels at and below it are replaced."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.size = checkpoint.size
        self.root = checkpoint.root_hash
        self.last = -1  # the index of the remembered path's leaf (-1: none yet)
        self.proof = b""
        self.nodes: list[bytes] = []
        self.ends: list[int] = []

    def check(self, index: int, leaf: bytes, proof: bytes) -> bool:
        """Whether ``proof`` (concatenated hashes) proves ``leaf`` at ``index``."""
        if not 0 <= index < self.size or len(proof) % HASH_SIZE:
            return False
        if 0 <= self.last < index and self._meets(index, leaf, proof):
            return True
        return self._full(index, leaf, proof)

    def _meets(self, index: int, leaf: bytes, proof: bytes) -> bool:
        """Whether the proof meets the remembered path where the indexes part (then the leaf's
        path is remembered instead); False also when it does not, which the full check then
        judges."""
        meet = (index ^ self.last).bit_length() - 1  # the level where last and index part
        nodes, ends = self.nodes, self.ends
        if meet >= len(ends) or not ends[meet]:
            return False
        sha, r = _SHA, _SHA(LEAF_PREFIX + leaf).digest()
        if not meet:  # the loop below, unrolled for the leaf right of the last (half of them)
            before = self.proof
            at = len(before) - ends[0]
            if (
                proof[:HASH_SIZE] != nodes[0]
                or r != before[at : at + HASH_SIZE]
                or proof[HASH_SIZE:] != before[at + HASH_SIZE :]
            ):
                return False
            nodes[0], ends[0], self.last, self.proof = r, 0, index, proof
            return True
        fn, sn, end, j = index, self.size - 1, len(proof), 0
        path, beside = [r], []  # this leaf's nodes and ends, levels 0 to meet
        while j < end:
            if sn == 0:
                return False
            p = proof[j : j + HASH_SIZE]
            if fn & 1 or fn == sn:
                while not fn & 1 and fn:  # carried up the right edge: no sibling here
                    fn, sn = fn >> 1, sn >> 1
                    beside.append(0)
                    path.append(r)
                if len(beside) == meet:
                    # p must be the remembered path's node here, r the right sibling it
                    # named, and the rest of the proof the rest of its proof.
                    before = self.proof
                    at = len(before) - ends[meet]
                    if (
                        p != nodes[meet]
                        or r != before[at : at + HASH_SIZE]
                        or proof[j + HASH_SIZE :] != before[at + HASH_SIZE :]
                    ):
                        return False
                    beside.append(0)
                    nodes[: meet + 1] = path
                    ends[: meet + 1] = beside
                    self.last, self.proof = index, proof
                    return True
                beside.append(0)
                r = sha(NODE_PREFIX + p + r).digest()
            else:
                beside.append(end - j)
                r = sha(NODE_PREFIX + r + p).digest()
            fn, sn, j = fn >> 1, sn >> 1, j + HASH_SIZE
            path.append(r)
            if len(beside) > meet:
                return False
        return False

    def _full(self, index: int, leaf: bytes, proof: bytes) -> bool:
        """RFC 9162 §2.1.3.2 (``merkle.verify_inclusion``'s loop); an included leaf's path
        becomes the remembered one."""
        r = _SHA(LEAF_PREFIX + leaf).digest()
        nodes, ends = [r], []
        fn, sn, end = index, self.size - 1, len(proof)
        for j in range(0, end, HASH_SIZE):
            if sn == 0:
                return False
            p = proof[j : j + HASH_SIZE]
            if fn & 1 or fn == sn:
                while not fn & 1 and fn:
                    fn, sn = fn >> 1, sn >> 1
                    ends.append(0)
                    nodes.append(r)
                ends.append(0)
                r = _SHA(NODE_PREFIX + p + r).digest()
            else:
                ends.append(end - j)
                r = _SHA(NODE_PREFIX + r + p).digest()
            fn, sn = fn >> 1, sn >> 1
            nodes.append(r)
        if sn != 0 or not hmac.compare_digest(r, self.root):
            return False
        self.last, self.proof, self.nodes, self.ends = index, proof, nodes, ends
        return True

    def explain(self, index: int, leaf: bytes, proof: bytes) -> str:
        """Why the proof fails, as the reference verifier says it."""
        hashes = [proof[i : i + HASH_SIZE] for i in range(0, len(proof), HASH_SIZE)]
        try:
            verify_inclusion(leaf_hash(leaf), index, self.size, hashes, self.root)
        except LedgerError as exc:
            return f"inclusion proof: {exc}"
        return "inclusion proof: its hashes are not the tree's"
