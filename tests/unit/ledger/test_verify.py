"""The offline verifier as a pure function: each kind of damage gives its finding code, a clean
log gives none, and nothing verified means not ok."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.errors import VerificationError
from middleware.ledger.findings import MAX_FINDINGS, Finding, show
from middleware.ledger.keyevent import KeyEvent
from middleware.ledger.leaf import EntryKind, decode_leaf, encode_leaf
from middleware.ledger.merkle import verify_consistency
from middleware.ledger.note import format_note, parse_note
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.ledger.verify import ConsistencyProof, verify_log, verify_snapshot
from tests.contract.helpers import KEY, ORIGIN, entry
from tests.unit.ledger.logs import (
    POLICY,
    STRANGER,
    Log,
    base,
    build,
    flip,
    resigned,
    sign,
    snapshot,
)


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


# --- what each finding says (the report is the verifier's whole answer) -------------------------
#
# Found unpinned by mutation testing (scripts/mutation.sh ledger): the codes above were checked,
# the size, expected and computed values an auditor acts on were not.

ROOT = MerkleLevels.of_leaves(CLEAN.leaves)
ZERO = bytes(32)
GARBAGE = "garbage\n\n— x AAAA\n"


def _findings(log: Log, policy: TrustPolicy = POLICY) -> list[dict[str, Any]]:
    report = verify_log(log.leaves, log.notes, policy, evidence=log.evidence, **log.extra)
    return [f.to_json() for f in report.findings]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _signed_by_both(size: int) -> str:
    """One checkpoint note signed by the contract key and by STRANGER."""
    lines = [parse_note(sign(size, ROOT.root(size), key)).signatures[0] for key in (KEY, STRANGER)]
    return format_note(parse_note(sign(size, ROOT.root(size))).text, lines)


FINDINGS = [
    pytest.param(
        replace(CLEAN, notes=[]),
        [
            {
                "code": "no-checkpoint",
                "message": "no checkpoint verified under the trust policy",
                "size": 16,
            }
        ],
        id="no-checkpoint",
    ),
    pytest.param(
        replace(CLEAN, notes=CLEAN.notes[:-1]),
        [
            {
                "code": "unsigned-leaves",
                "message": "leaves beyond the latest verified checkpoint",
                "size": 12,
                "expected": 12,
                "computed": 16,
            }
        ],
        id="unsigned-leaves",
    ),
    pytest.param(
        # a bad note first: the notes after it are still checked
        replace(CLEAN, notes=[GARBAGE, *CLEAN.notes]),
        [
            {
                "code": "checkpoint-malformed",
                "message": "checkpoint note: a signature is a 4-byte key ID and at least one byte",
            }
        ],
        id="malformed-first",
    ),
    pytest.param(
        replace(CLEAN, notes=[*CLEAN.notes, sign(16, ZERO, STRANGER)]),
        [
            {
                "code": "checkpoint-signature",
                "message": "checkpoint note: no signature by a known key",
                "size": 16,
            }
        ],
        id="unknown-key",
    ),
    pytest.param(
        replace(CLEAN, notes=[*CLEAN.notes, sign(3, ZERO, origin="other.example")]),
        [
            {
                "code": "checkpoint-origin",
                "message": "checkpoint is for another log",
                "size": 3,
                "expected": ORIGIN,
                "computed": "other.example",
            }
        ],
        id="other-origin",
    ),
    pytest.param(
        replace(CLEAN, notes=[*CLEAN.notes, sign(8, ZERO)]),
        [
            {
                "code": "checkpoint-root",
                "message": "checkpoint root differs from the leaves' root at its size",
                "size": 8,
                "expected": _b64(ZERO),
                "computed": _b64(ROOT.root(8)),
            },
            {
                "code": "fork",
                "message": "two roots signed for one size",
                "size": 8,
                "expected": _b64(min(ZERO, ROOT.root(8))),
                "computed": _b64(max(ZERO, ROOT.root(8))),
            },
        ],
        id="fork",
    ),
    pytest.param(
        replace(CLEAN, notes=[*CLEAN.notes, sign(20, ZERO)]),
        [
            {
                "code": "checkpoint-beyond-leaves",
                "message": "the log has fewer leaves than a checkpoint checkpoint's size",
                "size": 20,
                "expected": 20,
                "computed": 16,
            }
        ],
        id="checkpoint-beyond-leaves",
    ),
    pytest.param(
        replace(CLEAN, extra={"remembered": sign(17, ZERO)}),
        [
            {
                "code": "rollback",
                "message": "the log has fewer leaves than a remembered checkpoint's size",
                "size": 17,
                "expected": 17,
                "computed": 16,
            }
        ],
        id="rollback",
    ),
    pytest.param(
        replace(CLEAN, extra={"remembered": sign(8, ZERO)}),
        [
            {
                "code": "remembered-fork",
                "message": "remembered root differs from the leaves' root at its size",
                "size": 8,
                "expected": _b64(ZERO),
                "computed": _b64(ROOT.root(8)),
            }
        ],
        id="remembered-fork",
    ),
    pytest.param(
        # an unusable proof first: the proofs after it are still checked (the good one passes)
        replace(
            CLEAN,
            extra={
                "proofs": [
                    ConsistencyProof(4, 9, ()),
                    ConsistencyProof(4, 8, tuple(ROOT.consistency_proof(4, 8))),
                ]
            },
        ),
        [
            {
                "code": "proof",
                "message": "a consistency proof between sizes without one verified root",
                "size": 9,
                "expected": 4,
            }
        ],
        id="proof-unsigned-size",
    ),
    pytest.param(
        # a fork at the proof's new size: which root the proof should lead to is unknown
        replace(
            CLEAN,
            notes=[*CLEAN.notes, sign(8, ZERO)],
            extra={"proofs": [ConsistencyProof(4, 8, tuple(ROOT.consistency_proof(4, 8)))]},
        ),
        ["checkpoint-root", "fork", "proof 8 from 4"],
        id="proof-to-forked-size",
    ),
    pytest.param(
        # a fork at the proof's old size
        replace(
            CLEAN,
            notes=[*CLEAN.notes, sign(8, ZERO)],
            extra={"proofs": [ConsistencyProof(8, 16, tuple(ROOT.consistency_proof(8, 16)))]},
        ),
        ["checkpoint-root", "fork", "proof 16 from 8"],
        id="proof-from-forked-size",
    ),
]


def _short(finding: dict[str, Any]) -> str:
    """A proof finding in one line, its message checked."""
    if finding["code"] == "proof":
        assert finding["message"] == "a consistency proof between sizes without one verified root"
        return f"proof {finding['size']} from {finding['expected']}"
    return str(finding["code"])


@pytest.mark.parametrize(("log", "expected"), FINDINGS)
def test_each_finding_says_what_and_where(log: Log, expected: list[Any]) -> None:
    found = _findings(log)
    if expected and isinstance(expected[0], str):
        assert [_short(f) for f in found] == expected
    else:
        assert found == expected


def test_a_retired_key_finding_names_the_windows() -> None:
    retired = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey(), 0, 8), TrustedKey(STRANGER.vkey(), 9)))
    found = _findings(CLEAN, retired)
    assert found[0] == {
        "code": "key-window",
        "message": "checkpoint signed by a key not valid for its size",
        "size": 12,
        "expected": "0..8",
        "computed": 12,
    }


def test_a_key_window_finding_names_every_signing_keys_window() -> None:
    both = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey(), 0, 8), TrustedKey(STRANGER.vkey(), 0, 8)))
    log = replace(CLEAN, notes=[*CLEAN.notes[:3], _signed_by_both(16)])
    assert [(f["size"], f["expected"]) for f in _findings(log, both)] == [
        (16, "0..8, 0..8"),
        (8, 8),  # unsigned-leaves: the latest verified size is 8
    ]


def test_a_bad_proof_carries_the_proofs_own_error() -> None:
    bad = ConsistencyProof(4, 8, (ZERO,))
    with pytest.raises(VerificationError) as caught:
        verify_consistency(4, 8, ROOT.root(4), ROOT.root(8), bad.hashes)
    found = _findings(replace(CLEAN, extra={"proofs": [bad]}))
    assert found == [
        {
            "code": "proof",
            "message": f"consistency 4 -> 8: {caught.value.message}",
            "size": 8,
            "expected": show(caught.value.expected),
            "computed": show(caught.value.computed),
        }
    ]


def test_a_callers_findings_come_first_and_whole() -> None:
    earlier = Finding("export", "the export said so", index=1, size=2, expected="a", computed="b")
    report = verify_log(CLEAN.leaves, CLEAN.notes, POLICY, problems=[earlier])
    assert report.findings == (earlier,)


def test_the_report_describes_the_log() -> None:
    report = verify_log(CLEAN.leaves, [*CLEAN.notes, CLEAN.notes[0]], POLICY)
    assert (report.origin, report.checkpoints, report.remembered) == (ORIGIN, 5, None)
    assert report.to_json()["root"] == _b64(ROOT.root())


def test_a_snapshot_is_verified_with_what_its_store_kept() -> None:
    """verify_snapshot passes on the stored hashes, indexes and tree state: each is checked."""
    kept = snapshot(CLEAN)
    stored: dict[str, Any] = {
        "leaf-hash": {"leaf_hashes": [ZERO] * 16},
        "index-gap": {"indexes": [*range(5), *range(6, 17)]},
        "state": {"state": (15, ZERO)},
    }
    for code, changed in stored.items():
        report = verify_snapshot(replace(kept, **changed), POLICY)
        assert code in {f.code for f in report.findings}, code


def test_every_usable_proof_is_checked_and_counted() -> None:
    good = ConsistencyProof(4, 8, tuple(ROOT.consistency_proof(4, 8)))
    also = ConsistencyProof(8, 16, tuple(ROOT.consistency_proof(8, 16)))
    unusable = ConsistencyProof(4, 9, ())
    report = verify_log(CLEAN.leaves, CLEAN.notes, POLICY, proofs=[unusable, good, also])
    assert report.proofs_checked == 2
    assert [f["code"] for f in report.to_json()["findings"]] == ["proof"]


def test_a_snapshot_is_verified_with_what_the_caller_adds() -> None:
    """verify_snapshot passes on its evidence and the caller's proofs, remembered checkpoint
    and findings."""
    kept = snapshot(CLEAN)
    edited = replace(kept, evidence={**kept.evidence, 4: Evidence(kept.evidence[4].salt, b"x")})
    assert {f.code for f in verify_snapshot(edited, POLICY).findings} == {"evidence"}
    earlier = Finding("export", "the export said so")
    report = verify_snapshot(
        kept,
        POLICY,
        proofs=[ConsistencyProof(4, 8, tuple(ROOT.consistency_proof(4, 8)))],
        remembered=sign(8, ZERO),
        problems=[earlier],
    )
    assert (report.proofs_checked, report.remembered) == (1, 8)
    assert [f.code for f in report.findings] == ["export", "remembered-fork"]
