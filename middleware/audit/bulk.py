"""Bulk export jobs of AuditEvent (FHIR Bulk Data Access IG v2, "Asynchronous request pattern").

Kick-off starts a job (:meth:`ExportJobs.start`), whose producer writes NDJSON lines into it
(:meth:`ExportJob.add`); the status URL reports progress (202, ``X-Progress``), then the
manifest (200); each output file is served; DELETE cancels the job and forgets it.

With a **board** (:mod:`middleware.storage.exports_base`: a file beside a SQLite store shared
by its worker processes, or tables in a PostgreSQL store shared by every replica;
:mod:`middleware.storage.exports_open` picks it) a job's state and files are shared: the
process that took the kick-off produces, any process answers status, manifest, download and
DELETE. The producer renews its job's lease every :data:`BEAT_SECONDS` (and with each chunk);
a job whose lease lapsed (``LAPSE_SECONDS``: its replica died or hangs) or, on a local board,
whose producing process is gone (its pid and start time name no running process on this host)
is reported failed by the next status poll, with :data:`PRODUCER_GONE`, never "in progress"
forever. A cancel through any process stops the producer at its next :meth:`ExportJob.add`,
which reads the job's state. Without a board (a memory store) jobs live in this process's
memory: only the process that runs a job serves it, and a restart forgets it.

Limits either way: at most ``max_running`` jobs run at once and ``max_per_owner`` of one
owner's (429 beyond; with a board, over every worker), a job holds at most ``max_events``
events and ``max_bytes`` bytes and runs at most ``max_seconds`` (it fails beyond, too large,
asking for a narrower ``narrow``); a job failing for another reason is logged (its id and the
error's type, nothing else) and reports :data:`UNAVAILABLE` when the ledger could not be
written (try again later), else a generic failure; a finished job is kept ``keep_seconds``
then deleted with its files (a failed job's at once): a sweeper, started by the app's
lifespan startup (or the first use) and stopped by :meth:`ExportJobs.aclose`, expires and
purges every ``sweep_seconds`` (``keep_seconds / 4``), so files outlive ``keep_seconds`` by
at most that without requests.
Job ids are random (128 bits); a job is served only to the principal that started it: anyone
else gets the same 404 as for an unknown id. The board names no principal: it holds a keyed
digest of each job's owner, compared in constant time
(:meth:`~middleware.storage.exports_base.ExportBoard.owned_by`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Final, cast

from middleware.audit.bulk_job import (
    UNAVAILABLE,
    ExportCancelled,
    ExportJob,
    ExportTooLarge,
    Limits,
    State,
    failed,
    stopped,
)
from middleware.audit.recorder_intents import running, started
from middleware.errors import NotFound, TooManyRequests
from middleware.ops.tracing import untraced
from middleware.storage.exports_base import ExportBoard, JobRow

__all__ = [
    "UNAVAILABLE",
    "ExportCancelled",
    "ExportJob",
    "ExportJobs",
    "ExportTooLarge",
    "Limits",
]

#: A running job whose producer neither wrote nor renewed its lease this long is lost (a
#: process of another host or PID namespace cannot be looked up by its pid; a replica that
#: died renews nothing).
LAPSE_SECONDS: Final = 60.0
#: How often a producer renews its job's lease on the board (well inside LAPSE_SECONDS).
BEAT_SECONDS: Final = 15.0
#: What a job whose producing process ended reports (its partial output is deleted).
PRODUCER_GONE: Final = "the export stopped when its gateway process ended; restart the export"

Producer = Callable[[ExportJob], Awaitable[None]]


class ExportJobs:
    """The export jobs of this gateway (module docstring). ``clock``: seconds, for
    ``keep_seconds``; with a ``board``, a clock every process shares (wall time)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        max_running: int = 2,
        max_events: int = 1_000_000,
        events_per_file: int = 10_000,
        keep_seconds: float = 3600.0,
        board: ExportBoard | None = None,
        sweep_seconds: float | None = None,
        limits: Limits | None = None,
        beat_seconds: float = BEAT_SECONDS,
    ) -> None:
        self._clock = clock
        self.limits = limits or Limits()
        self._jobs: dict[str, ExportJob] = {}  # with a board: the jobs this process produces
        self.max_running = max_running
        self.max_events = max_events
        self.events_per_file = events_per_file
        self.keep_seconds = keep_seconds
        self.board = board
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._started = started(self._pid)
        self._producer = secrets.token_hex(8)  # this table, told from others in this process
        self._purging: asyncio.Task[None] | None = None
        self._purge_again = False
        #: How often the sweeper expires and purges (default ``keep_seconds / 4``, at least 1 s).
        self.sweep_seconds = max(1.0, keep_seconds / 4) if sweep_seconds is None else sweep_seconds
        self._sweeper: asyncio.Task[None] | None = None
        #: How often a producer renews its job's lease on the board (BEAT_SECONDS).
        self.beat_seconds = beat_seconds

    def start(
        self, *, owner: str, request: str, transaction_time: str, produce: Producer
    ) -> ExportJob:
        """A new running job whose ``produce`` runs as a task; 429 when ``max_running`` jobs
        run already."""
        self.start_sweeper()
        self._forget_old()
        job = ExportJob(
            id=secrets.token_hex(16), owner=owner, request=request,
            transaction_time=transaction_time, events_per_file=self.events_per_file,
            max_events=self.max_events, max_bytes=self.limits.max_bytes,
            bytes_per_file=self.limits.bytes_per_file, board=self.board, clock=self._clock,
        )  # fmt: skip
        if self.board is not None:
            for row in self.board.running():
                self._check_producer(row)
            row = JobRow(
                id=job.id, owner=self.board.owner_digest(owner), request=request,
                transaction_time=transaction_time, state="running", error=None, too_large=False,
                count=0, host=self._host, pid=self._pid, started=self._started,
                producer=self._producer, beat=self._clock(), finished_at=None,
            )  # fmt: skip
            per_owner = self.limits.max_per_owner
            if not self.board.create(row, max_running=self.max_running, max_per_owner=per_owner):
                raise _too_many()
        elif self._full(owner):
            raise _too_many()
        self._jobs[job.id] = job
        # The job outlives the kick-off's request: no part of that request's trace.
        job.task = asyncio.create_task(self._run(job, produce), context=untraced())
        return job

    def _full(self, owner: str) -> bool:
        """Whether no job of ``owner`` may start now (this process's jobs)."""
        running = [job for job in self._jobs.values() if job.state == "running"]
        per_owner = self.limits.max_per_owner
        mine = sum(_same(job.owner, owner) for job in running)
        return len(running) >= self.max_running or (per_owner is not None and mine >= per_owner)

    async def _run(self, job: ExportJob, produce: Producer) -> None:
        limits = self.limits
        deadline = asyncio.timeout(limits.max_seconds)
        beating = None
        if self.board is not None:  # the lease: a producer between chunks is not lost
            beating = asyncio.create_task(self._beat(self.board, job.id), context=untraced())
        try:
            async with deadline:
                await produce(job)
            job.flush()
        except ExportCancelled:
            self._jobs.pop(job.id, None)
            return
        except ExportTooLarge as exc:
            job.state, job.too_large = "failed", True
            job.error = f"the export exceeds {exc.limit}; narrow it with {limits.narrow}"
            stopped(job, exc)
        except TimeoutError as exc:
            job.state, job.too_large = "failed", deadline.expired()
            job.error = (
                f"the export took longer than {limits.max_seconds:g} seconds;"
                f" narrow it with {limits.narrow}"
                if deadline.expired()
                else failed(job, exc)
            )
            if job.too_large:
                stopped(job, exc)
        except Exception as exc:  # noqa: BLE001 - a failed job reports it; never a stack trace
            job.state, job.error = "failed", failed(job, exc)
        else:
            job.state = "done"
        finally:
            if beating is not None:
                beating.cancel()
        job.finished_at = self._clock()
        if self.board is not None:
            self._jobs.pop(job.id, None)
            with contextlib.suppress(Exception):  # unrecorded: the job fails as a lost one
                self.board.finish(
                    job.id, error=job.error, too_large=job.too_large, now=job.finished_at
                )
            if job.state == "failed":
                self._purge_soon()

    async def _beat(self, board: ExportBoard, job_id: str) -> None:
        """Renew ``job_id``'s lease every ``beat_seconds`` while it runs (a board that cannot be
        written now: the next beat; the lease lapses only if none gets through)."""
        while True:
            await asyncio.sleep(self.beat_seconds)
            with contextlib.suppress(Exception):
                now = self._clock()
                if board.local:
                    renewed = board.beat(job_id, now=now)
                else:  # off the loop: see _expire
                    renewed = await asyncio.to_thread(board.beat, job_id, now=now)
                if not renewed:
                    return  # cancelled or failed elsewhere: the producer stops at its next add

    def get(self, job_id: str, owner: str) -> ExportJob:
        """The job ``job_id`` of ``owner``; NotFound (the same) for an unknown id or another
        owner's job."""
        self.start_sweeper()
        if self.board is not None:
            self._forget_old()  # files on disk: deleted on any worker's next request
            return self._shared(job_id, owner)
        job = self._jobs.get(job_id)
        if job is None or not _same(job.owner, owner):
            raise NotFound("no such export job")
        return job

    def _shared(self, job_id: str, owner: str) -> ExportJob:
        """The board's job ``job_id`` of ``owner``, as of now (a lost producer: failed)."""
        assert self.board is not None
        row = self.board.get(job_id)
        if row is None or not self.board.owned_by(row, owner):
            raise NotFound("no such export job")
        if self._check_producer(row) and (row := self.board.get(job_id)) is None:
            raise NotFound("no such export job")
        return ExportJob(
            id=row.id, owner=owner, request=row.request,
            transaction_time=row.transaction_time, events_per_file=self.events_per_file,
            max_events=self.max_events, count=row.count, state=cast(State, row.state),
            error=row.error, too_large=row.too_large, finished_at=row.finished_at,
            board=self.board, counts=self.board.counts(job_id) if row.state == "done" else [],
        )  # fmt: skip

    def _check_producer(self, row: JobRow) -> bool:
        """Fail the running job ``row`` if its producing process is gone (True: it was)."""
        assert self.board is not None
        if row.state != "running":
            return False
        if row.beat >= self._clock() - LAPSE_SECONDS:
            if row.producer == self._producer:
                if row.id in self._jobs:
                    return False  # this table's own producer runs it
            elif not self.board.local or row.host != self._host:
                return False  # within its lease; a process elsewhere cannot be looked up
            elif running(row.pid, row.started):
                return False
        return self._lose(row.id)

    def _lose(self, job_id: str) -> bool:
        """Fail a running job as lost with its producer (True: it was; False when it was not
        or the board cannot be written: then a later poll finds it lost)."""
        assert self.board is not None
        lost = False
        with contextlib.suppress(Exception):
            lost = self.board.finish(
                job_id, error=PRODUCER_GONE, too_large=False, now=self._clock()
            )
        if lost:
            self._purge_soon()
        return lost

    def _purge_soon(self) -> None:
        """Delete forgotten and failed output (ExportBoard.purge) in a thread, one
        purge at a time (at once when no event loop runs)."""
        assert self.board is not None
        self._purge_again = True
        if self._purging is not None and not self._purging.done():
            return  # the running purge goes round once more
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._purge_again = False
            self.board.purge()
            return
        self._purging = loop.create_task(self._purge(self.board))

    async def _purge(self, board: ExportBoard) -> None:
        while self._purge_again:
            self._purge_again = False
            with contextlib.suppress(Exception):  # left for the next purge
                await asyncio.to_thread(board.purge)

    def start_sweeper(self) -> None:
        """Start the sweeper (:meth:`sweep` now, then every ``sweep_seconds``) unless it runs:
        the app's lifespan startup calls it, and every use does (a no-op outside an event
        loop); :meth:`aclose` stops it."""
        if self._sweeper is not None and not self._sweeper.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._sweeper = loop.create_task(self._sweep_forever())

    def sweeping(self) -> bool:
        """Whether the sweeper runs."""
        return self._sweeper is not None and not self._sweeper.done()

    async def _sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the board unreadable now: the next round
                await self.sweep()
            await asyncio.sleep(self.sweep_seconds)

    async def sweep(self) -> None:
        """Forget the jobs finished more than ``keep_seconds`` ago and, with a board, delete
        every output no job row serves (expired, cancelled, failed, and chunks of jobs whose
        row a killed worker deleted before its purge). The sweeper runs it at once, then every
        ``sweep_seconds``, so output never outlives ``keep_seconds`` by more than that even
        without requests."""
        if self.board is not None and not self.board.local:
            self._purge_soon()  # chunks of no job: now, not after the expiry's thread
            await self._expire(self.board)
        else:
            self._forget_old()
        if self.board is not None:
            self._purge_soon()
            await self.drain()

    async def _expire(self, board: ExportBoard) -> None:
        """The sweeper's expiry on a board of another machine (PostgreSQL), in a thread: a
        store that stops answering holds a call up to the board's timeout, and the event loop
        must keep serving meanwhile (its calls are thread-safe). A local board (SQLite) stays
        on the loop: one connection, shared with the loop's write transactions. A request's
        own calls stay on the loop: a known limit, bounded by the board's timeout."""
        await asyncio.to_thread(board.expire, self._clock() - self.keep_seconds)

    async def drain(self) -> None:
        """Wait until the output forgotten so far is deleted."""
        if self._purging is not None:
            # Shielded: a cancelled waiter (the sweeper at aclose) leaves the purge running.
            await asyncio.shield(self._purging)

    def cancel(self, job_id: str, owner: str) -> None:
        """Stop ``owner``'s job ``job_id`` and forget it (NotFound as :meth:`get`); with a
        board its producer, in whichever process, stops at its next add."""
        job = self.get(job_id, owner)
        if self.board is not None:
            self.board.delete(job_id)
            self._purge_soon()
        local = self._jobs.pop(job_id, job)
        if local.task is not None:
            local.task.cancel()

    async def aclose(self) -> None:
        """Cancel every running job of this process (with a board: failed there, as lost)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
            if self.board is not None and job.state == "running":
                self._lose(job.id)
        await self.drain()
        if self.board is not None:
            self.board.close()  # reopened on next use

    def _forget_old(self) -> None:
        now = self._clock()
        if self.board is not None:
            if self.board.expire(now - self.keep_seconds):
                self._purge_soon()
            return
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at > self.keep_seconds:
                del self._jobs[job_id]


def _same(owner: str, caller: str) -> bool:
    """Whether two principals are the same, in constant time (compare_digest refuses a
    non-ASCII str: compared as UTF-8 bytes)."""
    return secrets.compare_digest(
        owner.encode("utf-8", "surrogatepass"), caller.encode("utf-8", "surrogatepass")
    )


def _too_many() -> TooManyRequests:
    return TooManyRequests(
        "too many exports are running (yours or in all); try again later", retry_after=30
    )
