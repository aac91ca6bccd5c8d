"""What witnesses stop: a fork, a rollback and a rewrite signed with the stolen log key, each
shown to real witness processes (``consentry witness serve``) by the log side
(:class:`~middleware.ledger.witnessing.Witnessing`), then judged by the verifiers with a trust
policy that requires a quorum (``consentry ledger verify`` run as a command, the receipt check
of ``audit verify-export``).

The logs are plain data (``tests.unit.ledger.logs``), all signed with the one real log key:
what someone holding that key can produce. Only the witnesses' memory tells them apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.audit.verify_export import verify_receipt
from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.export import write_export
from middleware.ledger.note import parse_note
from middleware.ledger.receipt import TlogProof, format_receipt
from middleware.ledger.tree import MerkleLevels, hash_leaves
from middleware.ledger.trust import TrustPolicy, format_policy
from middleware.ledger.verify import VerificationReport, verify_log
from middleware.ledger.witnesses import add_checkpoint_body, add_checkpoint_url
from middleware.ledger.witnessing import Witnessing
from tests.contract.helpers import KEY, ORIGIN, PSEUDONYMS, entry
from tests.support.peers import repo_root
from tests.support.witnesses import WitnessServer
from tests.unit.ledger.logs import POLICY, Log, base, build, resigned, snapshot


class LogSource:
    """A log as plain data, read as the witnessing task reads the store: its latest note."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        note = self.log.notes[-1]
        checkpoint = parse_checkpoint(parse_note(note).text)
        return StoredCheckpoint(checkpoint.size, checkpoint.root_hash, note)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return hash_leaves(self.log.leaves[start:end])


async def witness(
    log: Log, servers: Sequence[WitnessServer], quorum: int, *, rounds: int = 1
) -> Witnessing:
    """``rounds`` witnessing rounds of ``log``'s latest checkpoint to ``servers``; closed,
    returned."""
    source = LogSource(log)

    async def open_source() -> LogSource:
        return source

    witnessing = Witnessing(open_source, [s.endpoint for s in servers], quorum=quorum)
    try:
        for _ in range(rounds):
            await witnessing.submit_latest()
    finally:
        await witnessing.aclose()
    return witnessing


def policy(servers: Sequence[WitnessServer], quorum: int) -> TrustPolicy:
    return TrustPolicy(ORIGIN, POLICY.keys, tuple(s.trusted for s in servers), quorum)


def forked() -> Log:
    """``base()``'s first three batches, then another fourth: a second root at size 16."""
    batches = [[entry(n * 4 + i, pseudonym=PSEUDONYMS[i % 3]) for i in range(4)] for n in range(3)]
    batches.append([entry(100 + i) for i in range(4)])
    return build(batches)


@pytest.fixture
def servers() -> Iterator[tuple[WitnessServer, WitnessServer]]:
    with (
        WitnessServer("w1.test", {ORIGIN: KEY.vkey()}) as w1,
        WitnessServer("w2.test", {ORIGIN: KEY.vkey()}) as w2,
    ):
        yield w1, w2


# -- fork -------------------------------------------------------------------------------------


async def test_a_fork_shown_to_two_witnesses_never_gets_a_quorum_of_two(
    servers: tuple[WitnessServer, WitnessServer],
) -> None:
    """Branch A to w1 first, branch B (same size, another root) to w2 first: afterwards
    neither branch gets both cosignatures, so a quorum of 2 is never met for either."""
    w1, w2 = servers
    one, other = base(), forked()
    assert one.notes[-1] != other.notes[-1]  # the same size, two roots
    assert await (await witness(one, [w1], 1)).published() is not None
    assert await (await witness(other, [w2], 1)).published() is not None
    for log in (one, other):
        both = await witness(log, [w1, w2], 2)
        assert await both.published() is None
        # Its own first witness cosigns it again (after a 409 naming size 16, from 16 to
        # 16); the other holds the other root at 16 and refuses: 409 (tlog-witness).
        assert both.failures == {"conflict": 1}
        assert both.cosigned == 1


async def test_one_witness_shown_both_branches_refuses_the_second_with_409(
    servers: tuple[WitnessServer, WitnessServer],
) -> None:
    w1, _ = servers
    one, other = base(), forked()
    assert await (await witness(one, [w1], 1)).published() is not None
    body = add_checkpoint_body(16, [], other.notes[-1])
    async with httpx.AsyncClient() as client:
        answer = await client.post(add_checkpoint_url(w1.endpoint), content=body)
    assert answer.status_code == 409


# -- rollback ---------------------------------------------------------------------------------


async def test_a_rolled_back_log_is_refused_and_its_checkpoint_fails_the_quorum(
    servers: tuple[WitnessServer, WitnessServer],
) -> None:
    """An older copy of the log (12 of 16 entries), signed by the real key: the witness that
    cosigned 16 refuses it; a verifier with a quorum rejects the uncosigned checkpoint, and the
    witnessed one shows the rollback."""
    w1, _ = servers
    full = base()
    witnessed = await (await witness(full, [w1], 1)).published()
    assert witnessed is not None
    older = Log(
        full.leaves[:12], full.notes[:-1], {i: e for i, e in full.evidence.items() if i < 12}
    )
    again = await witness(older, [w1], 1, rounds=2)
    assert await again.published() is None
    # w1 answered 409 with 16 > 12 (a replica behind another, as far as one round knows);
    # the store still at 12 a round later is the rollback alarm.
    assert (again.behind, again.failures) == (1, {"witness-ahead": 1})
    rules = policy([w1], 1)
    codes = _codes(verify_log(older.leaves, older.notes, rules, remembered=older.notes[-1]))
    assert codes == {"witness-quorum"}
    codes = _codes(verify_log(older.leaves, older.notes, rules, remembered=witnessed))
    assert codes == {"rollback"}
    assert _codes(verify_log(full.leaves, full.notes, rules, remembered=witnessed)) == set()


async def test_without_a_witnessed_checkpoint_a_quorum_policy_fails(
    servers: tuple[WitnessServer, WitnessServer],
) -> None:
    w1, w2 = servers
    log = base()
    assert _codes(verify_log(log.leaves, log.notes, policy([w1, w2], 2))) == {"witness-quorum"}
    unmeetable = policy([], 1)  # a quorum with no witness can never be met
    codes = _codes(verify_log(log.leaves, log.notes, unmeetable, remembered=log.notes[-1]))
    assert codes == {"witness-quorum"}


# -- a rewrite signed with the stolen key -----------------------------------------------------


async def test_a_rewrite_signed_with_the_stolen_key_is_refused_and_reported(
    servers: tuple[WitnessServer, WitnessServer], tmp_path: Path
) -> None:
    """Whoever holds the log key rewrites the log (other entries from index 8, 20 in all)
    and signs it: a valid log for that key. Both witnesses, holding size 16 of the
    real log, refuse it (no consistency proof: 422); ``consentry ledger verify`` with a quorum
    of 2 fails on the rewritten log against the witnessed checkpoint, and on the rewritten
    checkpoint for want of cosignatures; the receipt check of ``audit verify-export`` too."""
    w1, w2 = servers
    real = base()
    witnessed = await (await witness(real, [w1, w2], 2)).published()
    assert witnessed is not None
    assert len(parse_note(witnessed).signatures) == 3  # the log's, then two cosignatures
    other = build([[entry(500 + n * 4 + i) for i in range(4)] for n in range(5)])
    rewritten = resigned(real.leaves[:8] + other.leaves[8:20])
    attempt = await witness(rewritten, [w1, w2], 2)
    assert await attempt.published() is None
    assert attempt.failures == {"status-422": 2}

    rules = tmp_path / "trust.toml"
    rules.write_text(format_policy(policy([w1, w2], 2)), encoding="utf-8")
    export = tmp_path / "export"
    write_export(snapshot(rewritten), export)
    remembered = tmp_path / "witnessed.note"
    remembered.write_text(witnessed, encoding="utf-8")
    report = _ledger_verify(export, rules, remembered)
    assert not report["ok"]
    assert {f["code"] for f in report["findings"]} == {"remembered-fork"}
    remembered.write_text(rewritten.notes[-1], encoding="utf-8")
    report = _ledger_verify(export, rules, remembered)
    assert {f["code"] for f in report["findings"]} == {"witness-quorum"}

    tree = MerkleLevels(hash_leaves(rewritten.leaves))
    receipt = format_receipt(
        TlogProof(3, tuple(tree.inclusion_proof(3, 20)), rewritten.notes[-1], rewritten.leaves[3])
    )
    found = verify_receipt(receipt, policy([w1, w2], 2))
    assert [f.code for f in found.findings] == ["witness-quorum"]
    assert verify_receipt(receipt, POLICY).ok  # without witnesses the forgery passes


def _codes(report: VerificationReport) -> set[str]:
    return {f.code for f in report.findings}


def _ledger_verify(export: Path, trust: Path, remembered: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "middleware.cli", "ledger", "verify"),
            *("--export", str(export), "--trust", str(trust), "--remember", str(remembered)),
        ],
        capture_output=True,
        text=True,
        cwd=repo_root(),
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report
