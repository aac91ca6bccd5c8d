"""Known answers for RFC 9162 Merkle hashing and proofs, and the ways a proof must fail.

The vectors are the eight-leaf tree of the Certificate Transparency reference tests (RFC 6962
hashing, unchanged in RFC 9162), as published in transparency-dev/merkle ``proof/verify_test.go``
(``leaves``, ``roots``, ``inclusionProofs``, ``consistencyProofs``; that file numbers leaves
from 1, the indexes below are 0-based). Its corruption probes inspired the rejection table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

import pytest

from middleware.ledger.errors import MalformedError, OutOfRangeError, VerificationError
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

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
HASHES = [leaf_hash(leaf) for leaf in LEAVES]
ROOTS = {  # tree size -> root
    n + 1: bytes.fromhex(h)
    for n, h in enumerate(
        (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        )
    )
}
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _hx(*hashes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


INCLUSION = [  # (index, size, proof)
    pytest.param(0, 1, [], id="only-leaf"),
    pytest.param(
        0,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
        id="leaf0-of-8",
    ),
    pytest.param(
        5,
        8,
        _hx(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
        id="leaf5-of-8",
    ),
    pytest.param(
        2,
        3,
        _hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        id="leaf2-of-3",
    ),
    pytest.param(
        1,
        5,
        _hx(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
        id="leaf1-of-5",
    ),
]

CONSISTENCY = [  # (old size, new size, proof)
    pytest.param(1, 1, [], id="1-1"),
    pytest.param(
        1,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
        id="1-8",
    ),
    pytest.param(
        6,
        8,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
        id="6-8",
    ),
    pytest.param(
        2,
        5,
        _hx(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
        id="2-5",
    ),
    pytest.param(
        6,
        7,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
        id="6-7",
    ),
]


# --- hashing ---------------------------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert CompactRange().root() == EMPTY_ROOT


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"") == ROOTS[1]
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(ROOTS[1], ROOTS[1]) == hashlib.sha256(b"\x01" + ROOTS[1] * 2).digest()
    assert leaf_hash(ROOTS[1] + ROOTS[1]) != node_hash(ROOTS[1], ROOTS[1])


@pytest.mark.parametrize("size", sorted(ROOTS), ids=lambda n: f"size-{n}")
def test_root_of_each_prefix_matches_published_root(size: int) -> None:
    assert root(HASHES[:size]) == ROOTS[size]
    compact = CompactRange()
    compact.extend(HASHES[:size])
    assert compact.root() == ROOTS[size]


# --- published proofs ------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proof_matches_and_verifies(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(HASHES, index, size) == proof
    verify_inclusion(HASHES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proof_matches_and_verifies(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(HASHES, old, new) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


# --- corrupted proofs are rejected -----------------------------------------------------------


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 0x10]) + h[1:]


class Incl(NamedTuple):  # verify_inclusion's arguments, in order
    leaf: bytes
    at: int
    size: int
    proof: list[bytes]
    root: bytes


class Cons(NamedTuple):  # verify_consistency's arguments, in order
    old: int
    new: int
    old_root: bytes
    new_root: bytes
    proof: list[bytes]


INCLUSION_CORRUPTIONS: dict[str, Callable[[Incl], Incl]] = {
    "index-1": lambda c: c._replace(at=c.at - 1),
    "index+1": lambda c: c._replace(at=c.at + 1),
    "index^2": lambda c: c._replace(at=c.at ^ 2),
    "size*2": lambda c: c._replace(size=c.size * 2),
    "size/2": lambda c: c._replace(size=c.size // 2),
    "wrong-leaf": lambda c: c._replace(leaf=SOME_HASH),
    "flipped-leaf": lambda c: c._replace(leaf=_flip(c.leaf)),
    "empty-root": lambda c: c._replace(root=EMPTY_ROOT),
    "flipped-root": lambda c: c._replace(root=_flip(c.root)),
    "trailing-root": lambda c: c._replace(proof=[*c.proof, c.root]),
    "trailing-garbage": lambda c: c._replace(proof=[*c.proof, b""]),
    "preceding-root": lambda c: c._replace(proof=[c.root, *c.proof]),
    "removed-last": lambda c: c._replace(proof=c.proof[:-1]),
    "inserted": lambda c: c._replace(proof=[c.proof[0], SOME_HASH, *c.proof[1:]]),
    "flipped-first": lambda c: c._replace(proof=[_flip(c.proof[0]), *c.proof[1:]]),
    "flipped-last": lambda c: c._replace(proof=[*c.proof[:-1], _flip(c.proof[-1])]),
}

CONSISTENCY_CORRUPTIONS: dict[str, Callable[[Cons], Cons]] = {
    "old-1": lambda c: c._replace(old=c.old - 1),
    "old+1": lambda c: c._replace(old=c.old + 1),
    "old^2": lambda c: c._replace(old=c.old ^ 2),
    "new*2": lambda c: c._replace(new=c.new * 2),
    "new/2": lambda c: c._replace(new=c.new // 2),
    "wrong-old-root": lambda c: c._replace(old_root=SOME_HASH),
    "wrong-new-root": lambda c: c._replace(new_root=SOME_HASH),
    "swapped-roots": lambda c: c._replace(old_root=c.new_root, new_root=c.old_root),
    "empty-proof": lambda c: c._replace(proof=[]),
    "trailing-garbage": lambda c: c._replace(proof=[*c.proof, b""]),
    "trailing-old-root": lambda c: c._replace(proof=[*c.proof, c.old_root]),
    "trailing-new-root": lambda c: c._replace(proof=[*c.proof, c.new_root]),
    "preceding-old-root": lambda c: c._replace(proof=[c.old_root, *c.proof]),
    "preceding-new-root": lambda c: c._replace(proof=[c.new_root, *c.proof]),
    "preceding-first": lambda c: c._replace(proof=[c.proof[0], *c.proof]),
    "truncated": lambda c: c._replace(proof=c.proof[:-1]),
    "flipped-first": lambda c: c._replace(proof=[_flip(c.proof[0]), *c.proof[1:]]),
    "flipped-last": lambda c: c._replace(proof=[*c.proof[:-1], _flip(c.proof[-1])]),
}


@pytest.mark.parametrize("corrupt", INCLUSION_CORRUPTIONS.values(), ids=INCLUSION_CORRUPTIONS)
@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proof_is_rejected(
    corrupt: Callable[[Incl], Incl], index: int, size: int, proof: list[bytes]
) -> None:
    probe = corrupt(Incl(HASHES[index], index, size, proof, ROOTS[size]))
    with pytest.raises(VerificationError):
        verify_inclusion(*probe)


@pytest.mark.parametrize("corrupt", CONSISTENCY_CORRUPTIONS.values(), ids=CONSISTENCY_CORRUPTIONS)
@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_proof_is_rejected(
    corrupt: Callable[[Cons], Cons], old: int, new: int, proof: list[bytes]
) -> None:
    probe = corrupt(Cons(old, new, ROOTS[old], ROOTS[new], proof))
    with pytest.raises(VerificationError):
        verify_consistency(*probe)


# --- edges: sizes 0 and equal sizes, which RFC 9162 leaves to the implementation ---------------

R3, R5 = ROOTS[3], ROOTS[5]

CONSISTENCY_EDGES = [
    # Accepted.
    pytest.param(Cons(0, 0, EMPTY_ROOT, EMPTY_ROOT, []), True, id="empty-to-empty"),
    pytest.param(Cons(0, 5, EMPTY_ROOT, R5, []), True, id="empty-to-any"),
    pytest.param(Cons(3, 3, R3, R3, []), True, id="same-size-same-root"),
    # Rejected.
    pytest.param(Cons(0, 5, SOME_HASH, R5, []), False, id="size0-root-not-empty-root"),
    pytest.param(Cons(0, 5, EMPTY_ROOT, R5, [R5]), False, id="size0-proof-not-empty"),
    pytest.param(Cons(3, 3, R3, R5, []), False, id="same-size-different-roots"),
    pytest.param(Cons(3, 3, R3, R3, [R3]), False, id="same-size-proof-not-empty"),
    pytest.param(Cons(5, 3, R5, R3, []), False, id="time-travel"),
    pytest.param(Cons(1, 0, ROOTS[1], EMPTY_ROOT, []), False, id="shrunk-to-empty"),
    pytest.param(Cons(-1, 3, EMPTY_ROOT, R3, []), False, id="negative-old"),
    pytest.param(Cons(3, 5, R3, R5, []), False, id="missing-proof"),
    pytest.param(Cons(3, 3, R3[:31], R3[:31], []), False, id="short-roots"),
]


@pytest.mark.parametrize(("probe", "accepted"), CONSISTENCY_EDGES)
def test_consistency_edges(probe: Cons, accepted: bool) -> None:
    if accepted:
        verify_consistency(*probe)
    else:
        with pytest.raises(VerificationError):
            verify_consistency(*probe)


INCLUSION_EDGES = [
    pytest.param(Incl(ROOTS[1], 0, 1, [], ROOTS[1]), True, id="single-leaf-is-root"),
    pytest.param(Incl(ROOTS[1], 0, 0, [], EMPTY_ROOT), False, id="empty-tree"),
    pytest.param(Incl(ROOTS[1], 1, 1, [], ROOTS[1]), False, id="index-equals-size"),
    pytest.param(Incl(ROOTS[1], -1, 1, [], ROOTS[1]), False, id="negative-index"),
    pytest.param(Incl(ROOTS[1], 0, 1, [SOME_HASH], ROOTS[1]), False, id="proof-one-too-long"),
    pytest.param(Incl(b"", 0, 1, [], b""), False, id="empty-hashes"),
]


@pytest.mark.parametrize(("probe", "accepted"), INCLUSION_EDGES)
def test_inclusion_edges(probe: Incl, accepted: bool) -> None:
    if accepted:
        verify_inclusion(*probe)
    else:
        with pytest.raises(VerificationError):
            verify_inclusion(*probe)


def test_verification_error_carries_expected_and_computed_roots() -> None:
    proof = inclusion_proof(HASHES, 5, 8)
    with pytest.raises(VerificationError) as caught:
        verify_inclusion(HASHES[5], 5, 8, proof, ROOTS[7])
    assert caught.value.expected == ROOTS[7]
    assert caught.value.computed == ROOTS[8]
    assert ROOTS[7].hex() in str(caught.value)


def test_verification_error_reports_the_expected_proof_length() -> None:
    with pytest.raises(VerificationError) as caught:
        verify_inclusion(HASHES[5], 5, 8, inclusion_proof(HASHES, 5, 8)[:-1], ROOTS[8])
    assert (caught.value.expected, caught.value.computed) == (3, 2)


# --- generation refuses what the tree does not have -------------------------------------------


@pytest.mark.parametrize(
    ("index", "size"),
    [(8, 8), (-1, 8), (0, 0), (0, 9), (3, -1)],
    ids=["index=size", "negative-index", "empty-tree", "size>leaves", "negative-size"],
)
def test_inclusion_proof_out_of_range(index: int, size: int) -> None:
    with pytest.raises(OutOfRangeError):
        inclusion_proof(HASHES, index, size)


@pytest.mark.parametrize(
    ("old", "new"),
    [(5, 4), (-1, 4), (0, 9), (9, 9)],
    ids=["old>new", "negative-old", "new>leaves", "both>leaves"],
)
def test_consistency_proof_out_of_range(old: int, new: int) -> None:
    with pytest.raises(OutOfRangeError):
        consistency_proof(HASHES, old, new)


def test_malformed_leaf_hashes_are_refused() -> None:
    with pytest.raises(MalformedError):
        root([*HASHES[:3], b"short"])
    with pytest.raises(MalformedError):
        CompactRange().append(b"short")
    with pytest.raises(MalformedError):
        CompactRange(3, [ROOTS[2]])  # size 3 needs two subtree hashes
    with pytest.raises(OutOfRangeError):
        CompactRange(-1)


@pytest.mark.parametrize(("index", "size", "proof"), [p for p in INCLUSION if p.values[2]])
def test_a_wrong_length_proof_reports_the_published_length(
    index: int, size: int, proof: list[bytes]
) -> None:
    """Too short and too long both name the length of the RFC 6962 vector's own proof."""
    for wrong, message in (
        (proof[:-1], "inclusion proof too short"),
        ([*proof, SOME_HASH], "inclusion proof too long"),
    ):
        with pytest.raises(VerificationError) as caught:
            verify_inclusion(HASHES[index], index, size, wrong, ROOTS[size])
        assert (caught.value.message, caught.value.expected, caught.value.computed) == (
            message,
            len(proof),
            len(wrong),
        )


def test_compact_range_errors_say_why() -> None:
    with pytest.raises(OutOfRangeError, match=r"^tree size -1 is negative$"):
        CompactRange(-1)
    with pytest.raises(MalformedError, match=r"^size 3 needs 2 subtree hashes$"):
        CompactRange(3, [ROOTS[2]])


def test_compact_ranges_are_equal_only_in_size_and_hashes() -> None:
    two = CompactRange(2, [ROOTS[2]])
    assert two == CompactRange(2, [ROOTS[2]])
    assert two != CompactRange(2, [SOME_HASH])  # same size, other leaves
    assert two != CompactRange(1, [ROOTS[2]])  # same hash list, other size


def test_a_compact_range_copy_is_independent() -> None:
    original = CompactRange(2, [ROOTS[2]])
    copied = original.copy()
    assert (copied.size, copied.hashes) == (2, (ROOTS[2],))
    copied.append(HASHES[2])
    assert (original.size, original.root()) == (2, ROOTS[2])
    assert copied.root() == ROOTS[3]


def test_an_index_outside_the_tree_is_named() -> None:
    with pytest.raises(VerificationError, match=r"^leaf index 8 is not in a tree of size 8$"):
        verify_inclusion(HASHES[0], 8, 8, [], ROOTS[8])


_P48 = consistency_proof(HASHES, 4, 8)  # equal to the published vector (tested above)
_P36 = consistency_proof(HASHES, 3, 6)

# (id, a failing verification, its message, expected, computed): what the report shows
FAILURES: list[tuple[str, Callable[[], None], str, object, object]] = [
    (
        "inclusion-other-root",
        lambda: verify_inclusion(HASHES[5], 5, 8, inclusion_proof(HASHES, 5, 8), ROOTS[7]),
        "inclusion proof does not lead to the root",
        ROOTS[7],
        ROOTS[8],
    ),
    (
        "short-hash",
        lambda: verify_inclusion(b"short", 0, 1, [], ROOTS[1]),
        "hash of the wrong length",
        32,
        5,
    ),
    (
        "sizes-reversed",
        lambda: verify_consistency(8, 4, ROOTS[8], ROOTS[4], []),
        "old size 8 is not within new size 4",
        None,
        None,
    ),
    (
        "equal-sizes-with-proof",
        lambda: verify_consistency(4, 4, ROOTS[4], ROOTS[4], [SOME_HASH]),
        "consistency proof must be empty",
        0,
        1,
    ),
    (
        "from-empty-other-root",
        lambda: verify_consistency(0, 4, SOME_HASH, ROOTS[4], []),
        "old root is not the empty tree's root",
        EMPTY_ROOT,
        SOME_HASH,
    ),
    (
        "same-size-other-root",
        lambda: verify_consistency(4, 4, ROOTS[4], SOME_HASH, []),
        "same size, different roots",
        ROOTS[4],
        SOME_HASH,
    ),
    (
        "empty-proof",
        lambda: verify_consistency(4, 8, ROOTS[4], ROOTS[8], []),
        "consistency proof is empty",
        None,
        None,
    ),
    (
        "proof-too-long",
        lambda: verify_consistency(4, 8, ROOTS[4], ROOTS[8], [*_P48, SOME_HASH]),
        "consistency proof too long",
        None,
        None,
    ),
    (
        "proof-too-short",
        lambda: verify_consistency(3, 6, ROOTS[3], ROOTS[6], _P36[:-1]),
        "consistency proof too short",
        None,
        None,
    ),
    (
        "other-old-root",
        lambda: verify_consistency(3, 6, SOME_HASH, ROOTS[6], _P36),
        "consistency proof does not lead to the old root",
        SOME_HASH,
        ROOTS[3],
    ),
    (
        "other-new-root",
        lambda: verify_consistency(4, 8, ROOTS[4], ROOTS[7], _P48),
        "consistency proof does not lead to the new root",
        ROOTS[7],
        ROOTS[8],
    ),
]


@pytest.mark.parametrize(
    ("check", "message", "expected", "computed"),
    [c[1:] for c in FAILURES],
    ids=[c[0] for c in FAILURES],
)
def test_each_verification_failure_says_what_and_shows_both_values(
    check: Callable[[], None], message: str, expected: object, computed: object
) -> None:
    with pytest.raises(VerificationError) as caught:
        check()
    assert (caught.value.message, caught.value.expected, caught.value.computed) == (
        message,
        expected,
        computed,
    )


def test_proofs_out_of_range_say_why() -> None:
    with pytest.raises(OutOfRangeError, match=r"^leaf index 8 is not in a tree of size 8$"):
        inclusion_proof(HASHES, 8, 8)
    with pytest.raises(OutOfRangeError, match=r"^old size 5 is not within new size 4$"):
        consistency_proof(HASHES, 5, 4)
    with pytest.raises(OutOfRangeError, match=r"^tree size 9 is not within the 8 leaves given$"):
        inclusion_proof(HASHES, 0, 9)
