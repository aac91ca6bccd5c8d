"""The board bulk export jobs share (:class:`ExportBoard`), and one job's row (:class:`JobRow`).

:class:`~middleware.audit.bulk.ExportJobs` keeps a job's state and NDJSON output on a board
so that any process of the gateway answers the status, manifest, download and DELETE requests
of a job another process produces. Two boards implement the contract:

- :class:`~middleware.storage.exports_sqlite.SqliteExportBoard`, a file beside a SQLite store
  (the worker processes of one machine; ``local``: a producer's pid can be looked up);
- :class:`~middleware.storage.exports_postgres.PostgresExportBoard`, tables in a PostgreSQL
  store's schema (every replica; not ``local``: a producer is alive while its lease is).

The contract, on both: owners are keyed digests compared in constant time (:meth:`owned_by`);
:meth:`create` records a running job unless ``max_running`` (over every process) or
``max_per_owner`` are reached; :meth:`append` and :meth:`finish` change a job only while it
runs (False otherwise: a cancelled or lost job's producer stops); :meth:`beat` renews a
running job's lease; :meth:`delete` and :meth:`expire` forget jobs at once, and their output
is deleted by the next :meth:`purge` (with failed jobs' output and chunks of no job). Calls
are synchronous and short (one row, or one chunk of at most about a MiB) except
:meth:`purge`, which runs off the event loop. A board that cannot be read or written raises
(``sqlite3.Error``; :class:`~middleware.errors.ServiceUnavailable` for PostgreSQL): the
export endpoints answer 503, nothing is served from a guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ExportBoard", "JobRow"]


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the board holds it: who asked (``owner``: the board's keyed digest of the
    caller, :meth:`ExportBoard.owner_digest`), what, its ``state`` (running, done, failed)
    and, while running, which process produces it (``host``, ``pid`` and its ``started``
    time: together they name one process, a reused pid told apart; ``producer``: which
    job table of that process, a random id; ``beat``: when the producer last wrote or renewed
    its lease)."""

    id: str
    owner: bytes
    request: str
    transaction_time: str
    state: str
    error: str | None
    too_large: bool
    count: int
    host: str
    pid: int
    started: str
    producer: str
    beat: float
    finished_at: float | None


class ExportBoard(Protocol):
    """What :class:`~middleware.audit.bulk.ExportJobs` needs of a shared board (module
    docstring)."""

    #: Whether every producer runs on this machine (its pid can be looked up).
    local: bool

    def owner_digest(self, owner: str) -> bytes:
        """What a job row holds for ``owner``: its keyed digest."""

    def owned_by(self, row: JobRow, owner: str) -> bool:
        """Whether ``owner`` started the job ``row``, in constant time."""

    def create(self, job: JobRow, *, max_running: int, max_per_owner: int | None = None) -> bool:
        """Record the running ``job`` unless the limits are reached (False)."""

    def append(
        self, job_id: str, file: int, seq: int, lines: int, data: bytes, *, now: float
    ) -> bool:
        """Add a chunk to a running job and renew its lease; False when it no longer runs."""

    def beat(self, job_id: str, *, now: float) -> bool:
        """Renew a running job's lease; False when it no longer runs."""

    def finish(self, job_id: str, *, error: str | None, too_large: bool, now: float) -> bool:
        """End a running job, done (``error`` None) or failed; False when it was not running."""

    def state(self, job_id: str) -> str | None:
        """The job's state, None when there is no such job."""

    def get(self, job_id: str) -> JobRow | None:
        """The job ``job_id``, None when there is none."""

    def running(self) -> list[JobRow]:
        """Every running job."""

    def counts(self, job_id: str) -> list[int]:
        """The number of lines of each output file of the job, in order."""

    def file(self, job_id: str, n: int) -> bytes:
        """Output file ``n`` of the job (empty when it has none)."""

    def first_line(self, job_id: str, n: int) -> bytes:
        """The first line of output file ``n``, without its newline (empty when none)."""

    def chunks(self, job_id: str, n: int) -> Iterator[bytes]:
        """Output file ``n`` chunk by chunk, each read when it is asked for."""

    def stored_chunks(self) -> int:
        """How many chunks the board holds (what a purge has left)."""

    def delete(self, job_id: str) -> None:
        """Forget the job; its output is deleted by the next :meth:`purge`."""

    def expire(self, finished_before: float) -> int:
        """Forget the jobs finished before ``finished_before``; how many there were."""

    def purge(self, *, slice_chunks: int = 8) -> int:
        """Delete the output of forgotten and failed jobs (off the event loop); how many
        chunks."""

    def close(self) -> None:
        """Release connections (idempotent; reopened on next use)."""
