"""``verify-export`` on several cores: the per-line checks in forked workers, the rest here.

What a line costs (parse, leaf, inclusion proof, commitment, opening, columns, scope, rule:
:meth:`~middleware.audit.export_check.ExportChecker.entry`) depends on that line alone, so
:func:`start_verify` splits the entry lines into contiguous parts and forks a process for each
part but the first, which this process checks itself. A part's result is its *events* in the
order the one-process verifier makes them: the findings of each line and, between them, the
line's place in the order (number, role, index, leaf fields). :meth:`Verification.report` then
replays them here in file order: the findings through ``ExportReport.add`` (so the cap keeps
the same first ``MAX_FINDINGS``) and the places through the one
:class:`~middleware.audit.export_chain.LineOrder`, which checks what is sequential (ascending
indexes, roles, the patient's chain, the tail). The report is the one-process report, field
for field (``tests/unit/audit/test_verify_parallel.py`` compares them on tampered files).

A CSV record may span lines (a quoted cell), so a part that starts at a line inside a record
would read it wrongly: a part reads the record it ends inside to its end and says where it
stopped; when that is not where the next part started, the rest of the file is checked again
here from where it did stop, in this process.

Workers are forked (they inherit the lines, the trust policy and the opener: nothing is
pickled but the events), and only from a process with no other thread alive (a fork copies
a thread's locks, not the thread); elsewhere, or for a file under ``min_lines`` lines, one
process does it all. A worker that dies, fails to send its part, or sends what cannot be
read, makes :meth:`report` raise :class:`WorkerError`: the file is not verified, never
reported ok.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

from middleware.audit.export_chain import LineOrder
from middleware.audit.export_read import ExportLine, ndjson_lines
from middleware.audit.export_read_csv import csv_entries, csv_head_ok, csv_records
from middleware.audit.verify_export import (
    Columns,
    ExportChecker,
    ExportReport,
    RowOpener,
    RowRule,
    begin_export,
    verify_file,
)
from middleware.ledger.leaf import LeafFields
from middleware.ledger.receipt import TLOG_PROOF_HEADER
from middleware.ledger.trust import TrustPolicy

__all__ = ["MAX_JOBS", "MIN_LINES", "Verification", "WorkerError", "start_verify"]

#: Files shorter than this are checked in one process (a fork and its results cost more).
MIN_LINES = 20_000
#: At most this many processes, whatever ``jobs`` asks.
MAX_JOBS = 8

#: A finding (code, message, line, index) or a line's place (number, role, index, the leaf's
#: fields as a tuple).
_Event = tuple[Any, ...]
#: A tuple as a ``LeafFields``, without the NamedTuple's Python ``__new__``.
_new_fields = tuple.__new__


class WorkerError(RuntimeError):
    """A worker process died or could not send its part: the file was not verified."""


class _Part(NamedTuple):
    """What checking a part found: its events, counts, the line index after its last record
    (``resume``) and the exception that stopped it (re-raised when its turn comes)."""

    events: list[_Event]
    lines: int
    rows: int
    shredded: int
    resume: int
    error: BaseException | None = None


@dataclass(frozen=True)
class _Job:
    """What every part needs (a forked worker inherits it)."""

    lines: Sequence[str]
    policy: TrustPolicy
    opener: RowOpener | None
    rules: Mapping[str, RowRule] | None
    columns: Mapping[str, Columns] | None


class Verification:
    """A verification under way: :meth:`report` finishes it (once); :meth:`close` ends any
    worker still running. A context manager that closes."""

    def __init__(
        self,
        job: _Job,
        *,
        report: ExportReport | None = None,
        check: ExportChecker | None = None,
        bounds: Sequence[tuple[int, int]] = (),
    ) -> None:
        self._job = job
        self._report = report
        self._check = check
        self._bounds = bounds
        self._workers: list[tuple[BaseProcess, Connection]] = []
        #: How many processes check the lines (1: this one alone).
        self.jobs = max(1, len(bounds))
        for start, stop in bounds[1:]:
            receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
            process = multiprocessing.get_context("fork").Process(
                target=_child, args=(send, job, start, stop), daemon=True
            )
            process.start()
            send.close()
            self._workers.append((process, receive))

    def report(self, tell: Callable[[int], None] | None = None) -> ExportReport:
        """The report, the one-process verifier's; ``tell(n)``: ``n`` more lines checked.
        Raises :class:`WorkerError` when a worker fails, and what the verifier raises."""
        count = tell or (lambda n: None)
        lines = self._job.lines
        report, check = self._report, self._check
        if report is None or check is None:  # one process, the verifier as it is
            job = self._job
            result = verify_file(
                iter(lines), job.policy, opener=job.opener, rules=job.rules, columns=job.columns
            )
            count(len(lines))
            return result
        with _collector_paused():
            return self._merged(report, check, count)

    def _merged(
        self, report: ExportReport, check: ExportChecker, count: Callable[[int], None]
    ) -> ExportReport:
        lines = self._job.lines
        resume = self._bounds[0][0]
        count(resume)
        for n, (start, stop) in enumerate(self._bounds):
            # This process checks the first part (meanwhile the workers check theirs) and
            # replays it while they finish.
            part = _part(self._job, start, stop) if n == 0 else _receive(*self._workers[n - 1])
            if start != resume:  # the part before ended inside a record: read on from there
                part = _part(self._job, resume, len(lines))
            _merge(report, check.order, part)
            count(part.resume - resume)
            resume = part.resume
            if resume == len(lines):
                break
        check.finish()
        return report

    def close(self) -> None:
        for process, receive in self._workers:
            receive.close()
            if process.is_alive():
                process.kill()
            process.join()
        self._workers = []

    def __enter__(self) -> Verification:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_verify(
    lines: Sequence[str],
    policy: TrustPolicy,
    *,
    opener: RowOpener | None,
    rules: Mapping[str, RowRule] | None = None,
    columns: Mapping[str, Columns] | None = None,
    jobs: int | None = None,
    min_lines: int = MIN_LINES,
) -> Verification:
    """Start verifying an export's (or a receipt's) ``lines`` as ``verify_export.verify_file``
    does, on ``jobs`` processes (None: the cores; at most :data:`MAX_JOBS`), forking the
    workers now: call it before starting any thread (a progress bar's)."""
    job = _Job(lines, policy, opener, rules, columns)
    wanted = min(jobs or os.cpu_count() or 1, MAX_JOBS)
    if (
        wanted < 2
        or len(lines) < min_lines
        or lines[0].rstrip("\n") == TLOG_PROOF_HEADER
        or "fork" not in multiprocessing.get_all_start_methods()
        or threading.active_count() > 1
    ):
        return Verification(job)
    report, check = begin_export(lines[0], policy, opener=opener, rules=rules, columns=columns)
    if check is None:
        return Verification(job)
    first = 1
    if check.escaped:  # the column line, read as the verifier reads it
        read, head = next(csv_records(itertools.islice(lines, 1, None)), (0, None))
        if not csv_head_ok(head, check.names):
            return Verification(job)
        first = 1 + read
    span = len(lines) - first
    parts = min(wanted, span)
    if parts < 2:
        return Verification(job)
    cut = [first + span * k // parts for k in range(parts + 1)]
    bounds = list(itertools.pairwise(cut))
    return Verification(job, report=report, check=check, bounds=bounds)


def _part(job: _Job, start: int, stop: int) -> _Part:
    """Check the entry lines ``job.lines[start:stop]`` (a CSV record begun before ``stop`` is
    read whole), recording the events; an exception stops it and is kept."""
    events: list[_Event] = []
    recorder = _Recorded(events)
    _, check = begin_export(
        job.lines[0], job.policy, opener=job.opener, rules=job.rules, columns=job.columns
    )
    assert check is not None  # the header was read before (start_verify)
    check.report = recorder
    check.order = _Places(events)
    seen = [start - 1]
    entries: Iterator[tuple[int, ExportLine | str]]
    if check.escaped:
        lines = itertools.islice(job.lines, start, None)  # a last record may read past stop
        records = csv_records(lines, read=start - 1, stop=stop - 1)
        entries = csv_entries(_tracked(records, seen), len(check.names))
    else:
        entries = ndjson_lines(
            itertools.islice(job.lines, start, stop), check.names, start=start + 1
        )
        seen[0] = stop - 1
    count = 0
    try:
        for number, entry in entries:
            count += 1
            if isinstance(entry, str):
                recorder.add("line-malformed", entry, number)
            else:
                check.entry(number, entry)
    except Exception as exc:  # noqa: BLE001 - re-raised in its turn, as one process raises it
        return _Part(events, count, recorder.rows, recorder.shredded, seen[0] + 1, exc)
    return _Part(events, count, recorder.rows, recorder.shredded, seen[0] + 1)


def _tracked(
    records: Iterator[tuple[int, list[str]]], seen: list[int]
) -> Iterator[tuple[int, list[str]]]:
    """``records``, the lines read so far kept in ``seen[0]``."""
    for read, record in records:
        seen[0] = read
        yield read, record


class _Recorded(ExportReport):
    """A worker's report: every finding kept, in order, as an event."""

    def __init__(self, events: list[_Event]) -> None:
        super().__init__()
        self.events = events

    def add(self, code: str, message: str, line: int | None, index: int | None = None) -> None:
        self.events.append((code, message, line, index))


class _Places(LineOrder):
    """A worker's line order: each line's place kept as an event, checked in the parent."""

    def __init__(self, events: list[_Event]) -> None:
        super().__init__(lambda *finding: None, None)
        self.events = events

    def feed(self, number: int, role: str, index: int, leaf: LeafFields) -> None:
        # The fields as a plain tuple: pickled in C, where a NamedTuple is rebuilt by a
        # Python call (about a microsecond a line).
        self.events.append((number, role, index, tuple(leaf)))


def _merge(report: ExportReport, order: LineOrder, part: _Part) -> None:
    """Replay ``part``'s events into ``report`` and ``order``, in order."""
    add, feed = report.add, order.feed
    for event in part.events:
        if type(event[0]) is int:
            number, role, index, fields = event
            feed(number, role, index, _new_fields(LeafFields, fields))
        else:
            add(*event)
    report.lines += part.lines
    report.rows += part.rows
    report.shredded += part.shredded
    if part.error is not None:
        raise part.error


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (and restored after): a part's events are
    tens of thousands of tuples kept to the end, without a cycle among them, which full
    collections would walk again and again (a fifth of a part's CPU)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _child(send: Connection, job: _Job, start: int, stop: int) -> None:
    """A worker: check its part and send it. An exception that would not come back whole
    from the pipe (one whose class pickles but does not unpickle, say) is sent as a
    :class:`WorkerError` naming it, so that the parent always reads what it is sent."""
    with _collector_paused():
        part = _part(job, start, stop)
    if part.error is not None and not _round_trips(part.error):
        part = part._replace(error=_failed(part.error))
    try:
        send.send(part)
    except Exception as exc:  # noqa: BLE001 - what does not pickle: its text
        send.send(part._replace(events=[], error=_failed(exc)))
    send.close()


def _round_trips(error: BaseException) -> bool:
    """Whether ``error`` pickles and unpickles (what the pipe does to it)."""
    try:
        pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, just made
    except Exception:  # noqa: BLE001 - any failure means it would not arrive
        return False
    return True


def _failed(error: BaseException) -> WorkerError:
    return WorkerError(f"a verify-export worker failed ({error!r}): the file is not verified")


def _receive(process: BaseProcess, receive: Connection) -> _Part:
    """The part a worker sent; :class:`WorkerError` when none can be read, whatever the
    reason (the worker died, the pipe broke, its bytes do not unpickle)."""
    try:
        part: _Part = receive.recv()
    except (EOFError, OSError) as exc:
        process.join()
        raise WorkerError(
            f"a verify-export worker (process {process.pid}) ended with exit code "
            f"{process.exitcode} before sending its lines' results: the file is not verified"
        ) from exc
    except Exception as exc:  # a result that does not unpickle: not verified either
        raise WorkerError(
            f"a verify-export worker (process {process.pid}) sent results that could not be "
            f"read ({exc!r}): the file is not verified"
        ) from exc
    return part
