"""The verifier's witness rule: a checkpoint must carry a quorum of cosignatures.

When a :class:`~middleware.ledger.trust.TrustPolicy` says ``quorum = N`` (N > 0), a verifier
accepts the checkpoint it checks against only if at least N of the policy's witnesses validly
cosigned it (C2SP tlog-cosignature, ``cosignature/v1``), on top of the log's own signature.
The policy is applied by :func:`~middleware.ledger.cosignature.verify_cosignatures`: lines by
keys the policy does not name are ignored, a listed witness's line must verify. A policy
whose quorum exceeds its witnesses (none listed included) can never be met and fails every
check, as an empty policy does (sigstore's verification policies treat an empty list so).

A cosignature dated more than :data:`FUTURE_SKEW` seconds after the verifier's clock is
rejected (tlog-cosignature: verifiers MAY reject future timestamps): a witness's clock may be
a little ahead, a date far ahead is a broken or lying witness. Older dates are accepted: a
cosignature stays evidence of what the witness saw.

:func:`quorum_finding` returns the problem as a ``(code, message, expected, computed)``
tuple for the verifiers' reports, or ``None`` when the rule holds or the policy has none.
"""

from __future__ import annotations

import time

from middleware.ledger.cosignature import verify_cosignatures
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.signing import CosignatureVerifier
from middleware.ledger.trust import TrustPolicy

__all__ = ["FUTURE_SKEW", "QuorumFinding", "cosigners", "quorum_finding"]

#: Seconds a cosignature may be dated after the verifier's clock (clock skew).
FUTURE_SKEW = 600

#: ``(code, message, expected, computed)``: ``witness-quorum`` or ``witness-cosignature``.
QuorumFinding = tuple[str, str, object, object]


def cosigners(note: str, policy: TrustPolicy, *, now: float | None = None) -> frozenset[str]:
    """The names of the policy's witnesses that validly cosigned ``note``; raises
    :class:`VerificationError` unless they are at least ``policy.quorum`` (> 0), or when a
    cosignature is dated more than :data:`FUTURE_SKEW` after ``now`` (default: the clock)."""
    verifiers = [CosignatureVerifier(w.key) for w in policy.witnesses]
    if not 0 < policy.quorum <= len(verifiers):
        raise VerificationError(
            "the trust policy's witness quorum can never be met",
            expected=policy.quorum,
            computed=len(verifiers),
        )
    latest = int(time.time() if now is None else now) + FUTURE_SKEW
    return verify_cosignatures(note, verifiers, policy.quorum, not_after=latest)


def quorum_finding(
    note: str | None, policy: TrustPolicy, *, now: float | None = None
) -> QuorumFinding | None:
    """What is wrong with ``note`` under the policy's witness rule (None: nothing, or the
    policy requires no witness). ``note`` None: no witnessed checkpoint was given. ``now``
    (POSIX seconds; default the clock) bounds the cosignatures' dates (:data:`FUTURE_SKEW`)."""
    if policy.quorum == 0:
        return None
    if note is None:
        return (
            "witness-quorum",
            "the trust policy requires a witnessed checkpoint and none was given",
            policy.quorum,
            0,
        )
    try:
        cosigners(note, policy, now=now)
    except VerificationError as exc:
        # Too few (or an unmeetable quorum) carries the quorum as expected; a bad line, or
        # one dated in the future (expected: the latest date allowed), is the line's fault.
        counted = exc.expected is not None and exc.expected == policy.quorum
        code = "witness-quorum" if counted else "witness-cosignature"
        return code, exc.message, exc.expected, exc.computed
    except MalformedError as exc:
        return "witness-cosignature", str(exc), None, None
    return None
