"""Receipts: C2SP transparency-log proofs (https://c2sp.org/tlog-proof) for one entry.

A receipt is text: the line ``c2sp.org/tlog-proof@v1``; optionally ``extra <base64>``; then
``index <N>`` (ASCII decimal, no leading zeros); then zero or more lines, each one base64
SHA-256 hash of the RFC 9162 inclusion proof (RFC 6962 §2.1.1 order: the leaf's sibling first,
up to the root's child); an empty line; then the log's signed checkpoint, verbatim
(C2SP tlog-checkpoint, with its signatures).

This ledger puts the entry's 80 leaf bytes in ``extra``: they are PHI-free, and they are all
a holder needs to recompute the leaf hash. The spec says not to trust ``extra`` implicitly,
and nothing does: :func:`check_receipt` accepts it only through the inclusion proof, and
the checkpoint only through its signature (``signing.verify_checkpoint``, the caller's step).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import MalformedError
from middleware.ledger.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from middleware.ledger.note import b64decode_strict, parse_note

__all__ = ["TLOG_PROOF_HEADER", "TlogProof", "check_receipt", "format_receipt", "parse_receipt"]

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]{0,19})")


@dataclass(frozen=True, slots=True)
class TlogProof:
    """A parsed receipt: entry ``index``, inclusion ``hashes``, the signed ``checkpoint``
    note text, and the opaque ``extra`` bytes (``None`` when absent)."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.index < 2**64:
            raise MalformedError("a receipt's index is a uint64")
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise MalformedError(f"inclusion proof hashes are {HASH_SIZE} bytes")
        parse_note(self.checkpoint)


def format_receipt(proof: TlogProof) -> str:
    """The receipt text (see the module docstring)."""
    lines = [TLOG_PROOF_HEADER]
    if proof.extra is not None:
        lines.append(f"extra {_b64(proof.extra)}")
    lines.append(f"index {proof.index}")
    lines += [_b64(h) for h in proof.hashes]
    return "\n".join(lines) + "\n\n" + proof.checkpoint


def parse_receipt(text: str) -> TlogProof:
    """Parse a receipt strictly; raises :class:`MalformedError`. Trusts nothing in it."""
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise MalformedError("a tlog-proof has an empty line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise MalformedError(f"a tlog-proof starts with {TLOG_PROOF_HEADER}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = b64decode_strict(rest.pop(0).removeprefix("extra "))
    match = _INDEX.fullmatch(rest[0]) if rest else None
    if match is None:
        raise MalformedError("a tlog-proof names the index: 'index N', no leading zeros")
    hashes = tuple(b64decode_strict(line) for line in rest[1:])
    return TlogProof(int(match.group(1)), hashes, checkpoint, extra)


def check_receipt(proof: TlogProof, leaf: bytes, checkpoint: Checkpoint) -> None:
    """Check that ``leaf`` (stored leaf bytes) is entry ``proof.index`` of the tree that
    ``checkpoint`` (already verified, from ``proof.checkpoint``) commits to (RFC 9162
    §2.1.3.2); raises :class:`~middleware.ledger.errors.VerificationError`."""
    verify_inclusion(
        leaf_hash(leaf), proof.index, checkpoint.size, proof.hashes, checkpoint.root_hash
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
