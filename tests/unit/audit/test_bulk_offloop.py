"""The export jobs' background calls on a board of another machine (PostgreSQL) run off the
event loop: a store that stops answering holds the sweeper's expiry and a producer's lease beat
up to the board's timeout, and the loop keeps serving meanwhile.

The board is a real SQLite board whose ``expire`` and ``beat`` block (until released, at most
a second) and which says it is not ``local``, as the PostgreSQL board does: on the old code
those calls ran on the loop and froze it for as long as they blocked.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from middleware.audit.bulk import ExportJob, ExportJobs
from middleware.storage.exports_base import ExportBoard
from middleware.storage.exports_sqlite import SqliteExportBoard

KEY = bytes(range(32))
#: The longest the loop may stall while a board call blocks.
MAX_GAP = 0.2
#: How long a blocked call waits at most (the test releases it sooner).
BLOCK = 1.0


class SilentBoard:
    """A SQLite board on another machine's terms (``local`` False) whose ``expire`` and
    ``beat`` block like a PostgreSQL store that stops answering."""

    local = False

    def __init__(self, inner: SqliteExportBoard) -> None:
        self._inner = inner
        self.blocks = {"expire", "beat"}
        self.release = threading.Event()
        self.called: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def expire(self, finished_before: float) -> int:
        self.called.append("expire")
        if "expire" in self.blocks:
            self.release.wait(BLOCK)
        return 0

    def beat(self, job_id: str, *, now: float) -> bool:
        self.called.append("beat")
        if "beat" in self.blocks:
            self.release.wait(BLOCK)
        return True


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[SilentBoard]:
    board = SilentBoard(SqliteExportBoard(tmp_path / "consentry.db.exports", KEY))
    yield board
    board.release.set()
    board._inner.close()


async def _longest_gap(seconds: float) -> float:
    """The longest the event loop went without running a 10 ms ticker, over ``seconds``."""
    ticks = [time.monotonic()]
    end = ticks[0] + seconds
    while ticks[-1] < end:
        await asyncio.sleep(0.01)
        ticks.append(time.monotonic())
    return max(b - a for a, b in itertools.pairwise(ticks))


async def test_the_sweeper_expires_off_the_loop(silent: SilentBoard) -> None:
    jobs = ExportJobs(clock=time.time, board=cast(ExportBoard, silent))
    jobs.start_sweeper()  # what the app's lifespan startup does
    try:
        gap = await _longest_gap(0.4)
        assert "expire" in silent.called
        assert gap < MAX_GAP
    finally:
        silent.release.set()
        await jobs.aclose()
        await asyncio.sleep(0.05)  # the released thread returns


async def test_the_lease_beat_runs_off_the_loop(silent: SilentBoard) -> None:
    silent.blocks = {"beat"}  # starting a job expires on the loop (a request's own call)
    jobs = ExportJobs(clock=time.time, board=cast(ExportBoard, silent), beat_seconds=0.01)
    stop = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        await stop.wait()

    job = jobs.start(owner="auditor", request="r", transaction_time="t", produce=produce)
    try:
        gap = await _longest_gap(0.4)
        assert "beat" in silent.called
        assert gap < MAX_GAP
    finally:
        silent.release.set()
        stop.set()
        assert job.task is not None
        await job.task
        await jobs.aclose()
        await asyncio.sleep(0.05)
