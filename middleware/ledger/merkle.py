"""RFC 9162 Merkle tree hashing, inclusion and consistency proofs.

Definitions follow RFC 9162 (Certificate Transparency 2.0), §2.1, with SHA-256 and the
domain-separation prefixes of §2.1.1: a leaf hashes as ``SHA-256(0x00 || leaf)``, an interior
node as ``SHA-256(0x01 || left || right)``, and the empty tree as ``SHA-256()``. A tree over
``n`` leaves splits at ``k``, the largest power of two strictly below ``n``. These trees and
hashes are the ones RFC 6962 defined, so RFC 6962 test vectors apply unchanged.

Contracts:

- Every hash given or returned is 32 bytes; sizes and indexes are ``int`` and never negative.
- Proof *generation* takes the full list of leaf hashes (``leaf_hashes[:size]`` is the tree)
  and raises :class:`OutOfRangeError` for an index or size the list does not cover, and
  :class:`MalformedError` for a hash that is not 32 bytes. It costs O(size) hashes.
- Proof *verification* implements the algorithms of §2.1.3.2 (inclusion) and §2.1.4.2
  (consistency) and raises :class:`VerificationError` for any failure, including malformed
  input; roots are compared with :func:`hmac.compare_digest`. It costs O(log size).
- :class:`CompactRange` keeps the right edge of a growing tree (one hash per set bit of its
  size), so a writer appends in amortised O(1) and reads the root in O(log n).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from middleware.ledger.errors import MalformedError, OutOfRangeError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "CompactRange",
    "SubtreeHash",
    "consistency_path",
    "consistency_proof",
    "inclusion_path",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

#: Bytes in a SHA-256 digest, the only hash RFC 9162 trees here use.
HASH_SIZE = 32
#: RFC 9162 §2.1.1 domain separation: leaves and interior nodes can never hash alike.
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: MTH({}) = SHA-256() (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``subtree(lo, hi)``: MTH(D[lo:hi]), the hash of the leaves ``lo`` to ``hi - 1``.
SubtreeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the Merkle hash of one leaf's stored bytes."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of RFC 9162 §2.1.1 over ``leaf_hashes`` (already leaf-hashed), in O(n).

    Hashes level by level, carrying an odd last node up unchanged: that is the same tree as
    the recursive split at the largest power of two below ``n``.
    """
    _check_hashes(leaf_hashes)
    return _subtree(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered from the leaf upwards.

    Raises :class:`OutOfRangeError` unless ``0 <= index < size <= len(leaf_hashes)``.
    """
    _check_size(size, len(leaf_hashes))
    if not 0 <= index < size:
        raise OutOfRangeError(f"leaf index {index} is not in a tree of size {size}")
    _check_hashes(leaf_hashes[:size])
    return inclusion_path(lambda lo, hi: _subtree(leaf_hashes, lo, hi), index, size)


def inclusion_path(subtree: SubtreeHash, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1 over any ``subtree(lo, hi)`` = MTH(D[lo:hi]).

    The caller has checked ``0 <= index < size``. Every range asked for starts at a multiple
    of the largest power of two not above its length (an aligned subtree, or the right edge of
    one), which lets a store of complete subtrees answer in O(log n).
    """
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()  # built top-down; the RFC lists the sibling nearest the leaf first
    return path


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1.

    Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove). Raises
    :class:`OutOfRangeError` unless ``0 <= old_size <= new_size <= len(leaf_hashes)``.
    """
    _check_size(new_size, len(leaf_hashes))
    if not 0 <= old_size <= new_size:
        raise OutOfRangeError(f"old size {old_size} is not within new size {new_size}")
    _check_hashes(leaf_hashes[:new_size])
    return consistency_path(lambda lo, hi: _subtree(leaf_hashes, lo, hi), old_size, new_size)


def consistency_path(subtree: SubtreeHash, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1 over any ``subtree(lo, hi)``.

    The caller has checked ``0 <= old_size <= new_size``; ranges are aligned as in
    :func:`inclusion_path`.
    """
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole_old_tree = 0, new_size, old_size, True
    while m != hi - lo:  # SUBPROOF(m, D[lo:hi], whole_old_tree)
        k = _split(hi - lo)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo, m, whole_old_tree = lo + k, m - k, False
    if not whole_old_tree:
        proof.append(subtree(lo, hi))
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) sits at ``index`` of the tree whose root is
    ``expected_root`` at ``size``, per RFC 9162 §2.1.3.2. Returns ``None`` or raises
    :class:`VerificationError`.
    """
    _check_proof_input([leaf, expected_root, *proof])
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError(
                "inclusion proof too long", expected=_path_length(index, size), computed=len(proof)
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError(
            "inclusion proof too short", expected=_path_length(index, size), computed=len(proof)
        )
    _compare("inclusion proof does not lead to the root", expected_root, r)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the one of ``old_size``
    with ``old_root``, per RFC 9162 §2.1.4.2. Returns ``None`` or raises
    :class:`VerificationError`.

    The RFC covers ``0 < old_size < new_size``; the edges are decided here: equal sizes need
    an empty proof and equal roots; ``old_size == 0`` needs an empty proof and ``old_root``
    equal to :data:`EMPTY_ROOT` (every tree extends the empty one).
    """
    _check_proof_input([old_root, new_root, *proof])
    if not 0 <= old_size <= new_size:
        raise VerificationError(f"old size {old_size} is not within new size {new_size}")
    if old_size in (0, new_size):
        if proof:
            raise VerificationError(
                "consistency proof must be empty", expected=0, computed=len(proof)
            )
        if old_size == 0:
            _compare("old root is not the empty tree's root", EMPTY_ROOT, old_root)
        else:
            _compare("same size, different roots", old_root, new_root)
        return
    if not proof:
        raise VerificationError("consistency proof is empty")
    path = list(proof)
    if (old_size & (old_size - 1)) == 0:  # old tree is a complete subtree: its root starts it
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("consistency proof too short")
    _compare("consistency proof does not lead to the old root", old_root, fr)
    _compare("consistency proof does not lead to the new root", new_root, sr)


class CompactRange:
    """The right edge of a tree that only grows: the roots of its maximal complete subtrees.

    A tree of ``size`` leaves is the concatenation of complete subtrees, one per set bit of
    ``size``, largest (leftmost) first; :attr:`hashes` holds their roots in that order. This is
    all the state a writer needs to append and to sign a root, and it is what it persists.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        """Restore a range; ``hashes`` must hold exactly ``size.bit_count()`` 32-byte roots."""
        hashes = list(hashes)
        if size < 0:
            raise OutOfRangeError(f"tree size {size} is negative")
        if len(hashes) != size.bit_count():
            raise MalformedError(f"size {size} needs {size.bit_count()} subtree hashes")
        _check_hashes(hashes)
        self._size = size
        self._hashes = hashes

    @property
    def size(self) -> int:
        """Leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Subtree roots, leftmost (largest) first."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash; merges the equal-sized subtrees it completes."""
        _check_hashes([leaf])
        carry, n = leaf, self._size
        while n & 1:
            carry = node_hash(self._hashes.pop(), carry)
            n >>= 1
        self._hashes.append(carry)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append each leaf hash in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of the leaves appended so far (RFC 9162 §2.1.1)."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) level by level; the last node of an odd level moves up unchanged."""
    if lo == hi:
        return EMPTY_ROOT
    level = list(leaf_hashes[lo:hi])
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def _path_length(index: int, size: int) -> int:
    """Hashes in the inclusion proof of ``index`` in a tree of ``size`` (0 <= index < size)."""
    inner = (index ^ (size - 1)).bit_length()  # levels below the point where the paths split
    return inner + (index >> inner).bit_count()  # plus left siblings along the right border


def _check_size(size: int, available: int) -> None:
    if not 0 <= size <= available:
        raise OutOfRangeError(f"tree size {size} is not within the {available} leaves given")


def _check_hashes(hashes: Iterable[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise MalformedError(f"a hash must be {HASH_SIZE} bytes, not {len(h)}")


def _check_proof_input(hashes: Iterable[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise VerificationError("hash of the wrong length", expected=HASH_SIZE, computed=len(h))


def _compare(message: str, expected: bytes, computed: bytes) -> None:
    if not hmac.compare_digest(expected, computed):
        raise VerificationError(message, expected=expected, computed=computed)
