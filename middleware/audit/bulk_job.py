"""One AuditEvent bulk export job and how its producer writes into it
(:mod:`middleware.audit.bulk` runs the jobs and says where they live).

A job keeps its NDJSON lines in memory (``files``), or with a board
(:mod:`middleware.storage.exports_base`) writes them there as chunks of at most
``CHUNK_BYTES``, reading the job's state before each line so a cancel through another worker
stops it (:class:`ExportCancelled`). Either way a job holds at most ``max_events`` lines and
``max_bytes`` bytes (:class:`ExportTooLarge` beyond: without a board every line is in this
process's memory), and a file is closed once it holds ``events_per_file`` lines or
``bytes_per_file`` bytes. A finished file is read back in batches of at most
:data:`BATCH_LINES` lines (:meth:`ExportJob.batches`), so a download never holds a whole file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from middleware.errors import GatewayError, NotFound
from middleware.logging import get_logger
from middleware.storage.exports_base import ExportBoard

__all__ = [
    "BATCH_LINES",
    "CHUNK_BYTES",
    "UNAVAILABLE",
    "ExportCancelled",
    "ExportJob",
    "ExportTooLarge",
    "Limits",
    "State",
    "failed",
    "stopped",
]

State = Literal["running", "done", "failed"]

#: A board chunk holds at most this many bytes of lines (one write transaction each).
CHUNK_BYTES: Final = 1 << 20
#: What a job reports that failed because the ledger could not be written (a 503: nothing
#: is wrong with the request; start it again later).
UNAVAILABLE: Final = "the audit ledger was unavailable; start the export again later"
#: A batch of a finished file (:meth:`ExportJob.batches`) holds at most this many lines.
BATCH_LINES: Final = 500


class ExportTooLarge(Exception):
    """The job reached a limit: ``limit`` names it (``1000 events``, ``1048576 bytes``),
    safe to show."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class ExportCancelled(Exception):
    """The job no longer runs on the board (cancelled, or failed as lost): its producer stops."""


@dataclass(slots=True)
class ExportJob:
    """One export: who asked (``owner``), the kick-off ``request`` URL, its
    ``transaction_time`` (FHIR instant), the NDJSON ``files`` written so far (lists of lines;
    with a ``board`` they are there, in chunks, and ``counts`` says how many lines each file
    has), ``count`` events in all, and its ``state`` (``error``: why it failed, safe to
    show)."""

    id: str
    owner: str
    request: str
    transaction_time: str
    events_per_file: int
    max_events: int
    max_bytes: int | None = None  # bytes of lines in all (None: no limit)
    bytes_per_file: int | None = None  # a file is closed past this many bytes (None: never)
    files: list[list[bytes]] = field(default_factory=list)
    count: int = 0
    size: int = 0  # bytes of lines (with their newlines) added so far
    state: State = "running"
    error: str | None = None
    too_large: bool = False  # failed past max_events: the client's to narrow (a 4xx)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None
    board: ExportBoard | None = None
    clock: Callable[[], float] = time.time  # the board's (ExportJobs.clock)
    counts: list[int] = field(default_factory=list)  # lines of each file (with a board)
    _pending: list[bytes] = field(default_factory=list)  # lines not yet on the board
    _pending_bytes: int = 0
    _seq: int = 0
    _file_bytes: int = 0  # bytes of the current file
    _split: bool = False  # the next line starts a new output file (start_file)

    def start_file(self) -> None:
        """Start a new output file at the next :meth:`add` (one resource type a file, as
        Bulk Data's manifest names each file's type); a no-op before any line."""
        self._split = bool(self.counts if self.board is not None else self.files)

    def add(self, line: bytes) -> None:
        """Append one NDJSON line (one resource, no newline); raises :class:`ExportTooLarge`
        past ``max_events`` and, with a board, :class:`ExportCancelled` once the job is no
        longer running there."""
        if self.board is not None and self.board.state(self.id) != "running":
            raise ExportCancelled
        if self.count >= self.max_events:
            raise ExportTooLarge(f"{self.max_events} events")
        if self.max_bytes is not None and self.size + len(line) + 1 > self.max_bytes:
            raise ExportTooLarge(f"{self.max_bytes} bytes")
        full = self._file_full()
        self.size += len(line) + 1
        if self.board is not None:
            self._add_shared(line, full)
            return
        if full:
            self.files.append([])
            self._split, self._file_bytes = False, 0
        self.files[-1].append(line)
        self._file_bytes += len(line) + 1
        self.count += 1

    def _file_full(self) -> bool:
        """Whether the next line starts a new file (none yet, start_file, or a limit)."""
        lines = self.counts[-1] if self.counts else None
        if self.board is None:
            lines = len(self.files[-1]) if self.files else None
        return (
            self._split
            or lines is None
            or lines >= self.events_per_file
            or (self.bytes_per_file is not None and self._file_bytes >= self.bytes_per_file)
        )

    def _add_shared(self, line: bytes, full: bool) -> None:
        if full:
            self.flush()
            self.counts.append(0)
            self._seq, self._split, self._file_bytes = 0, False, 0
        self._file_bytes += len(line) + 1
        self._pending.append(line + b"\n")
        self._pending_bytes += len(line) + 1
        self.counts[-1] += 1
        self.count += 1
        if self._pending_bytes >= CHUNK_BYTES or self.counts[-1] >= self.events_per_file:
            self.flush()

    def flush(self) -> None:
        """Write the lines not yet on the board as one chunk (:class:`ExportCancelled` when
        the job stopped running there)."""
        if self.board is None or not self._pending:
            return
        data, lines = b"".join(self._pending), len(self._pending)
        self._pending, self._pending_bytes = [], 0
        now = self.clock()
        if not self.board.append(self.id, len(self.counts) - 1, self._seq, lines, data, now=now):
            raise ExportCancelled
        self._seq += 1

    def file_counts(self) -> list[int]:
        """The number of lines of each output file, in order."""
        return list(self.counts) if self.board is not None else [len(f) for f in self.files]

    def ndjson(self, n: int) -> bytes:
        """Output file ``n`` (from 0) of a finished job as NDJSON; NotFound otherwise."""
        return b"".join(line + b"\n" for batch in self.batches(n) for line in batch)

    def first_line(self, n: int) -> bytes:
        """The first line of output file ``n`` of a finished job (no newline; the whole
        file is not read); NotFound when there is no such file."""
        if self.state != "done" or not 0 <= n < len(self.file_counts()):
            raise NotFound("no such export file")
        if self.board is not None:
            return self.board.first_line(self.id, n)
        return self.files[n][0] if self.files[n] else b""

    def batches(self, n: int) -> Iterator[list[bytes]]:
        """Output file ``n`` (from 0) of a finished job as lists of at most
        :data:`BATCH_LINES` lines (no newlines), read as they are asked for (with a board,
        one chunk at a time); NotFound (at once) when there is no such file."""
        if self.state != "done" or not 0 <= n < len(self.file_counts()):
            raise NotFound("no such export file")
        return self._batches(n)

    def _batches(self, n: int) -> Iterator[list[bytes]]:
        if self.board is None:
            lines = self.files[n]
            for start in range(0, len(lines), BATCH_LINES):
                yield lines[start : start + BATCH_LINES]
            return
        for chunk in self.board.chunks(self.id, n):
            lines = chunk.split(b"\n")
            lines.pop()  # every line ends with a newline: nothing after the last
            for start in range(0, len(lines), BATCH_LINES):
                yield lines[start : start + BATCH_LINES]


def stopped(job: ExportJob, exc: Exception) -> None:
    """Log that ``job`` stopped at a limit (its id and the error's type only)."""
    get_logger().warning("export job too large", export_job=job.id, error_type=type(exc).__name__)


def failed(job: ExportJob, exc: Exception) -> str:
    """Log why ``job`` failed (its id and the error's type only: an upstream's or a store's
    message may name a patient) and what it reports (module docstring)."""
    get_logger().error("export job failed", export_job=job.id, error_type=type(exc).__name__)
    if isinstance(exc, GatewayError) and exc.status == 503:
        return UNAVAILABLE
    return "the export failed; start it again"


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of :class:`ExportJobs` beyond lines and running jobs (None: none):
    ``max_bytes`` in a job, ``bytes_per_file`` before a new file, ``max_seconds`` a job runs,
    ``max_per_owner`` running jobs of one owner; ``narrow`` names what the client narrows."""

    max_bytes: int | None = None
    bytes_per_file: int | None = None
    max_seconds: float | None = None
    max_per_owner: int | None = None
    narrow: str = "_since"
