"""InclusionChecker answers as the RFC 9162 reference verifier does, whatever it remembered:
after genuine proofs in index order (an export's order, where right siblings are remembered
too), any changed proof or leaf is judged as verify_inclusion judges it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.inclusion import InclusionChecker
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import VerificationError
from middleware.ledger.merkle import leaf_hash, verify_inclusion
from middleware.ledger.tree import MerkleLevels

ORIGIN = "example.org/test"


def reference(leaf: bytes, index: int, size: int, proof: bytes, root: bytes) -> bool:
    hashes = [proof[i : i + 32] for i in range(0, len(proof), 32)]
    if len(proof) % 32:
        return False
    try:
        verify_inclusion(leaf_hash(leaf), index, size, hashes, root)
    except VerificationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 80), st.data())
def test_after_proofs_in_index_order_a_changed_proof_is_judged_as_the_rfc_judges_it(
    size: int, data: Any
) -> None:
    leaves = [n.to_bytes(4, "big") for n in range(size)]
    tree = MerkleLevels.of_leaves(leaves)
    root = tree.root()
    checker = InclusionChecker(Checkpoint(ORIGIN, size, root))
    proofs = [b"".join(tree.inclusion_proof(i)) for i in range(size)]
    warm = data.draw(st.integers(0, size))
    for i in range(warm):  # an export's lines, in index order
        assert checker.check(i, leaves[i], proofs[i])
    index = data.draw(st.integers(0, size - 1))
    proof, leaf = proofs[index], leaves[index]
    change = data.draw(st.sampled_from(["flip", "swap", "drop", "extend", "other", "none"]))
    if change == "flip" and proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        proof = proof[:at] + bytes([proof[at] ^ 1]) + proof[at + 1 :]
    elif change == "swap" and len(proof) >= 64:
        proof = proof[32:64] + proof[:32] + proof[64:]
    elif change == "drop" and proof:
        proof = proof[:-32]
    elif change == "extend":
        proof += proofs[data.draw(st.integers(0, size - 1))][:32] or bytes(32)
    elif change == "other":
        other = data.draw(st.integers(0, size - 1))
        proof = proofs[other]  # another leaf's genuine proof (its right sibling's, say)
    want = reference(leaf, index, size, proof, root)
    assert checker.check(index, leaf, proof) is want
    # and the genuine proofs still pass afterwards, in order
    for i in range(warm, size):
        assert checker.check(i, leaves[i], proofs[i])


def _changed(data: Any, proof: bytes, proofs: list[bytes]) -> bytes:
    change = data.draw(st.sampled_from(["none", "none", "flip", "swap", "drop", "extend", "other"]))
    if change == "flip" and proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        return proof[:at] + bytes([proof[at] ^ 1]) + proof[at + 1 :]
    if change == "swap" and len(proof) >= 64:
        return proof[32:64] + proof[:32] + proof[64:]
    if change == "drop" and proof:
        return proof[:-32]
    if change == "extend":
        return proof + (proofs[data.draw(st.integers(0, len(proofs) - 1))][:32] or bytes(32))
    if change == "other":
        other: int = data.draw(st.integers(0, len(proofs) - 1))
        return proofs[other]
    return proof


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 70), st.data())
def test_every_proof_of_a_sequence_is_judged_as_the_rfc_judges_it(size: int, data: Any) -> None:
    """Any order of lines (ascending with gaps, as a per-patient export; repeats; steps
    back), each proof genuine or changed, another leaf's bytes now and then: every answer is
    the reference's, whatever path the checker remembered from the lines before."""
    leaves = [n.to_bytes(4, "big") for n in range(size)]
    tree = MerkleLevels.of_leaves(leaves)
    root = tree.root()
    checker = InclusionChecker(Checkpoint(ORIGIN, size, root))
    proofs = [b"".join(tree.inclusion_proof(i)) for i in range(size)]
    index = 0
    for _ in range(data.draw(st.integers(1, 40))):
        step = data.draw(st.sampled_from([1, 1, 1, 2, 3, 7, 0, -1, -5]))
        index = min(max(index + step, 0), size - 1)
        leaf = leaves[index] if data.draw(st.integers(0, 9)) else leaves[(index + 1) % size]
        proof = _changed(data, proofs[index], proofs)
        want = reference(leaf, index, size, proof, root)
        assert checker.check(index, leaf, proof) is want, (index, size)


def test_a_long_log_in_index_order_and_by_patient() -> None:
    """1,000 leaves: every proof in order, then every seventh (a patient's lines), then one
    changed proof among them and the next genuine one still passes."""
    size = 1000
    leaves = [n.to_bytes(4, "big") for n in range(size)]
    tree = MerkleLevels.of_leaves(leaves)
    proofs = [b"".join(tree.inclusion_proof(i)) for i in range(size)]
    checker = InclusionChecker(Checkpoint(ORIGIN, size, tree.root()))
    assert all(checker.check(i, leaves[i], proofs[i]) for i in range(size))
    checker = InclusionChecker(Checkpoint(ORIGIN, size, tree.root()))
    assert all(checker.check(i, leaves[i], proofs[i]) for i in range(3, size, 7))
    checker = InclusionChecker(Checkpoint(ORIGIN, size, tree.root()))
    assert checker.check(500, leaves[500], proofs[500])
    assert not checker.check(501, leaves[501], proofs[501][:-32] + bytes(32))
    assert not checker.check(501, leaves[502], proofs[501])
    assert checker.check(501, leaves[501], proofs[501])
    assert checker.check(502, leaves[502], proofs[502])
