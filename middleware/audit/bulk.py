"""Bulk export jobs of AuditEvent (FHIR Bulk Data Access IG v2, "Asynchronous request pattern").

Kick-off starts a job (:meth:`ExportJobs.start`), whose producer writes NDJSON lines into it
(:meth:`ExportJob.add`); the status URL reports progress while it runs (202 with
``X-Progress``) and then the manifest (200); each output file is served from memory; DELETE
cancels the job and forgets it.

Limits, documented for operators: job state lives **in this process's memory**. A job is
served only by the process that runs it (behind a load balancer: sticky sessions, or one
replica for exports), and a restart forgets every job (the client starts again). At most
``max_running`` jobs run at once (429 beyond), a job holds at most ``max_events`` events
(it fails beyond, asking for a narrower ``_since``), and a finished job is kept
``keep_seconds`` then forgotten. Job ids are random (128 bits) and a job is served only to
the principal that started it: anyone else gets the same 404 as for an unknown id.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from middleware.errors import NotFound, TooManyRequests

__all__ = ["ExportJob", "ExportJobs", "ExportTooLarge"]

State = Literal["running", "done", "failed"]


class ExportTooLarge(Exception):
    """The job reached ``max_events``."""


@dataclass(slots=True)
class ExportJob:
    """One export: who asked (``owner``), the kick-off ``request`` URL, its
    ``transaction_time`` (FHIR instant), the NDJSON ``files`` written so far (lists of lines),
    ``count`` events in all, and its ``state`` (``error``: why it failed, safe to show)."""

    id: str
    owner: str
    request: str
    transaction_time: str
    events_per_file: int
    max_events: int
    files: list[list[bytes]] = field(default_factory=list)
    count: int = 0
    state: State = "running"
    error: str | None = None
    too_large: bool = False  # failed past max_events: the client's to narrow (a 4xx)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None

    def add(self, line: bytes) -> None:
        """Append one NDJSON line (one resource, no newline); raises :class:`ExportTooLarge`
        past ``max_events``."""
        if self.count >= self.max_events:
            raise ExportTooLarge
        if not self.files or len(self.files[-1]) >= self.events_per_file:
            self.files.append([])
        self.files[-1].append(line)
        self.count += 1

    def ndjson(self, n: int) -> bytes:
        """Output file ``n`` (from 0) of a finished job as NDJSON; NotFound otherwise."""
        if self.state != "done" or not 0 <= n < len(self.files):
            raise NotFound("no such export file")
        return b"".join(line + b"\n" for line in self.files[n])


Producer = Callable[[ExportJob], Awaitable[None]]


class ExportJobs:
    """The export jobs of this process (module docstring). ``clock``: monotonic seconds."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        max_running: int = 2,
        max_events: int = 1_000_000,
        events_per_file: int = 10_000,
        keep_seconds: float = 3600.0,
    ) -> None:
        self._clock = clock
        self._jobs: dict[str, ExportJob] = {}
        self.max_running = max_running
        self.max_events = max_events
        self.events_per_file = events_per_file
        self.keep_seconds = keep_seconds

    def start(
        self, *, owner: str, request: str, transaction_time: str, produce: Producer
    ) -> ExportJob:
        """A new running job whose ``produce`` runs as a task; 429 when ``max_running`` jobs
        run already."""
        self._forget_old()
        if sum(job.state == "running" for job in self._jobs.values()) >= self.max_running:
            raise TooManyRequests("too many exports are running; try again later", retry_after=30)
        job = ExportJob(
            id=secrets.token_hex(16),
            owner=owner,
            request=request,
            transaction_time=transaction_time,
            events_per_file=self.events_per_file,
            max_events=self.max_events,
        )
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, produce))
        return job

    async def _run(self, job: ExportJob, produce: Producer) -> None:
        try:
            await produce(job)
        except ExportTooLarge:
            job.too_large = True
            job.state, job.error = (
                "failed",
                (f"the export exceeds {self.max_events} events; narrow it with _since"),
            )
        except Exception:  # noqa: BLE001 - a failed job reports it; never a stack trace
            job.state, job.error = "failed", "the export failed; start it again"
        else:
            job.state = "done"
        job.finished_at = self._clock()

    def get(self, job_id: str, owner: str) -> ExportJob:
        """The job ``job_id`` of ``owner``; NotFound (the same) for an unknown id or another
        owner's job."""
        job = self._jobs.get(job_id)
        if job is None or not secrets.compare_digest(job.owner, owner):
            raise NotFound("no such export job")
        return job

    def cancel(self, job_id: str, owner: str) -> None:
        """Stop ``owner``'s job ``job_id`` and forget it (NotFound as :meth:`get`)."""
        job = self.get(job_id, owner)
        if job.task is not None:
            job.task.cancel()
        del self._jobs[job_id]

    async def aclose(self) -> None:
        """Cancel every running job."""
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task

    def _forget_old(self) -> None:
        now = self._clock()
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at > self.keep_seconds:
                del self._jobs[job_id]
