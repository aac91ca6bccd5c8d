"""One AuditEvent bulk export job and how its producer writes into it
(:mod:`middleware.audit.bulk` runs the jobs and says where they live).

A job keeps its NDJSON lines in memory (``files``), or with a board
(:mod:`middleware.storage.exports_sqlite`) writes them there as chunks of at most
``CHUNK_BYTES``, reading the job's state before each line so a cancel through another worker
stops it (:class:`ExportCancelled`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from middleware.errors import NotFound
from middleware.storage.exports_sqlite import SqliteExportBoard

__all__ = ["CHUNK_BYTES", "ExportCancelled", "ExportJob", "ExportTooLarge", "State"]

State = Literal["running", "done", "failed"]

#: A board chunk holds at most this many bytes of lines (one write transaction each).
CHUNK_BYTES: Final = 1 << 20


class ExportTooLarge(Exception):
    """The job reached ``max_events``."""


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
    files: list[list[bytes]] = field(default_factory=list)
    count: int = 0
    state: State = "running"
    error: str | None = None
    too_large: bool = False  # failed past max_events: the client's to narrow (a 4xx)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None
    board: SqliteExportBoard | None = None
    clock: Callable[[], float] = time.time  # the board's (ExportJobs.clock)
    counts: list[int] = field(default_factory=list)  # lines of each file (with a board)
    _pending: list[bytes] = field(default_factory=list)  # lines not yet on the board
    _pending_bytes: int = 0
    _seq: int = 0
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
            raise ExportTooLarge
        if self.board is not None:
            self._add_shared(line)
            return
        if self._split or not self.files or len(self.files[-1]) >= self.events_per_file:
            self.files.append([])
            self._split = False
        self.files[-1].append(line)
        self.count += 1

    def _add_shared(self, line: bytes) -> None:
        if self._split or not self.counts or self.counts[-1] >= self.events_per_file:
            self.flush()
            self.counts.append(0)
            self._seq = 0
            self._split = False
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
        if self.state != "done" or not 0 <= n < len(self.file_counts()):
            raise NotFound("no such export file")
        if self.board is not None:
            return self.board.file(self.id, n)
        return b"".join(line + b"\n" for line in self.files[n])
