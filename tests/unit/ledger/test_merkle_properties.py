"""Properties of the Merkle code against a naive transcription of RFC 9162 §2.1.

The reference functions below follow the recursive definitions of MTH (§2.1.1), PATH
(§2.1.3.1) and SUBPROOF (§2.1.4.1) literally, slicing lists. Every tree size from 0 to 1,024
is checked (that covers 0, 1 and every 2**k, 2**k - 1 and 2**k + 1 up to 1,024); indexes and
old sizes are sampled at the edges and by hypothesis.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.errors import OutOfRangeError, VerificationError
from middleware.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

MAX = 1024
LEAVES = [leaf_hash(i.to_bytes(2, "big")) for i in range(MAX + 1)]


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


# The reference works on LEAVES[lo:hi]; caching only spares recomputing identical subtrees.
@functools.cache
def naive_mth(lo: int, hi: int) -> bytes:
    if hi == lo:
        return EMPTY_ROOT
    if hi - lo == 1:
        return LEAVES[lo]
    k = _k(hi - lo)
    return node_hash(naive_mth(lo, lo + k), naive_mth(lo + k, hi))


def naive_path(m: int, lo: int, hi: int) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _k(hi - lo)
    if m < k:
        return [*naive_path(m, lo, lo + k), naive_mth(lo + k, hi)]
    return [*naive_path(m - k, lo + k, hi), naive_mth(lo, lo + k)]


def naive_subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    if m == hi - lo:
        return [] if whole else [naive_mth(lo, hi)]
    k = _k(hi - lo)
    if m <= k:
        return [*naive_subproof(m, lo, lo + k, whole), naive_mth(lo + k, hi)]
    return [*naive_subproof(m - k, lo + k, hi, False), naive_mth(lo, lo + k)]


NAIVE_ROOTS = [naive_mth(0, n) for n in range(MAX + 1)]


def _edges(n: int) -> list[int]:
    """Indexes 0, 1, the middle, n-2 and n-1 that exist in a tree of size n."""
    return sorted({i for i in (0, 1, n // 2, n - 2, n - 1) if 0 <= i < n})


@functools.cache
def _inclusion(i: int, n: int) -> list[bytes]:
    return inclusion_proof(LEAVES, i, n)  # shared by the tests that walk every size


@functools.cache
def _consistency(m: int, n: int) -> list[bytes]:
    return consistency_proof(LEAVES, m, n)


def _flip(h: bytes, at: int) -> bytes:
    return h[:at] + bytes([h[at] ^ 0x01]) + h[at + 1 :]


# --- root ------------------------------------------------------------------------------------


def test_root_matches_naive_mth_for_every_size() -> None:
    for n in range(MAX + 1):
        assert root(LEAVES[:n]) == NAIVE_ROOTS[n], n


def test_compact_range_matches_naive_mth_after_every_append() -> None:
    compact = CompactRange()
    assert compact.root() == NAIVE_ROOTS[0]
    for n in range(1, MAX + 1):
        compact.append(LEAVES[n - 1])
        assert compact.size == n
        assert len(compact.hashes) == n.bit_count()
        assert compact.root() == NAIVE_ROOTS[n], n


@given(st.integers(0, MAX), st.integers(0, 64))
def test_compact_range_restored_from_its_hashes_continues_the_same_tree(
    size: int, more: int
) -> None:
    original = CompactRange()
    original.extend(LEAVES[:size])
    restored = CompactRange(original.size, original.hashes)
    assert restored == original
    end = min(size + more, MAX)
    restored.extend(LEAVES[size:end])
    assert restored.root() == NAIVE_ROOTS[end]
    assert original.size == size  # restoring copied the state, not shared it


# --- inclusion -------------------------------------------------------------------------------


def test_inclusion_proofs_match_naive_path_and_verify_for_every_size() -> None:
    for n in range(1, MAX + 1):
        for i in _edges(n):
            proof = _inclusion(i, n)
            assert proof == naive_path(i, 0, n), (i, n)
            verify_inclusion(LEAVES[i], i, n, proof, NAIVE_ROOTS[n])


def test_inclusion_proofs_one_hash_too_long_or_short_are_rejected_for_every_size() -> None:
    for n in range(1, MAX + 1):
        for i in _edges(n):
            proof = _inclusion(i, n)
            with pytest.raises(VerificationError):
                verify_inclusion(LEAVES[i], i, n, [*proof, LEAVES[0]], NAIVE_ROOTS[n])
            if proof:
                with pytest.raises(VerificationError):
                    verify_inclusion(LEAVES[i], i, n, proof[:-1], NAIVE_ROOTS[n])


def test_out_of_range_indexes_are_refused_for_every_size() -> None:
    for n in range(MAX + 1):
        for i in (-1, n, n + 1):
            with pytest.raises(OutOfRangeError):
                inclusion_proof(LEAVES, i, n)
            with pytest.raises(VerificationError):
                verify_inclusion(LEAVES[0], i, n, [], NAIVE_ROOTS[n])


@settings(max_examples=300)
@given(st.data())
def test_flipping_any_byte_of_an_inclusion_proof_is_rejected(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(LEAVES, i, n)
    items = [LEAVES[i], NAIVE_ROOTS[n], *proof]  # leaf, root, then every proof hash
    which = data.draw(st.integers(0, len(items) - 1), label="which hash")
    items[which] = _flip(items[which], data.draw(st.integers(0, 31), label="byte"))
    with pytest.raises(VerificationError):
        verify_inclusion(items[0], i, n, items[2:], items[1])


# --- consistency -----------------------------------------------------------------------------


def test_consistency_proofs_match_naive_subproof_and_verify_for_every_size() -> None:
    for n in range(1, MAX + 1):
        for m in {*_edges(n), n}:
            proof = _consistency(m, n)
            expected = [] if m in (0, n) else naive_subproof(m, 0, n, True)
            assert proof == expected, (m, n)
            verify_consistency(m, n, NAIVE_ROOTS[m], NAIVE_ROOTS[n], proof)


def test_consistency_proofs_one_hash_too_long_or_short_are_rejected_for_every_size() -> None:
    for n in range(2, MAX + 1):
        for m in _edges(n)[1:]:  # 0 < m < n: a non-empty proof
            proof = _consistency(m, n)
            old, new = NAIVE_ROOTS[m], NAIVE_ROOTS[n]
            with pytest.raises(VerificationError):
                verify_consistency(m, n, old, new, [*proof, LEAVES[0]])
            with pytest.raises(VerificationError):
                verify_consistency(m, n, old, new, proof[:-1])


@settings(max_examples=300)
@given(st.data())
def test_consistency_holds_for_any_pair_and_any_flipped_byte_breaks_it(
    data: st.DataObject,
) -> None:
    n = data.draw(st.integers(2, MAX), label="new size")
    m = data.draw(st.integers(1, n - 1), label="old size")
    proof = consistency_proof(LEAVES, m, n)
    verify_consistency(m, n, NAIVE_ROOTS[m], NAIVE_ROOTS[n], proof)
    items = [NAIVE_ROOTS[m], NAIVE_ROOTS[n], *proof]
    which = data.draw(st.integers(0, len(items) - 1), label="which hash")
    items[which] = _flip(items[which], data.draw(st.integers(0, 31), label="byte"))
    with pytest.raises(VerificationError):
        verify_consistency(m, n, items[0], items[1], items[2:])


@settings(max_examples=200)
@given(st.integers(0, MAX), st.integers(0, MAX))
def test_a_proof_never_verifies_between_different_trees(m: int, n: int) -> None:
    """A consistency proof for one tree fails against a tree that differs in one leaf."""
    m, n = min(m, n), max(m, n)
    if m == 0 or m == n:
        return
    other = [*LEAVES[:n]]
    other[m - 1] = leaf_hash(b"tampered")
    with pytest.raises(VerificationError):
        verify_consistency(m, n, root(other[:m]), NAIVE_ROOTS[n], consistency_proof(LEAVES, m, n))
