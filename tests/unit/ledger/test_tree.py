"""MerkleLevels against the reference functions of ``merkle`` (themselves checked against a
naive RFC 9162 transcription and published vectors): same roots and proofs at every size,
however the leaves arrive."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.errors import MalformedError, OutOfRangeError
from middleware.ledger.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
)
from middleware.ledger.tree import MerkleLevels, hash_leaves

MAX = 140
LEAVES = [i.to_bytes(2, "big") * 40 for i in range(MAX)]
HASHES = [leaf_hash(leaf) for leaf in LEAVES]
TREE = MerkleLevels(HASHES)


def test_hash_leaves_is_rfc9162_leaf_hash() -> None:
    assert hash_leaves(LEAVES) == HASHES
    assert MerkleLevels.of_leaves(LEAVES).root() == root(HASHES)


@pytest.mark.parametrize("size", range(MAX + 1))
def test_root_inclusion_and_consistency_match_the_reference_at_every_size(size: int) -> None:
    assert TREE.root(size) == root(HASHES[:size])
    for index in range(size):
        assert TREE.inclusion_proof(index, size) == inclusion_proof(HASHES, index, size)
    for old in range(size + 1):
        assert TREE.consistency_proof(old, size) == consistency_proof(HASHES, old, size)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=12))
def test_growing_in_any_chunks_gives_the_same_tree(chunks: list[int]) -> None:
    tree = MerkleLevels()
    start = 0
    for n in chunks:
        tree.extend(HASHES[start : start + n])
        start = min(start + n, MAX)
        assert tree.size == start
        assert tree.root() == root(HASHES[:start])
    for size in range(start + 1):
        assert tree.root(size) == TREE.root(size)


def test_empty_tree() -> None:
    empty = MerkleLevels()
    assert empty.size == 0
    assert empty.root() == EMPTY_ROOT
    assert empty.consistency_proof(0) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.root(MAX + 1),
        lambda t: t.inclusion_proof(MAX, MAX),
        lambda t: t.inclusion_proof(0, MAX + 1),
        lambda t: t.inclusion_proof(-1, 3),
        lambda t: t.consistency_proof(4, 3),
        lambda t: t.consistency_proof(0, MAX + 1),
        lambda t: t.leaf_hash(MAX),
    ],
    ids=["root", "index=size", "size>n", "negative", "old>new", "new>n", "leaf"],
)
def test_out_of_range(call: object) -> None:
    with pytest.raises(OutOfRangeError):
        call(TREE)  # type: ignore[operator]


def test_a_leaf_hash_is_32_bytes() -> None:
    with pytest.raises(MalformedError):
        MerkleLevels([b"short"])
