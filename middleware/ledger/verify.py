"""The offline verifier: judge a whole log, from plain data, against a trust policy.

:func:`verify_log` recomputes everything from the stored leaf bytes and trusts nothing else:

1. every leaf hash, ``SHA-256(0x00 || leaf)``, and the RFC 9162 root (§2.1.1), compared with
   stored hashes and the stored tree state when the source has them;
2. every leaf's format (``leaf.decode_leaf`` rules), its per-patient chain (``previous`` is
   the latest earlier entry with the same pseudonym) and its consent reference (earlier);
3. every evidence commitment that is present (``commit_evidence(salt, data)``);
4. every checkpoint note: the C2SP signed-note policy under the trust policy's keys, the
   C2SP tlog-checkpoint body, the origin, the key's tree-size window (a retired key signing a
   later size is a finding), and the root against the leaves at that size, which also makes
   consecutive checkpoints consistent (RFC 9162 §2.1.4: one tree extends another iff it
   starts with the other's leaves); two roots signed for one size are a fork;
5. consistency proofs that came with the log (an export's), with ``verify_consistency``;
6. key-event entries (:mod:`middleware.ledger.keyevent`): their position and the policy's
   windows must agree with them;
7. a checkpoint the caller remembered from before: the log must still contain it (a shorter
   log is a rollback or truncation, another root at its size a fork);
8. with a witness quorum in the policy (:mod:`middleware.ledger.quorum`), the remembered
   checkpoint is the witnessed one: it must be given and carry that many valid cosignatures
   (``witness-quorum``, ``witness-cosignature``), so a log rewritten or forked away from what
   the witnesses saw, even under the log's real key, fails.

Findings carry a stable ``code``, the index or size, and ``expected`` vs ``computed`` values
(bytes shown as base64, as in notes). The report is ``ok`` only with no finding *and* at least
one verified checkpoint: an empty or unsigned log proves nothing and fails.

Speed: leaves are hashed in one tight loop, the tree is built a level at a time
(:class:`~middleware.ledger.tree.MerkleLevels`), leaf fields are read with one
``struct.iter_unpack`` pass, and only a failing leaf is decoded a second time for its message.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.entry import Evidence
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.findings import Finding, Findings, as_dict, show
from middleware.ledger.leafcheck import (
    check_evidence,
    check_key_events,
    check_leaves,
    check_storage,
)
from middleware.ledger.merkle import verify_consistency
from middleware.ledger.note import parse_note
from middleware.ledger.quorum import quorum_finding
from middleware.ledger.signing import Verifier, verify_note
from middleware.ledger.snapshot import LogSnapshot
from middleware.ledger.tree import MerkleLevels, hash_leaves
from middleware.ledger.trust import TrustedKey, TrustPolicy

__all__ = [
    "ConsistencyProof",
    "Finding",
    "VerificationReport",
    "verify_log",
    "verify_snapshot",
]


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """A shipped RFC 9162 consistency proof from ``old_size`` to ``new_size``."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """What :func:`verify_log` found; ``ok`` needs no finding and a verified checkpoint."""

    origin: str
    size: int
    root: bytes
    checkpoints: int
    checkpoints_verified: int
    latest_verified: int | None
    evidence_checked: int
    chains: int
    key_events: int
    proofs_checked: int
    remembered: int | None
    findings: tuple[Finding, ...]
    findings_omitted: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings and not self.findings_omitted and self.checkpoints_verified > 0

    def to_json(self) -> dict[str, Any]:
        body = as_dict(self)
        body["root"] = show(self.root)
        body["findings"] = [f.to_json() for f in self.findings]
        return {"ok": self.ok, **body}


def verify_log(
    leaves: Sequence[bytes],
    checkpoints: Iterable[str],
    policy: TrustPolicy,
    *,
    evidence: Mapping[int, Evidence] | None = None,
    leaf_hashes: Sequence[bytes] | None = None,
    indexes: Sequence[int] | None = None,
    state: tuple[int, bytes] | None = None,
    proofs: Iterable[ConsistencyProof] = (),
    remembered: str | None = None,
    problems: Iterable[Finding] = (),
) -> VerificationReport:
    """Verify a log given as plain data (see the module docstring); never raises for bad
    data, only reports it. ``problems`` are findings the caller already made (reading an
    export, say) and go into the report first."""
    out = Findings()
    for problem in problems:
        out.add(
            problem.code,
            problem.message,
            index=problem.index,
            size=problem.size,
            expected=problem.expected,
            computed=problem.computed,
        )
    n = len(leaves)
    hashes = hash_leaves(leaves)
    tree = MerkleLevels(hashes)
    check_storage(out, hashes, stored=leaf_hashes, indexes=indexes, state=state, tree=tree)
    chains, kinds = check_leaves(out, leaves)
    evidence = evidence or {}
    checked = check_evidence(out, leaves, evidence)
    key_events = check_key_events(out, kinds, evidence, policy)
    trust = _Trust(policy)
    roots: dict[int, set[bytes]] = {}
    notes = list(dict.fromkeys(checkpoints))  # the same note twice is one statement
    verified = 0
    for note in notes:
        checkpoint = _check_note(out, note, trust, "checkpoint")
        if checkpoint is None:
            continue
        verified += 1
        roots.setdefault(checkpoint.size, set()).add(checkpoint.root_hash)
        _check_root(out, tree, checkpoint, "checkpoint")
    for size, signed in sorted(roots.items()):
        if len(signed) > 1:
            first, second, *_ = sorted(signed)
            out.add(
                "fork", "two roots signed for one size", size=size, expected=first, computed=second
            )
    latest = max(roots, default=None)
    if latest is None:
        out.add("no-checkpoint", "no checkpoint verified under the trust policy", size=n)
    elif latest < n:
        out.add(
            "unsigned-leaves",
            "leaves beyond the latest verified checkpoint",
            size=latest,
            expected=latest,
            computed=n,
        )
    proofs_checked = _check_proofs(out, proofs, roots)
    remembered_size = None
    if remembered is not None:
        kept = _check_note(out, remembered, trust, "remembered")
        if kept is not None:
            remembered_size = kept.size
            _check_root(out, tree, kept, "remembered")
    witnessed = quorum_finding(remembered, policy)
    if witnessed is not None:
        code, message, expected, computed = witnessed
        out.add(code, message, size=remembered_size, expected=expected, computed=computed)
    return VerificationReport(
        origin=policy.origin,
        size=n,
        root=tree.root(),
        checkpoints=len(notes),
        checkpoints_verified=verified,
        latest_verified=latest,
        evidence_checked=checked,
        chains=chains,
        key_events=key_events,
        proofs_checked=proofs_checked,
        remembered=remembered_size,
        findings=tuple(out.kept),
        findings_omitted=out.omitted,
    )


class _Trust:
    """The policy's keys parsed once: verifiers, and each key by (name, key ID)."""

    def __init__(self, policy: TrustPolicy) -> None:
        self.origin = policy.origin
        self.verifiers = [Verifier(k.key) for k in policy.keys]
        # One verifier per key, so the lengths always agree: strict= never fires (mutants of
        # it are equivalent); it stays as the statement of that invariant.
        self.by_id = {
            (v.name, v.key_id): k for v, k in zip(self.verifiers, policy.keys, strict=True)
        }


def _check_note(out: Findings, note: str, trust: _Trust, what: str) -> Checkpoint | None:
    """A checkpoint whose signature, origin and key window all hold, else None (reported)."""
    try:
        signed = verify_note(note, trust.verifiers)
        checkpoint = parse_checkpoint(signed.text)
    except MalformedError as exc:
        # parse_note and parse_checkpoint are all that raise MalformedError here, and
        # _claimed_size runs the same two: a malformed note claims no size (size=None, or no
        # size argument, are equivalent mutants). Kept for a parser that grows other errors.
        out.add(f"{what}-malformed", f"{what} note: {exc}", size=_claimed_size(note))
        return None
    except VerificationError as exc:
        out.add(f"{what}-signature", f"{what} note: {exc}", size=_claimed_size(note))
        return None
    if checkpoint.origin != trust.origin:
        out.add(
            f"{what}-origin",
            f"{what} is for another log",
            size=checkpoint.size,
            expected=trust.origin,
            computed=checkpoint.origin,
        )
        return None
    keys = [k for s in signed.signatures if (k := trust.by_id.get((s.name, s.key_id)))]
    if not any(k.covers(checkpoint.size) for k in keys):
        out.add(
            "key-window",
            f"{what} signed by a key not valid for its size",
            size=checkpoint.size,
            expected=_windows(keys),
            computed=checkpoint.size,
        )
        return None
    return checkpoint


def _check_root(out: Findings, tree: MerkleLevels, checkpoint: Checkpoint, what: str) -> None:
    size = checkpoint.size
    if size > tree.size:
        code = "rollback" if what == "remembered" else "checkpoint-beyond-leaves"
        out.add(
            code,
            f"the log has fewer leaves than a {what} checkpoint's size",
            size=size,
            expected=size,
            computed=tree.size,
        )
        return
    computed = tree.root(size)
    if not hmac.compare_digest(computed, checkpoint.root_hash):
        code = "remembered-fork" if what == "remembered" else "checkpoint-root"
        out.add(
            code,
            f"{what} root differs from the leaves' root at its size",
            size=size,
            expected=checkpoint.root_hash,
            computed=computed,
        )


def _check_proofs(
    out: Findings, proofs: Iterable[ConsistencyProof], roots: Mapping[int, set[bytes]]
) -> int:
    checked = 0
    for proof in proofs:
        old, new = roots.get(proof.old_size), roots.get(proof.new_size)
        if not old or not new or len(old) > 1 or len(new) > 1:
            out.add(
                "proof",
                "a consistency proof between sizes without one verified root",
                size=proof.new_size,
                expected=proof.old_size,
            )
            continue
        checked += 1
        try:
            verify_consistency(
                proof.old_size, proof.new_size, next(iter(old)), next(iter(new)), proof.hashes
            )
        except VerificationError as exc:
            out.add(
                "proof",
                f"consistency {proof.old_size} -> {proof.new_size}: {exc.message}",
                size=proof.new_size,
                expected=exc.expected,
                computed=exc.computed,
            )
    return checked


def _claimed_size(note: str) -> int | None:
    """The size an unverified note claims, for the report only (never trusted)."""
    try:
        return parse_checkpoint(parse_note(note).text).size
    except MalformedError:
        return None


def _windows(keys: list[TrustedKey]) -> str:
    # A note that verified has a signature by at least one policy key, so ``keys`` is never
    # empty here: the fallback text is unreachable (mutants of it are equivalent).
    return ", ".join(k.window() for k in keys) or "no trusted key"


def verify_snapshot(
    snapshot: LogSnapshot,
    policy: TrustPolicy,
    *,
    proofs: Iterable[ConsistencyProof] = (),
    remembered: str | None = None,
    problems: Iterable[Finding] = (),
) -> VerificationReport:
    """:func:`verify_log` over everything a :class:`LogSnapshot` holds."""
    return verify_log(
        snapshot.leaves,
        snapshot.checkpoints,
        policy,
        evidence=snapshot.evidence,
        leaf_hashes=snapshot.leaf_hashes,
        indexes=snapshot.indexes,
        state=snapshot.state,
        proofs=proofs,
        remembered=remembered,
        problems=problems,
    )
