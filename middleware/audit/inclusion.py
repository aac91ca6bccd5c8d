"""Many RFC 9162 inclusion proofs against one checkpoint, each in about one hash.

:class:`InclusionChecker` gives the same answer as
:func:`~middleware.ledger.merkle.verify_inclusion` (RFC 9162 §2.1.3.2) for each proof, but
remembers every node a proof has authenticated (every node on a path that reached the signed
root, and the hashes above it). A later proof that reaches one of them is decided there: its
computed node must equal the remembered one and its remaining hashes must be exactly the
remembered ones. An export lists entries in index order, so most proofs meet an earlier one a
level or two above their leaf. Pure: hashlib and hmac only.
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
#: Remembered nodes before the cache starts over (a dense export refills it at once).
_CACHE_LIMIT = 1 << 21


class InclusionChecker:
    """RFC 9162 §2.1.3.2 inclusion checks against one checkpoint, remembering authenticated
    nodes (see the module docstring).

    A node is named by ``(k, fn)``: after ``k`` halvings of the index, ``fn = index >> k``,
    the same for every leaf under it (the RFC's right-edge promotion included), so two proofs
    meet at equal names. For each authenticated node the cache keeps its hash and the proof
    hashes above it (a proof and an offset into it): a later proof that reaches the node with
    the same hash must continue with exactly those hashes.

    A proof that reached the root also authenticates the right siblings it named: the hash
    ``p`` of ``(k, fn + 1)`` beside a computed left node ``r`` at ``(k, fn)``, whose own path
    is ``r`` then the hashes above their parent. They are remembered too, so in an export in
    index order each interior node is hashed once (by the first leaf under it) instead of
    twice, and an odd leaf costs one hash, its own."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.size = checkpoint.size
        self.root = checkpoint.root_hash
        self.cache: dict[int, tuple[bytes, bytes, int]] = {}

    def check(self, index: int, leaf: bytes, proof: bytes) -> bool:
        """Whether ``proof`` (concatenated hashes) proves ``leaf`` at ``index``."""
        if not 0 <= index < self.size or len(proof) % HASH_SIZE:
            return False
        cache, sha, seen = self.cache, _SHA, []
        # A node's name (k, fn) as one int, fn << 7 | k (k < 128): an int key hashes faster.
        fn, sn, k, r = index, self.size - 1, 0, sha(LEAF_PREFIX + leaf).digest()
        end, i = len(proof), 0
        while True:
            known = cache.get(fn << 7 | k)
            if known is not None:
                node, other, at = known
                if node != r or proof[i:] != other[at:]:
                    return False
                break
            seen.append((fn << 7 | k, (r, proof, i)))
            if i == end:
                if sn != 0 or not hmac.compare_digest(r, self.root):
                    return False
                break
            if sn == 0:
                return False
            p = proof[i : i + HASH_SIZE]
            if fn & 1 or fn == sn:
                while not fn & 1 and fn:
                    fn, sn, k = fn >> 1, sn >> 1, k + 1
                if not fn:
                    return False
                r = sha(NODE_PREFIX + p + r).digest()
            else:  # p is the right sibling (k, fn + 1); its path: r, then ours above them
                seen.append(((fn + 1) << 7 | k, (p, r + proof[i + HASH_SIZE :], 0)))
                r = sha(NODE_PREFIX + r + p).digest()
            fn, sn, k, i = fn >> 1, sn >> 1, k + 1, i + HASH_SIZE
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        cache.update(seen)
        return True

    def explain(self, index: int, leaf: bytes, proof: bytes) -> str:
        """Why the proof fails, as the reference verifier says it."""
        hashes = [proof[i : i + HASH_SIZE] for i in range(0, len(proof), HASH_SIZE)]
        try:
            verify_inclusion(leaf_hash(leaf), index, self.size, hashes, self.root)
        except LedgerError as exc:
            return f"inclusion proof: {exc}"
        return "inclusion proof: its hashes are not the tree's"
