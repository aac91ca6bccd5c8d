"""Logs as plain data, made to order for the verifier and export tests: sequenced like a store
would (``plan_batch``), with a checkpoint after every batch, signed by the contract key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import Evidence, NewEntry, TreeState
from middleware.ledger.merkle import CompactRange
from middleware.ledger.sequencer import plan_batch
from middleware.ledger.signing import SigningKey
from middleware.ledger.snapshot import LogSnapshot
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.ledger.verify import verify_log
from tests.contract.helpers import KEY, ORIGIN, PSEUDONYMS, entry

POLICY = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),))
STRANGER = SigningKey.from_seed(ORIGIN, bytes([9]) * 32)


@dataclass
class Log:
    """A log as plain data, the verifier's input."""

    leaves: list[bytes]
    notes: list[str]
    evidence: dict[int, Evidence] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def verify(self, policy: TrustPolicy = POLICY) -> set[str]:
        report = verify_log(self.leaves, self.notes, policy, evidence=self.evidence, **self.extra)
        assert report.ok == (not report.findings)
        return {f.code for f in report.findings}


def sign(size: int, root: bytes, key: SigningKey = KEY, origin: str = ORIGIN) -> str:
    return key.sign_checkpoint(Checkpoint(origin, size, root))


def build(batches: list[list[NewEntry]]) -> Log:
    """Sequence ``batches`` as a store would, with a checkpoint after each (and at size 0)."""
    state = TreeState.of(CompactRange())
    log = Log([], [sign(0, state.root)])
    last: dict[bytes, int] = {}
    for batch in batches:
        plan = plan_batch(state, batch, recorded={}, last_index=last)
        for row in plan.leaves:
            log.leaves.append(row.leaf)
            log.evidence[row.index] = Evidence(row.salt, row.evidence)
            if row.pseudonym is not None:
                last[row.pseudonym] = row.index
        state = plan.state
        log.notes.append(sign(state.size, state.root))
    return log


def base() -> Log:
    batches = [[entry(n * 4 + i, pseudonym=PSEUDONYMS[i % 3]) for i in range(4)] for n in range(4)]
    return build(batches)


def resigned(leaves: list[bytes], key: SigningKey = KEY) -> Log:
    """``leaves`` with every size signed by ``key``: what a holder of the key can forge."""
    tree = MerkleLevels.of_leaves(leaves)
    return Log(leaves, [sign(n, tree.root(n), key) for n in range(len(leaves) + 1)])


def flip(leaf: bytes, offset: int) -> bytes:
    return leaf[:offset] + bytes([leaf[offset] ^ 1]) + leaf[offset + 1 :]


def snapshot(log: Log) -> LogSnapshot:
    return LogSnapshot(log.leaves, log.notes, dict(log.evidence))
