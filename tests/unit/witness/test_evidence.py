"""What the witness keeps as evidence: only a fork (a second root for the cosigned size, signed
by the log), once per checkpoint, with only the log's signatures, at most ``fork_cap`` per
log. A bad consistency proof (422) is the client's and keeps nothing, however often it comes
and however large its unknown signature lines (a real SQLite state file; real Ed25519 keys)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from middleware.ledger.merkle import consistency_proof, leaf_hash
from middleware.witness.protocol import LogConfig, format_submission
from middleware.witness.service import Witness
from middleware.witness.state import WitnessState
from tests.unit.witness.test_protocol import FORKED, LOG, ORIGIN, WITNESS, body, note

FORK = note(8, leaves=FORKED)
KEPT = "witness kept evidence of a log fork"


def padding() -> str:
    """A signature line by a key no log has: anyone can append it to a public note."""
    return "\u2014 junk.example/x " + base64.b64encode(os.urandom(30_000)).decode() + "\n"


@asynccontextmanager
async def _witness(tmp_path: Path, *, fork_cap: int = 1000) -> AsyncIterator[Witness]:
    state = WitnessState(tmp_path / "witness.db", fork_cap=fork_cap)
    witness = Witness({ORIGIN: LogConfig(ORIGIN, (LOG.verifier(),))}, state, WITNESS)
    try:
        assert (await witness.add_checkpoint(body(0, 8))).status == 200
        yield witness
    finally:
        state.close()


@pytest.fixture
async def witness(tmp_path: Path) -> AsyncIterator[Witness]:
    async with _witness(tmp_path) as made:
        yield made


def _forks(tmp_path: Path) -> list[str]:
    state = WitnessState(tmp_path / "witness.db")
    try:
        return state.forks(ORIGIN)
    finally:
        state.close()


async def test_bad_proofs_leave_no_evidence_and_no_warning(
    witness: Witness, tmp_path: Path
) -> None:
    # A public checkpoint ahead of the witness and a garbage proof: no log misbehaviour.
    flood = format_submission(8, [bytes(32)], note(16) + padding())
    with capture_logs() as logs:
        for _ in range(200):
            assert (await witness.add_checkpoint(flood)).status == 422
        # A larger tree that does not extend the cosigned one looks the same: 422, nothing kept.
        fork = format_submission(8, consistency_proof(FORKED, 8, 12), note(12, leaves=FORKED))
        assert (await witness.add_checkpoint(fork)).status == 422
    assert _forks(tmp_path) == []
    assert [e for e in logs if e["log_level"] not in ("debug", "info")] == []


async def test_a_repeated_fork_is_kept_once_and_warned_about_once(
    witness: Witness, tmp_path: Path
) -> None:
    with capture_logs() as logs:
        for _ in range(5):
            answer = await witness.add_checkpoint(format_submission(8, [], FORK))
            assert answer.status == 409
            assert not answer.body.startswith("\u2014")
    assert _forks(tmp_path) == [FORK]
    assert [(e["event"], e["origin"]) for e in logs if e["log_level"] == "warning"] == [
        (KEPT, ORIGIN)
    ]


async def test_unknown_signature_lines_are_not_stored(witness: Witness, tmp_path: Path) -> None:
    padded = format_submission(8, [], FORK + padding())
    assert (await witness.add_checkpoint(padded)).status == 409
    # The same checkpoint with other padding is the same evidence.
    assert (await witness.add_checkpoint(format_submission(8, [], FORK + padding()))).status == 409
    assert _forks(tmp_path) == [FORK]  # the text and the log's signature, nothing else


async def test_forks_are_capped_per_log(tmp_path: Path) -> None:
    async with _witness(tmp_path, fork_cap=3) as witness:
        forks = [
            note(8, leaves=[leaf_hash(b"fork %d %d" % (f, n)) for n in range(8)]) for f in range(5)
        ]
        with capture_logs() as logs:
            for fork in forks:
                assert (await witness.add_checkpoint(format_submission(8, [], fork))).status == 409
        assert _forks(tmp_path) == forks[:3]
        warned = [e["event"] for e in logs if e["log_level"] == "warning"]
        assert warned == [KEPT] * 3
