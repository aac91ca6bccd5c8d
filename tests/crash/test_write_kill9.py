"""``kill -9`` of a gateway in the middle of a write: at its next start, the ledger holds the
write's decision *and* an outcome that says what the upstream did.

The attack, as it was seen: the gateway commits the decision entry, forwards the write, the
upstream stores it, and the gateway dies before the outcome entry; the ledger then says the
write was allowed and never whether it happened, for good. Here a separate gateway process
(``tests.crash.writer``, SQLite ledger and audit outbox on disk) is SIGKILLed while the
upstream holds the write, once before and once after applying it; a new gateway on the same
files starts (the lifespan's start-up) and must put the outcome on the ledger: ``applied``
(PERMIT) when the upstream has the write, ``absent`` (504, no PERMIT) when it does not, found
by asking the upstream (the create's tag, the update's version and content, the delete's
target), with ``/readyz`` ready once done and no write stored twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from middleware.ledger.leaf import EntryFlag, EntryKind, decode_leaf
from tests.crash.writer import OBSERVATION, FileUpstream, gateway

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def _kill_in_the_middle(work: Path, write: str, stall: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.writer", str(work), write, stall],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        marker = "applied\n" if stall == "after" else "forwarded\n"
        line = proc.stdout.readline()
        while line and line != marker:  # the gateway's own log lines go there too
            line = proc.stdout.readline()
        assert line == marker, "the gateway process ended before the upstream held the write"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


async def _restart(work: Path) -> tuple[list[tuple[EntryKind, bool]], int]:
    """Start a new gateway on ``work`` as serve does; its ledger's leaves, /readyz status."""
    app = gateway(work, FileUpstream(work / "upstream.json"))
    try:
        await app._open_stores()  # the lifespan's start-up
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            ready = (await c.get("/readyz")).status_code
        store = await app.ledger.store()
        leaves = [decode_leaf(raw) for raw in await store.leaves(0, await store.size())]
    finally:
        await app.aclose()
    audit = [(leaf.kind, bool(leaf.flags & EntryFlag.PERMIT)) for leaf in leaves]
    return [a for a in audit if a[0] in (EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME)], (
        ready
    )


@pytest.mark.parametrize(
    ("write", "stall", "applied"),
    [
        ("create", "after", True),
        ("create", "before", False),
        ("update", "after", True),
        ("update", "before", False),
        ("delete", "after", True),
        ("delete", "before", False),
    ],
    ids=str,
)
def test_a_write_interrupted_by_kill_9_gets_its_outcome_at_the_next_start(
    tmp_path: Path, write: str, stall: str, applied: bool
) -> None:
    stored = {**OBSERVATION, "id": "o1", "meta": {"versionId": "1"}}
    (tmp_path / "upstream.json").write_text(json.dumps({"Observation/o1": stored}))
    _kill_in_the_middle(tmp_path, write, stall)

    audit, ready = asyncio.run(_restart(tmp_path))
    assert audit == [(EntryKind.ACCESS_DECISION, True), (EntryKind.ACCESS_OUTCOME, applied)]
    assert ready == 200
    state = json.loads((tmp_path / "upstream.json").read_text())
    assert len(state) == (2 if write == "create" and applied else 1)  # nothing stored twice

    # A second start finds nothing left to reconcile and adds nothing.
    again, _ = asyncio.run(_restart(tmp_path))
    assert again == audit
