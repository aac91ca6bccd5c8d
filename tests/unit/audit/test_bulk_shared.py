"""Bulk export jobs shared by the processes of one gateway (middleware/audit/bulk.py with a
board: middleware/storage/exports_sqlite.py, the workers of one SQLite store, and
middleware/storage/exports_postgres.py, the replicas of one PostgreSQL store). Two
:class:`ExportJobs` on one board are two processes: a job kicked off on A is answered by B
(status, manifest, files, DELETE), for its owner only; a lost producer is reported failed;
expired and failed jobs leave no output; the board names no owner (keyed digests only). The
behaviour tests run on both boards (``boards``); what only a file has (its mode, zeroed
pages, a WAL, pid look-ups) runs on SQLite."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.audit.bulk import LAPSE_SECONDS, PRODUCER_GONE, ExportJob, ExportJobs
from middleware.audit.recorder_intents import started
from middleware.errors import NotFound, ServiceUnavailable, TooManyRequests
from middleware.ledger.signing import keyed_digest
from middleware.storage.exports_base import ExportBoard
from middleware.storage.exports_open import open_export_board
from middleware.storage.exports_postgres import PostgresExportBoard
from middleware.storage.exports_sqlite import (
    JobRow,
    SqliteExportBoard,
    export_board,
    exports_path,
)
from middleware.storage.loop_thread import LoopThread
from tests.contract.backends import postgres_dsn
from tests.support import free_port

#: The owners' digest key every worker of one gateway derives (the same ledger key file).
KEY = bytes(range(32))
#: What a job row holds for the owner "auditor": HMAC-SHA256 of the one-part vector.
AUDITOR = keyed_digest(KEY, (b"auditor",))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def board_file(tmp_path: Path) -> Path:
    return tmp_path / "consentry.db.exports"


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Boards:
    """Boards on one shared place (each :meth:`new` one is another process's), of ``kind``:
    a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""

    def __init__(self, kind: str, board_file: Path) -> None:
        self.kind = kind
        self.board_file = board_file
        self.schema = f"consentry_t_{os.urandom(6).hex()}"
        self.opened: list[ExportBoard] = []

    def new(self, key: bytes = KEY, **kwargs: Any) -> ExportBoard:
        board: ExportBoard
        if self.kind == "sqlite":
            board = SqliteExportBoard(self.board_file, key, **kwargs)
        else:  # exact "still running?" reads: a DELETE stops the producer at its next add
            kwargs.setdefault("state_ttl", 0.0)
            dsn = postgres_dsn()
            board = PostgresExportBoard(dsn, key, kind="audit", schema=self.schema, **kwargs)
        self.opened.append(board)
        return board

    def chunks(self) -> int:
        """How many output chunks the board holds."""
        return self.new().stored_chunks()

    def cleanup(self) -> None:
        for board in self.opened:
            board.close()
        if self.kind == "postgres":
            thread = LoopThread("drop")
            thread.run(_drop(self.schema), timeout=30)
            thread.close()


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(postgres_dsn())
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)],
)
def boards(request: pytest.FixtureRequest, board_file: Path) -> Iterator[Boards]:
    made = Boards(request.param, board_file)
    yield made
    made.cleanup()


@pytest.fixture
def workers(boards: Boards, clock: Clock) -> tuple[ExportJobs, ExportJobs]:
    a = ExportJobs(clock=clock, board=boards.new(), events_per_file=3)
    b = ExportJobs(clock=clock, board=boards.new(), events_per_file=3)
    return a, b


@pytest.fixture
def sqlite_workers(board_file: Path, clock: Clock) -> Iterator[tuple[ExportJobs, ExportJobs]]:
    a = ExportJobs(clock=clock, board=SqliteExportBoard(board_file, KEY), events_per_file=3)
    b = ExportJobs(clock=clock, board=SqliteExportBoard(board_file, KEY), events_per_file=3)
    yield a, b
    for jobs in (a, b):
        assert jobs.board is not None
        jobs.board.close()


def _lines(count: int, size: int = 1) -> object:
    async def produce(job: ExportJob) -> None:
        for n in range(count):
            job.add(str(n).encode().rjust(size, b"x"))

    return produce


def _start(jobs: ExportJobs, produce: object, owner: str = "auditor") -> ExportJob:
    return jobs.start(owner=owner, request="r", transaction_time="t", produce=produce)  # type: ignore[arg-type]


async def _settle(job: ExportJob) -> None:
    assert job.task is not None
    await job.task


def _chunks(board_file: Path) -> int:
    with sqlite3.connect(board_file) as db:
        (count,) = db.execute("SELECT count(*) FROM chunk").fetchone()
    return int(count)


# -- where the board is -----------------------------------------------------------------------


def test_only_a_sqlite_store_has_a_board_file(tmp_path: Path) -> None:
    assert exports_path(f"sqlite:{tmp_path}/c.db") == tmp_path / "c.db.exports"
    assert export_board("memory:", KEY) is None
    assert export_board("postgresql://db/consentry", KEY) is None


def test_the_board_is_chosen_by_the_store(tmp_path: Path) -> None:
    """A SQLite store's workers share a file beside it (one a kind of export), a PostgreSQL
    store's replicas share tables in its schema; a memory store's jobs stay in the process."""
    audit = open_export_board(f"sqlite:{tmp_path}/c.db", KEY, kind="audit")
    patient = open_export_board(f"sqlite:{tmp_path}/c.db", KEY, kind="patient")
    assert isinstance(audit, SqliteExportBoard)
    assert audit.path == tmp_path / "c.db.exports"
    assert isinstance(patient, SqliteExportBoard)
    assert patient.path == tmp_path / "c.db.patient-exports"
    for dsn in ("postgresql://db/consentry", "postgres://db/consentry"):
        assert isinstance(open_export_board(dsn, KEY, kind="patient"), PostgresExportBoard)
    assert open_export_board("memory:", KEY, kind="audit") is None
    with pytest.raises(ValueError, match="kind"):
        open_export_board("memory:", KEY, kind="other")


def test_the_board_file_is_the_owners_only(
    sqlite_workers: tuple[ExportJobs, ExportJobs], board_file: Path
) -> None:
    a, _ = sqlite_workers
    assert a.board is not None
    a.board.running()
    assert board_file.stat().st_mode & 0o777 == 0o600


# -- one job, two workers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "size"),
    [(0, 1), (1, 1), (3, 1), (7, 1), (7, 400_000)],
    ids=["none", "one", "one-full-file", "three-files", "chunks-of-a-mib"],
)
async def test_a_job_started_on_a_is_served_by_b_as_the_memory_job_is(
    workers: tuple[ExportJobs, ExportJobs], clock: Clock, count: int, size: int
) -> None:
    """Equivalence: the manifest counts and files B serves are those of today's in-memory
    job for the same lines (file boundaries, chunks of about a MiB)."""
    a, b = workers
    job = _start(a, _lines(count, size))
    await _settle(job)
    memory = _start(ExportJobs(clock=clock, events_per_file=3), _lines(count, size))
    await _settle(memory)
    seen = b.get(job.id, "auditor")
    assert seen.state == memory.state == "done"
    assert seen.count == count
    assert seen.file_counts() == memory.file_counts()
    for n in range(len(memory.files)):
        assert seen.ndjson(n) == memory.ndjson(n)
    with pytest.raises(NotFound):
        seen.ndjson(len(memory.files))


async def test_b_reports_progress_while_a_produces(workers: tuple[ExportJobs, ExportJobs]) -> None:
    a, b = workers
    gate = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        for n in range(4):
            job.add(str(n).encode())
        await gate.wait()

    job = _start(a, produce)
    await asyncio.sleep(0)
    seen = b.get(job.id, "auditor")
    assert seen.state == "running"
    assert seen.count == 3  # the full first file is on the board; the fourth line pending
    with pytest.raises(NotFound):
        seen.ndjson(0)
    gate.set()
    await _settle(job)
    assert b.get(job.id, "auditor").file_counts() == [3, 1]


async def test_a_job_is_its_owners_only_on_every_worker(
    workers: tuple[ExportJobs, ExportJobs],
) -> None:
    a, b = workers
    job = _start(a, _lines(1))
    await _settle(job)
    for owner, job_id in (("someone-else", job.id), ("auditor", "unknown")):
        for jobs in (a, b):
            with pytest.raises(NotFound):
                jobs.get(job_id, owner)
            with pytest.raises(NotFound):
                jobs.cancel(job_id, owner)
    assert b.get(job.id, "auditor").state == "done"


async def _cancel_on_b_midway(a: ExportJobs, b: ExportJobs) -> tuple[ExportJob, list[int]]:
    """Start on ``a`` a producer of lines 0 to 9 that waits before line 4, cancel the job on
    ``b`` meanwhile, then let the producer go on: the job, and the lines it added."""
    added: list[int] = []
    gate = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        for n in range(10):
            if n == 4:
                await gate.wait()
            job.add(str(n).encode())
            added.append(n)

    job = _start(a, produce)
    await asyncio.sleep(0)
    b.cancel(job.id, "auditor")
    gate.set()
    await _settle(job)
    return job, added


async def test_delete_on_b_stops_as_producer_at_its_next_add_and_forgets_the_job(
    workers: tuple[ExportJobs, ExportJobs], boards: Boards
) -> None:
    a, b = workers
    job, added = await _cancel_on_b_midway(a, b)
    assert added == [0, 1, 2, 3]
    await b.drain()
    for jobs in (a, b):
        with pytest.raises(NotFound):
            jobs.get(job.id, "auditor")
    assert boards.chunks() == 0
    _start(a, _lines(0))  # its running place is free


async def test_running_jobs_are_bounded_over_every_worker(boards: Boards, clock: Clock) -> None:
    a = ExportJobs(clock=clock, board=boards.new(), max_running=1)
    b = ExportJobs(clock=clock, board=boards.new(), max_running=1)
    blocked = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        await blocked.wait()

    first = _start(a, produce)
    with pytest.raises(TooManyRequests):
        _start(b, produce)
    b.cancel(first.id, "auditor")
    _start(b, produce)
    await a.aclose()
    await b.aclose()


# -- what is deleted ---------------------------------------------------------------------------


async def test_an_expired_job_is_deleted_with_its_files(
    workers: tuple[ExportJobs, ExportJobs], clock: Clock, boards: Boards
) -> None:
    a, b = workers
    a.keep_seconds = b.keep_seconds = 10
    job = _start(a, _lines(2))
    await _settle(job)
    assert boards.chunks() == 1
    clock.now += 10
    assert b.get(job.id, "auditor").state == "done"
    clock.now += 0.5
    _start(b, _lines(0))  # expiry happens on the next start, by any worker
    await b.drain()
    assert boards.chunks() == 0
    with pytest.raises(NotFound):
        a.get(job.id, "auditor")


async def test_a_status_request_for_any_job_deletes_the_expired_ones(
    workers: tuple[ExportJobs, ExportJobs], clock: Clock, boards: Boards
) -> None:
    """Files on disk do not wait for the next kick-off: any worker's next request deletes
    every expired job (and only those)."""
    a, b = workers
    a.keep_seconds = b.keep_seconds = 10
    old = _start(a, _lines(2))
    await _settle(old)
    clock.now += 5
    young = _start(a, _lines(1))
    await _settle(young)
    clock.now += 6
    assert b.get(young.id, "auditor").state == "done"
    await b.drain()
    assert boards.chunks() == 1
    with pytest.raises(NotFound):
        a.get(old.id, "auditor")
    assert a.get(young.id, "auditor").ndjson(0) == b"0\n"


async def test_deleted_export_lines_are_overwritten_in_the_file(
    sqlite_workers: tuple[ExportJobs, ExportJobs], board_file: Path
) -> None:
    """secure_delete and a truncated WAL: the PHI of a cancelled job is left neither in free
    pages of the file nor in old frames of its WAL."""
    a, b = sqlite_workers
    marker = b"PHI-MARKER-" + b"z" * 64

    async def produce(job: ExportJob) -> None:
        job.add(marker)

    job = _start(a, produce)
    await _settle(job)
    assert marker in _file_bytes(board_file)  # a finished job's lines are on disk
    b.cancel(job.id, "auditor")
    await b.drain()
    assert marker not in _file_bytes(board_file)


def _file_bytes(board_file: Path) -> bytes:
    """The file's bytes and its WAL's, as they are on disk now."""
    wal = Path(f"{board_file}-wal")
    return board_file.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_a_job_past_max_events_fails_and_keeps_no_partial_output(
    workers: tuple[ExportJobs, ExportJobs], boards: Boards
) -> None:
    a, b = workers
    a.max_events = 4
    job = _start(a, _lines(6))
    await _settle(job)
    seen = b.get(job.id, "auditor")
    assert seen.state == "failed"
    assert seen.too_large
    assert "_since" in str(seen.error)
    await a.drain()
    assert boards.chunks() == 0


# -- producers that are gone ---------------------------------------------------------------------


def _row(job_id: str, pid: int, since: str, host: str, beat: float = 1_000.0) -> JobRow:
    return JobRow(
        id=job_id, owner=AUDITOR, request="r", transaction_time="t", state="running",
        error=None, too_large=False, count=0, host=host, pid=pid, started=since,
        producer="another", beat=beat, finished_at=None,
    )  # fmt: skip


def test_a_job_whose_producing_process_ended_is_reported_failed(
    sqlite_workers: tuple[ExportJobs, ExportJobs],
) -> None:
    _, b = sqlite_workers
    assert b.board is not None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    since = started(child.pid)
    child.kill()
    child.wait()
    host = socket.gethostname()
    b.board.create(_row("gone", child.pid, since, host), max_running=5)
    b.board.append("gone", 0, 0, 1, b"partial\n", now=1_000.0)
    seen = b.get("gone", "auditor")
    assert seen.state == "failed"
    assert seen.error == PRODUCER_GONE
    assert not seen.too_large
    assert b.board.file("gone", 0) == b""


def test_a_job_whose_producer_still_runs_is_running(
    sqlite_workers: tuple[ExportJobs, ExportJobs],
) -> None:
    _, b = sqlite_workers
    assert b.board is not None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        b.board.create(_row("alive", child.pid, started(child.pid), host), max_running=5)
        assert b.get("alive", "auditor").state == "running"
        b.board.create(_row("elsewhere", 1, "1", "another-host"), max_running=5)
        assert b.get("elsewhere", "auditor").state == "running"  # cannot tell: not failed
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("host", ["another-host", socket.gethostname()], ids=["other", "this"])
def test_a_job_whose_producer_wrote_nothing_for_the_lapse_is_lost(
    workers: tuple[ExportJobs, ExportJobs], clock: Clock, host: str
) -> None:
    """A process of another host or PID namespace cannot be looked up: its job is lost once
    its producer wrote nothing for LAPSE_SECONDS (it would hold a running place forever)."""
    _, b = workers
    assert b.board is not None
    b.board.create(_row("quiet", os.getpid(), started(os.getpid()), host), max_running=5)
    clock.now += LAPSE_SECONDS
    assert b.get("quiet", "auditor").state == "running"
    clock.now += 1
    seen = b.get("quiet", "auditor")
    assert (seen.state, seen.error) == ("failed", PRODUCER_GONE)


async def test_a_producer_that_writes_keeps_its_job_running_past_the_lapse(
    workers: tuple[ExportJobs, ExportJobs], clock: Clock
) -> None:
    a, b = workers
    gate = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        for n in range(3):  # a full file: written to the board now
            job.add(str(n).encode())
        await gate.wait()

    job = _start(a, produce)
    clock.now += LAPSE_SECONDS - 1
    await asyncio.sleep(0)
    clock.now += 2
    assert b.get(job.id, "auditor").state == "running"
    gate.set()
    await _settle(job)


async def test_a_producer_between_chunks_renews_its_lease(boards: Boards, clock: Clock) -> None:
    """A producer that writes nothing for longer than the lapse (a slow upstream, a large
    page being judged) renews its job's lease every ``beat_seconds``: another process does
    not fail it as lost (failed before: only a chunk renewed it, and a PostgreSQL replica
    cannot look the producer's pid up)."""
    a = ExportJobs(clock=clock, board=boards.new(), beat_seconds=0.01)
    b = ExportJobs(clock=clock, board=boards.new())
    gate = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        await gate.wait()

    job = _start(a, produce)
    for _ in range(3):
        clock.now += LAPSE_SECONDS - 1
        await asyncio.sleep(0.05)
        assert b.get(job.id, "auditor").state == "running"
    gate.set()
    await _settle(job)
    assert b.get(job.id, "auditor").state == "done"
    await a.aclose()


@pytest.mark.integration
async def test_a_cancel_elsewhere_stops_a_postgres_producer_by_its_next_chunk(
    board_file: Path, clock: Clock
) -> None:
    """A PostgreSQL producer answers "still running?" from its last read for ``state_ttl``
    (one round trip a line would hold the event loop): a DELETE through another replica
    stops it at its next chunk at the latest, which is refused, and nothing it wrote stays."""
    boards = Boards("postgres", board_file)
    try:
        a = ExportJobs(clock=clock, board=boards.new(state_ttl=60.0), events_per_file=3)
        b = ExportJobs(clock=clock, board=boards.new(), events_per_file=3)
        job, added = await _cancel_on_b_midway(a, b)
        assert added == [0, 1, 2, 3, 4]  # line 5 completes a file: its chunk is refused
        await b.drain()
        for jobs in (a, b):
            with pytest.raises(NotFound):
                jobs.get(job.id, "auditor")
        assert boards.chunks() == 0
    finally:
        boards.cleanup()


async def test_a_worker_that_stops_fails_its_running_jobs_for_the_others(
    workers: tuple[ExportJobs, ExportJobs],
) -> None:
    a, b = workers
    job = _start(a, lambda j: asyncio.Event().wait())
    await asyncio.sleep(0)
    await a.aclose()
    seen = b.get(job.id, "auditor")
    assert (seen.state, seen.error) == ("failed", PRODUCER_GONE)


async def test_a_lost_producer_frees_its_running_place(boards: Boards, clock: Clock) -> None:
    b = ExportJobs(clock=clock, board=boards.new(), max_running=1)
    assert b.board is not None
    b.board.create(_row("lost", 2**22 + 7, "0", socket.gethostname()), max_running=1)
    if not b.board.local:  # no pid to look up: lost once its lease lapsed
        clock.now += LAPSE_SECONDS + 1
    job = _start(b, _lines(1))
    await _settle(job)
    assert b.get("lost", "auditor").state == "failed"
    await b.aclose()


# -- deleting output off the event loop -----------------------------------------------------------


async def test_a_purge_deletes_forgotten_output_only(
    workers: tuple[ExportJobs, ExportJobs], boards: Boards
) -> None:
    """Output is deleted in slices, off the event loop, after its job is forgotten; the
    files of kept jobs (and of a job still running) are untouched."""
    a, b = workers
    a.max_running = b.max_running = 3
    kept, dropped = _start(a, _lines(40)), _start(a, _lines(40))
    await _settle(kept)
    await _settle(dropped)
    gate = asyncio.Event()

    async def produce(job: ExportJob) -> None:
        for n in range(3):
            job.add(str(n).encode())
        await gate.wait()

    running = _start(a, produce)
    await asyncio.sleep(0)
    before = [b.get(kept.id, "auditor").ndjson(n) for n in range(14)]
    b.cancel(dropped.id, "auditor")
    with pytest.raises(NotFound):  # forgotten at once, before its output is deleted
        a.get(dropped.id, "auditor")
    await b.drain()
    assert boards.chunks() == 14 + 1
    assert [a.get(kept.id, "auditor").ndjson(n) for n in range(14)] == before
    gate.set()
    await _settle(running)
    assert a.get(running.id, "auditor").file_counts() == [3]


async def test_a_finished_job_outlives_the_worker_that_ran_it(
    workers: tuple[ExportJobs, ExportJobs], boards: Boards, clock: Clock
) -> None:
    """A restart: the worker that produced the job stops; a new one serves its files."""
    a, _ = workers
    job = _start(a, _lines(4))
    await _settle(job)
    await a.aclose()
    restarted = ExportJobs(clock=clock, board=boards.new(), events_per_file=3)
    seen = restarted.get(job.id, "auditor")
    assert seen.state == "done"
    assert [seen.ndjson(0), seen.ndjson(1)] == [b"0\n1\n2\n", b"3\n"]
    await restarted.aclose()


# -- the sweeper: expiry and purge without requests -------------------------------------------


async def test_expired_output_is_purged_on_a_timer_without_requests(
    boards: Boards, clock: Clock
) -> None:
    """Finished jobs' PHI lines do not wait for another export request: the sweeper, started
    on first use, expires and purges every ``sweep_seconds`` (failed before: the lines stayed
    until someone's next kick-off or poll)."""
    jobs = ExportJobs(clock=clock, board=boards.new(), sweep_seconds=0.01)
    job = _start(jobs, _lines(1))
    await _settle(job)
    assert boards.chunks() == 1
    clock.now += 10 * 3600  # ten hours, keep_seconds is one; no export request meanwhile
    for _ in range(200):
        await asyncio.sleep(0.01)
        if boards.chunks() == 0:
            break
    assert boards.chunks() == 0
    await jobs.aclose()


async def test_a_restarted_worker_sweeps_from_startup_without_requests(
    boards: Boards, clock: Clock
) -> None:
    """The lifespan startup starts the sweeper: a restarted worker that serves no export
    request still deletes the files its predecessor left past their keep."""
    old = ExportJobs(clock=clock, board=boards.new())
    await _settle(_start(old, _lines(1)))
    await old.aclose()
    clock.now += 2 * 3600
    new = ExportJobs(clock=clock, board=boards.new(), sweep_seconds=0.01)
    assert not new.sweeping()
    new.start_sweeper()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if boards.chunks() == 0:
            break
    assert boards.chunks() == 0
    await new.aclose()
    assert not new.sweeping()


def test_the_sweep_period_defaults_to_a_quarter_of_the_keep() -> None:
    assert ExportJobs(clock=Clock(), keep_seconds=3600).sweep_seconds == 900
    assert ExportJobs(clock=Clock(), keep_seconds=2).sweep_seconds == 1


async def test_a_worker_purges_chunks_whose_job_row_is_gone_on_first_use(
    workers: tuple[ExportJobs, ExportJobs], boards: Boards, clock: Clock
) -> None:
    """A worker killed between a job row's delete and its purge leaves chunks of no job: the
    next worker's first use (here a poll for an unknown job) deletes them (failed before)."""
    a, _ = workers
    job = _start(a, _lines(1))
    await _settle(job)
    assert a.board is not None
    a.board.delete(job.id)  # the DELETE's row removal; the worker dies before its purge
    await a.aclose()
    fresh = ExportJobs(clock=clock, board=boards.new())
    with pytest.raises(NotFound):
        fresh.get(job.id, "auditor")
    await asyncio.sleep(0)  # the sweeper's first round
    await fresh.drain()
    assert boards.chunks() == 0
    await fresh.aclose()


@pytest.mark.parametrize("shared", [True, False])
async def test_a_non_ascii_principal_gets_the_404(
    boards: Boards, clock: Clock, shared: bool
) -> None:
    """Owners are compared as UTF-8 bytes: a caller whose subject is not ASCII gets the same
    404 as anyone else (failed before: compare_digest raised TypeError, a 500)."""
    board = boards.new() if shared else None
    jobs = ExportJobs(clock=clock, board=board)
    job = _start(jobs, _lines(1), owner="iss\x00alice\x00")
    await _settle(job)
    with pytest.raises(NotFound):
        jobs.get(job.id, "iss\x00jos\u00e9\x00")
    mine = _start(jobs, _lines(1), owner="iss\x00jos\u00e9\x00")
    await _settle(mine)
    assert jobs.get(mine.id, "iss\x00jos\u00e9\x00").state == "done"
    # A JSON token may carry a lone surrogate ("\ud800"): no UnicodeEncodeError (a 500).
    with pytest.raises(NotFound):
        jobs.get(job.id, "iss\x00\ud800\x00")
    odd = _start(jobs, _lines(1), owner="iss\x00\ud800\x00")
    await _settle(odd)
    assert jobs.get(odd.id, "iss\x00\ud800\x00").state == "done"
    await jobs.aclose()


def test_the_purge_checkpoint_never_waits_for_a_reader(board_file: Path) -> None:
    """The WAL truncate after a purge gives up at once when a reader holds it back (the next
    purge truncates) instead of waiting the busy timeout, which held every other worker's
    writers back meanwhile (failed before: it waited the whole timeout)."""
    board = SqliteExportBoard(board_file, KEY, busy_timeout=2.0)
    board.create(_row("gone", os.getpid(), "0", "h"), max_running=1)
    board.append("gone", 0, 0, 1, b"x\n", now=1_000.0)
    board.delete("gone")
    reader = sqlite3.connect(board_file, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM chunk").fetchone()  # a read snapshot pins the WAL
    try:
        since = time.monotonic()
        assert board.purge() == 1
        assert time.monotonic() - since < 1.0
    finally:
        reader.execute("ROLLBACK")
        reader.close()
        board.close()


# -- owners as keyed digests -----------------------------------------------------------------

ALICE = "https://idp.example\x00alice-subject-7f3\x00Patient/launch-p-5521"
BOB = "https://idp.example\x00bob-subject-9c1\x00"


def _raw(board_file: Path) -> bytes:
    """The board's bytes on disk: the file and its WAL."""
    wal = board_file.with_name(board_file.name + "-wal")
    return board_file.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_the_board_names_no_owner_and_serves_the_owner_on_every_worker(
    sqlite_workers: tuple[ExportJobs, ExportJobs], board_file: Path
) -> None:
    """A job's row held its owner (issuer, subject and launch patient) in the clear, so the
    file told whoever read it who exported what, for which patient. It holds a keyed digest:
    no part of the owner is in the file (failed before: the subject was), anyone else still
    gets the 404 on both workers, and the owner is served and cancels through either."""
    a, b = sqlite_workers
    job = _start(a, _lines(4), owner=ALICE)
    await _settle(job)
    raw = _raw(board_file)
    for part in (b"alice-subject-7f3", b"launch-p-5521", b"idp.example"):
        assert part not in raw
    with sqlite3.connect(board_file) as db:
        (owner,) = db.execute("SELECT owner FROM export_job WHERE id = ?", (job.id,)).fetchone()
    assert isinstance(owner, bytes)
    assert len(owner) == 32
    for jobs in (a, b):
        for caller in (BOB, "auditor", ALICE + "x", ALICE.replace("7f3", "7f4")):
            with pytest.raises(NotFound):
                jobs.get(job.id, caller)
            with pytest.raises(NotFound):
                jobs.cancel(job.id, caller)
        mine = jobs.get(job.id, ALICE)
        assert (mine.state, mine.owner, mine.file_counts()) == ("done", ALICE, [3, 1])
        assert mine.ndjson(1) == b"3\n"
    b.cancel(job.id, ALICE)
    for jobs in (a, b):
        with pytest.raises(NotFound):
            jobs.get(job.id, ALICE)


async def test_another_key_owns_nothing(boards: Boards, clock: Clock) -> None:
    """A board opened under another key (another gateway's ledger key) serves no job: the
    digest, not the id alone, says whose a job is."""
    mine = ExportJobs(clock=clock, board=boards.new())
    job = _start(mine, _lines(1), owner=ALICE)
    await _settle(job)
    other = ExportJobs(clock=clock, board=boards.new(bytes(32)))
    with pytest.raises(NotFound):
        other.get(job.id, ALICE)
    assert mine.get(job.id, ALICE).state == "done"
    await mine.aclose()
    await other.aclose()


def test_a_key_of_the_wrong_size_is_refused(board_file: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SqliteExportBoard(board_file, b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        PostgresExportBoard("postgresql://db/consentry", b"short", kind="audit")


async def test_an_old_boards_jobs_are_nobodys_and_its_owners_are_erased(
    board_file: Path, clock: Clock
) -> None:
    """A board of the first version (table ``job``, owners in the clear): a newer gateway
    drops that table when it opens the file, so its jobs are owned by nobody (404, even to
    the owner: jobs are short-lived, the export is started again), the owners leave the
    file (secure_delete zeroes the pages) and the next purge deletes their output."""
    with sqlite3.connect(board_file) as db:
        db.executescript(
            "CREATE TABLE job (id TEXT PRIMARY KEY, owner TEXT NOT NULL, request TEXT NOT NULL,"
            " transaction_time TEXT NOT NULL, state TEXT NOT NULL, error TEXT,"
            " too_large INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0,"
            " host TEXT NOT NULL, pid INTEGER NOT NULL, started TEXT NOT NULL,"
            " producer TEXT NOT NULL, beat REAL NOT NULL, finished_at REAL);"
            "CREATE TABLE chunk (job TEXT NOT NULL, file INTEGER NOT NULL, seq INTEGER NOT NULL,"
            " lines INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job, file, seq));"
        )
        db.execute(
            "INSERT INTO job VALUES ('old', ?, 'r', 't', 'done', NULL, 0, 1, 'h', 1, '0', 'p',"
            " 1000.0, 1000.0)",
            (ALICE,),
        )
        db.execute("INSERT INTO chunk VALUES ('old', 0, 0, 1, x'7b7d0a')")
    db.close()
    assert b"alice-subject-7f3" in _raw(board_file)
    jobs = ExportJobs(clock=clock, board=SqliteExportBoard(board_file, KEY))
    with pytest.raises(NotFound):
        jobs.get("old", ALICE)
    assert b"alice-subject-7f3" not in _raw(board_file)
    await jobs.sweep()
    assert _chunks(board_file) == 0
    await jobs.aclose()


async def test_a_postgres_board_that_cannot_be_reached_fails_closed(clock: Clock) -> None:
    """No database: kick-off, status and DELETE raise ServiceUnavailable (a 503 with
    Retry-After), never the 404 of an unknown job nor a guess; nothing is started."""
    dsn = f"postgresql://127.0.0.1:{free_port()}/nowhere"
    board = PostgresExportBoard(dsn, KEY, kind="patient", timeout=5.0)
    jobs = ExportJobs(clock=clock, board=board)
    with pytest.raises(ServiceUnavailable):
        _start(jobs, _lines(1))
    with pytest.raises(ServiceUnavailable):
        jobs.get("0" * 32, "auditor")
    with pytest.raises(ServiceUnavailable):
        jobs.cancel("0" * 32, "auditor")
    await jobs.aclose()
