"""Checking a ledger receipt for the portal: what holds, in words.

A receipt (C2SP tlog-proof, :mod:`middleware.ledger.receipt`) carries the entry's leaf, its
index, an RFC 9162 inclusion proof and the checkpoint it was made against. :func:`check_text`
parses it and checks, trusting nothing in it: (1) the leaf is entry ``index`` of the tree whose
root the receipt's checkpoint names (inclusion); (2) that tree is a prefix of the gateway's
latest signed checkpoint, fetched from the public ``/ledger/`` API (RFC 9162 §2.1.4
consistency: the log only grew since, nothing recorded before was changed); a latest
checkpoint older than the receipt's (with a witness quorum, the published one is the newest
witnessed) must be a prefix of it: "not yet witnessed, check again later". The latest
checkpoint comes from the gateway answering this page; a holder who distrusts the gateway too
checks the same receipt offline against a checkpoint they keep (docs/ledger.md).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import decode_leaf
from middleware.ledger.merkle import verify_consistency
from middleware.ledger.note import parse_note
from middleware.ledger.receipt import TlogProof, check_receipt, parse_receipt
from middleware.web.api import GatewayApi
from middleware.web.text import t

__all__ = ["Finding", "check_text", "read_receipt"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``ok`` and the sentence saying it."""

    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class ReadReceipt:
    """A parsed receipt, its checkpoint (unverified) and what its leaf says."""

    proof: TlogProof
    checkpoint: Checkpoint
    recorded: str
    kind: str


def read_receipt(text: str) -> ReadReceipt | None:
    """The receipt in ``text``, or None when it is not one (never raises)."""
    try:
        proof = parse_receipt(text.replace("\r\n", "\n"))
        checkpoint = parse_checkpoint(parse_note(proof.checkpoint).text)
        if proof.extra is None:
            return None
        leaf = decode_leaf(proof.extra)
        # The leaf's time is the holder's to forge: a microsecond count past year 9999 (or
        # one the platform cannot convert) is no receipt, never a 500.
        when = datetime.fromtimestamp(leaf.recorded_us / 1_000_000, UTC)
    except (LedgerError, ValueError, OverflowError, OSError):
        return None
    return ReadReceipt(proof, checkpoint, when.strftime("%Y-%m-%d %H:%M:%S UTC"), leaf.kind.label)


async def check_text(api: GatewayApi, text: str) -> tuple[ReadReceipt | None, list[Finding]]:
    """Check the receipt in ``text`` (module docstring)."""
    read = read_receipt(text)
    leaf = None if read is None else read.proof.extra
    if read is None or leaf is None:
        return None, [Finding(False, t("receipt.check.unreadable"))]
    proof, checkpoint = read.proof, read.checkpoint
    findings: list[Finding] = []
    try:
        check_receipt(proof, leaf, checkpoint)
        findings.append(
            Finding(True, t("receipt.check.included", index=proof.index, size=checkpoint.size))
        )
    except LedgerError:
        findings.append(Finding(False, t("receipt.check.not_included", index=proof.index)))
        return read, findings
    findings.append(await _consistent(api, checkpoint))
    return read, findings


async def _consistent(api: GatewayApi, old: Checkpoint) -> Finding:
    status, body, _ = await api.get(None, "/ledger/checkpoint")
    try:
        if status != 200 or not isinstance(body, bytes):
            raise ValueError("no checkpoint")
        latest = parse_checkpoint(parse_note(body.decode("utf-8")).text)
        if latest.origin != old.origin:
            return Finding(False, t("receipt.check.other_log"))
        if latest.size < old.size:
            # With a witness quorum the published checkpoint is the newest witnessed one and
            # may lag the receipt's (made at once, unwitnessed): an honest log then proves the
            # published tree a prefix of the receipt's (RFC 9162 §2.1.4, the other way round).
            hashes = await _consistency(api, latest.size, old.size)
            verify_consistency(latest.size, old.size, latest.root_hash, old.root_hash, hashes)
            return Finding(True, t("receipt.check.not_yet_witnessed", size=latest.size))
        if latest.size > old.size:
            hashes = await _consistency(api, old.size, latest.size)
            verify_consistency(old.size, latest.size, old.root_hash, latest.root_hash, hashes)
        elif latest.root_hash != old.root_hash:
            return Finding(False, t("receipt.check.inconsistent"))
    except LedgerError:
        return Finding(False, t("receipt.check.inconsistent"))
    except ValueError:
        return Finding(False, t("receipt.check.no_latest"))
    return Finding(True, t("receipt.check.consistent", size=latest.size))


async def _consistency(api: GatewayApi, first: int, second: int) -> list[bytes]:
    """The log's consistency proof from size ``first`` to ``second`` (ValueError: none)."""
    params = {"from": str(first), "to": str(second)}
    status, proof, _ = await api.get(None, "/ledger/proof/consistency", params)
    if status != 200 or not isinstance(proof, dict):
        raise ValueError("no proof")
    return [base64.b64decode(h, validate=True) for h in _hashes(proof)]


def _hashes(proof: dict[str, Any]) -> list[str]:
    hashes = proof.get("hashes")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise ValueError("hashes")
    return hashes
