"""The offline verifier as a pure function: each kind of damage gives its finding code, a clean
log gives none, and nothing verified means not ok."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.findings import MAX_FINDINGS
from middleware.ledger.keyevent import KeyEvent
from middleware.ledger.leaf import EntryKind, decode_leaf, encode_leaf
from middleware.ledger.note import format_note, parse_note
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.ledger.verify import ConsistencyProof, verify_log
from tests.contract.helpers import KEY, ORIGIN, entry
from tests.unit.ledger.logs import POLICY, STRANGER, Log, base, build, flip, resigned, sign


def _leaves(log: Log, leaves: list[bytes]) -> Log:
    return replace(log, leaves=leaves)


def _fork(log: Log) -> Log:
    other = base()  # same shape, other salts: other commitments, other roots
    return replace(log, notes=[*log.notes, other.notes[2]])


def _chain_forged(log: Log) -> Log:
    leaves = list(log.leaves)
    leaves[7] = encode_leaf(replace(decode_leaf(leaves[7]), previous=1))
    return resigned(leaves)


def _consent_forward(log: Log) -> Log:
    leaves = list(log.leaves)
    leaves[2] = encode_leaf(replace(decode_leaf(leaves[2]), consent=9))
    return resigned(leaves)


def _bad_signature(note: str) -> str:
    parsed = parse_note(note)
    (line,) = parsed.signatures
    bad = replace(line, signature=flip(line.signature, 10))
    return format_note(parsed.text, [bad])


def _with(**extra: Any) -> Callable[[Log], Log]:
    return lambda log: replace(log, extra=extra)


TAMPERINGS = [
    # the leaves
    pytest.param(
        lambda log: _leaves(log, [*log.leaves[:5], flip(log.leaves[5], 60), *log.leaves[6:]]),
        {"checkpoint-root", "evidence"},
        id="byte-flipped",
    ),
    pytest.param(
        lambda log: _leaves(log, [*log.leaves[:5], flip(log.leaves[5], 0), *log.leaves[6:]]),
        {"checkpoint-root", "leaf-malformed"},
        id="tag-flipped",
    ),
    pytest.param(
        lambda log: _leaves(log, [*log.leaves[:2], log.leaves[3], log.leaves[2], *log.leaves[4:]]),
        {"checkpoint-root", "chain", "evidence"},
        id="two-leaves-swapped",
    ),
    pytest.param(
        lambda log: _leaves(log, log.leaves[:-3]),
        {"checkpoint-beyond-leaves", "evidence"},
        id="tail-truncated",
    ),
    pytest.param(
        lambda log: _leaves(log, log.leaves[:6] + log.leaves[7:]),
        {"checkpoint-root", "checkpoint-beyond-leaves", "chain", "evidence"},
        id="middle-deleted",
    ),
    pytest.param(
        lambda log: _leaves(log, [*log.leaves[:6], log.leaves[0], *log.leaves[6:]]),
        {"checkpoint-root", "unsigned-leaves", "chain", "evidence"},
        id="forged-inserted",
    ),
    pytest.param(_chain_forged, {"chain"}, id="chain-forged-with-the-key"),
    pytest.param(_consent_forward, {"consent-ref"}, id="consent-from-the-future"),
    # the evidence
    pytest.param(
        lambda log: replace(
            log, evidence={**log.evidence, 4: Evidence(log.evidence[4].salt, b"x")}
        ),
        {"evidence"},
        id="evidence-edited",
    ),
    pytest.param(
        lambda log: replace(log, evidence={**log.evidence, 99: log.evidence[0]}),
        {"evidence"},
        id="evidence-without-leaf",
    ),
    # the checkpoints
    pytest.param(_fork, {"fork", "checkpoint-root"}, id="fork"),
    pytest.param(
        lambda log: replace(log, notes=[*log.notes, "garbage\n\n— x AAAA\n"]),
        {"checkpoint-malformed"},
        id="malformed-note",
    ),
    pytest.param(
        lambda log: replace(log, notes=[*log.notes, sign(16, bytes(32), STRANGER)]),
        {"checkpoint-signature"},
        id="unknown-key-only",
    ),
    pytest.param(
        lambda log: replace(log, notes=[*log.notes[:-1], _bad_signature(log.notes[-1])]),
        {"checkpoint-signature", "unsigned-leaves"},
        id="bad-signature",
    ),
    pytest.param(
        lambda log: replace(log, notes=[*log.notes, sign(3, bytes(32), origin="other.example")]),
        {"checkpoint-origin"},
        id="other-origin",
    ),
    pytest.param(
        lambda log: replace(log, notes=log.notes[:-1]), {"unsigned-leaves"}, id="latest-unsigned"
    ),
    pytest.param(lambda log: replace(log, notes=[]), {"no-checkpoint"}, id="no-checkpoint"),
    # what a store keeps beside the leaves
    pytest.param(_with(leaf_hashes=[bytes(32)] * 16), {"leaf-hash"}, id="stored-hash-wrong"),
    pytest.param(_with(indexes=[*range(5), *range(6, 17)]), {"index-gap"}, id="index-gap"),
    pytest.param(_with(state=(15, bytes(32))), {"state"}, id="state-row-wrong"),
    pytest.param(_with(proofs=[ConsistencyProof(4, 8, (bytes(32),))]), {"proof"}, id="bad-proof"),
    pytest.param(_with(proofs=[ConsistencyProof(4, 9, ())]), {"proof"}, id="proof-unsigned-size"),
    # a remembered checkpoint
    pytest.param(_with(remembered=sign(17, bytes(32))), {"rollback"}, id="remembered-longer"),
    pytest.param(
        _with(remembered=sign(8, bytes(32))), {"remembered-fork"}, id="remembered-other-root"
    ),
    pytest.param(
        _with(remembered=sign(8, bytes(32), STRANGER)),
        {"remembered-signature"},
        id="remembered-unknown-key",
    ),
]


def test_a_clean_log_verifies() -> None:
    log = base()
    tree = MerkleLevels.of_leaves(log.leaves)
    report = verify_log(
        log.leaves,
        log.notes,
        POLICY,
        evidence=log.evidence,
        leaf_hashes=[tree.leaf_hash(i) for i in range(16)],
        indexes=list(range(16)),
        state=(16, tree.root()),
        proofs=[ConsistencyProof(4, 8, tuple(tree.consistency_proof(4, 8)))],
        remembered=log.notes[2],
    )
    assert report.ok, report.findings
    assert (report.size, report.root, report.latest_verified) == (16, tree.root(), 16)
    assert (report.checkpoints_verified, report.evidence_checked, report.chains) == (5, 16, 3)
    assert (report.proofs_checked, report.remembered) == (1, 8)
    assert report.to_json()["ok"] is True


@pytest.mark.parametrize(("tamper", "codes"), TAMPERINGS)
def test_each_tampering_gives_its_findings(tamper: Callable[[Log], Log], codes: set[str]) -> None:
    assert tamper(base()).verify() == codes


def test_an_empty_signed_log_is_ok_and_an_unsigned_one_is_not() -> None:
    assert build([]).verify() == set()
    report = verify_log([], [], POLICY)
    assert not report.ok
    assert report.checkpoints_verified == 0


def test_a_retired_key_signing_a_later_size_is_a_finding() -> None:
    retired = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey(), 0, 8), TrustedKey(STRANGER.vkey(), 9)))
    log = base()
    assert log.verify(retired) == {"key-window", "unsigned-leaves"}


def test_a_full_rewrite_with_the_key_verifies_without_a_witness() -> None:
    """The documented limit: a log rewritten and re-signed with the (stolen) key is a valid
    log. Only a checkpoint remembered from before the rewrite exposes it."""
    before = base()
    forged = base()  # other history, same shape, signed by the same key
    rewritten = resigned(forged.leaves)
    assert rewritten.verify() == set()
    remembered = replace(rewritten, extra={"remembered": before.notes[-1]})
    assert remembered.verify() == {"remembered-fork"}


def test_findings_are_capped() -> None:
    log = base()
    report = verify_log(
        log.leaves * 100, log.notes, POLICY, leaf_hashes=[bytes(32)] * (16 * 100 + 5)
    )
    assert len(report.findings) == MAX_FINDINGS
    assert report.findings_omitted > 0
    assert not report.ok


CLEAN = base()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(CLEAN.leaves) - 1), st.integers(0, 79), st.integers(0, 7))
def test_flipping_any_bit_of_any_leaf_fails_verification(index: int, offset: int, bit: int) -> None:
    leaves = list(CLEAN.leaves)
    leaf = leaves[index]
    leaves[index] = leaf[:offset] + bytes([leaf[offset] ^ (1 << bit)]) + leaf[offset + 1 :]
    report = verify_log(leaves, CLEAN.notes, POLICY, evidence=CLEAN.evidence)
    assert not report.ok
    assert "checkpoint-root" in {f.code for f in report.findings}


def test_key_events_must_agree_with_the_policy() -> None:
    successor = STRANGER
    batches = [[entry(n) for n in range(3)]]
    log = build(batches)
    event = KeyEvent.at(ORIGIN, KEY.vkey(), successor.vkey(), 3)
    key_entry = NewEntry.create(EntryKind.KEY_EVENT, event.encode(), recorded_us=9)
    leaves = [*log.leaves, key_entry.leaf_bytes(None)]
    evidence = {**log.evidence, 3: Evidence(key_entry.salt, key_entry.evidence)}
    tree = MerkleLevels.of_leaves(leaves)
    notes = [*log.notes, sign(4, tree.root(4))]
    rotated = POLICY.rotated(KEY.vkey(), 4, successor.vkey(), 5)
    report = verify_log(leaves, notes, rotated, evidence=evidence)
    assert report.ok, report.findings
    assert report.key_events == 1
    codes = {f.code for f in verify_log(leaves, notes, POLICY, evidence=evidence).findings}
    assert codes == {"key-event"}  # the policy never heard of the rotation
    missing = verify_log(leaves, notes, rotated, evidence=log.evidence)
    assert {f.code for f in missing.findings} == {"key-event"}
