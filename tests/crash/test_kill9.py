"""``kill -9`` of an appending process at random moments loses nothing it acknowledged.

Each round starts ``appender`` on the same log, lets it acknowledge a random number of entries
(and run a random few milliseconds more), then SIGKILLs it mid-stream: in the middle of a batch,
a transaction, a signature or an fsync. Reopening the store replays the log; afterwards every
acknowledged index holds the entry that was acknowledged (its evidence and commitment), the
tree state matches the leaves, the latest checkpoint is the state's, and every invariant of
the log holds. The next round appends to the log the last one left behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from middleware.ledger.leaf import commit_evidence, decode_leaf
from tests.contract.backends import POSTGRES, PostgresBackend, SqliteBackend, make_backend
from tests.contract.helpers import assert_consistent
from tests.crash.appender import evidence_of

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4

pytestmark = pytest.mark.timeout(120)


def _run_and_kill(backend: str, target: str, round_: int, rng: random.Random) -> list[str]:
    """Start an appender, SIGKILL it after a random amount of progress; return its lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.appender", backend, target, str(round_)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        assert proc.stdout.readline() == "ready\n"
        wanted = rng.randrange(1, 400)
        while len(lines) < wanted:
            line = proc.stdout.readline()
            assert line, "the appender died by itself"
            lines.append(line)
        time.sleep(rng.random() * 0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    lines += rest.splitlines(keepends=True)
    return [line for line in lines if line.endswith("\n")]  # a cut-off last line promised nothing


@pytest.mark.parametrize("name", ["sqlite", POSTGRES])
async def test_acknowledged_entries_survive_kill_9(name: str, tmp_path: Path) -> None:
    backend = await make_backend(name, tmp_path)
    if isinstance(backend, SqliteBackend):
        target = str(backend.path)
    else:
        assert isinstance(backend, PostgresBackend)
        target = f"{backend.dsn}#{backend.schema}"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    acknowledged: dict[int, str] = {}
    try:
        for round_ in range(ROUNDS):
            lines = await asyncio.to_thread(_run_and_kill, name, target, round_, rng)
            for line in lines:
                acked, key = line.split()
                assert acknowledged.setdefault(int(acked), key) == key, "an index acked twice"
            store = await backend.open()  # replays the log: a forged or torn log would raise
            try:
                size = await store.size()
                assert acknowledged
                assert max(acknowledged) < size
                leaves = await store.leaves(0, size)
                for index, key in acknowledged.items():
                    evidence = await store.evidence(index)
                    assert evidence is not None
                    assert evidence.data == evidence_of(key)
                    assert commit_evidence(evidence.salt, evidence.data) == (
                        decode_leaf(leaves[index]).commitment
                    )
                await assert_consistent(store)
                latest = await store.checkpoint()
                assert latest is not None
                assert latest.size == size
            finally:
                await store.close()
    finally:
        await backend.cleanup()
