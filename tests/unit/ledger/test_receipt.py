"""Receipts in the C2SP tlog-proof format: layout, strict parsing, and inclusion checking."""

from __future__ import annotations

import base64

import pytest

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.receipt import (
    TLOG_PROOF_HEADER,
    TlogProof,
    check_receipt,
    format_receipt,
    parse_receipt,
)
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.ledger.tree import MerkleLevels

KEY = SigningKey.from_seed("example.com/fancylog", bytes(range(32)))
LEAVES = [bytes([n]) * 80 for n in range(11)]
TREE = MerkleLevels.of_leaves(LEAVES)
NOTE = KEY.sign_checkpoint(Checkpoint(KEY.name, TREE.size, TREE.root()))


def _receipt(index: int, extra: bytes | None = None) -> TlogProof:
    return TlogProof(index, tuple(TREE.inclusion_proof(index)), NOTE, extra)


def test_layout_follows_the_spec() -> None:
    """Header, optional extra, index, one base64 hash per line, blank line, the note."""
    text = format_receipt(_receipt(6, extra=LEAVES[6]))
    lines = text.split("\n")
    assert lines[0] == TLOG_PROOF_HEADER
    assert lines[1] == "extra " + base64.b64encode(LEAVES[6]).decode()
    assert lines[2] == "index 6"
    hashes = TREE.inclusion_proof(6)
    assert lines[3 : 3 + len(hashes)] == [base64.b64encode(h).decode() for h in hashes]
    assert text.endswith("\n\n" + NOTE)


@pytest.mark.parametrize("extra", [None, LEAVES[3]], ids=["no-extra", "leaf-as-extra"])
def test_round_trip_and_check(extra: bytes | None) -> None:
    proof = parse_receipt(format_receipt(_receipt(3, extra)))
    assert proof == _receipt(3, extra)
    checkpoint = verify_checkpoint(proof.checkpoint, [KEY.verifier()], origin=KEY.name)
    check_receipt(proof, LEAVES[3], checkpoint)


def test_a_receipt_for_another_leaf_or_index_does_not_verify() -> None:
    checkpoint = verify_checkpoint(NOTE, [KEY.verifier()])
    with pytest.raises(VerificationError):
        check_receipt(_receipt(3), LEAVES[4], checkpoint)
    with pytest.raises(VerificationError):
        check_receipt(TlogProof(4, _receipt(3).hashes, NOTE), LEAVES[4], checkpoint)


GOOD = format_receipt(_receipt(2))


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace(TLOG_PROOF_HEADER, "c2sp.org/tlog-proof@v2"),
        GOOD.replace("index 2", "index 02"),
        GOOD.replace("index 2", "index -2"),
        GOOD.replace("index 2", "idx 2"),
        GOOD.replace("index 2\n", "index 2\nnot base64!\n"),
        GOOD.replace("index 2\n", "index 2\nAAAA\n"),
        GOOD.replace("\n\n", "\n", 1),
        GOOD.replace(TLOG_PROOF_HEADER + "\n", TLOG_PROOF_HEADER + "\nextra !!\n"),
        GOOD.split("\n\n", 1)[0] + "\n\nnot a note",
    ],
    ids=[
        "version",
        "leading-zero",
        "negative",
        "index-keyword",
        "bad-base64",
        "short-hash",
        "no-blank-line",
        "bad-extra",
        "bad-note",
    ],
)
def test_malformed_receipts_are_refused(text: str) -> None:
    with pytest.raises(MalformedError):
        parse_receipt(text)
