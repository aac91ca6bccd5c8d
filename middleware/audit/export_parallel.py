"""Making a date-range export on several cores: :func:`export_in_parts`, the same bytes as
the sequential ``consentry audit export`` (``cli_reports.export``), sooner.

Why it can be split: an export without a patient chain is its header, then one ``row`` line
per index row the query matches, in ascending ledger index, each proved against the same
signed checkpoint (RFC 9162 §2.1.3.1). A line depends only on its row, its leaf and evidence,
its patient's key and the tree; so the rows can be cut into parts, each part's lines made
alone and the parts' bytes joined in order.

How: this process reads the log once (``storage.ledger_bulk``, the snapshot the sequential
path reads for an export of most of the log), makes and checks the tree
(``export_collect.proof_tree``) and the header, and cuts the query's period into one slice
of ``recorded_us`` per job, of about as many leaves each. Worker processes, forked with the
snapshot and the tree (nothing is sent to them), each open the store themselves, read only
so (``open_log_store(replay=False)``), read their slice's index rows, collect its lines
(``collect_export``, which checks every leaf it reads as it always does) and write their
encoded bytes (``export_write.write_entries``) to a file of their own. This process makes
the first slice's lines itself, straight into the output after the header, then appends the
workers' parts in order (``os.copy_file_range``).

The slices are by time and the lines by index, so the parts are the sequential file's only
when each part's indexes all come after the previous part's; a log's times rise with its
indexes, but a clock stepped back can break that. Each worker reports its lowest and highest
index, and when two parts overlap (or a worker fails in any way: a forged leaf, a store it
cannot open) nothing is written here and the caller makes the file sequentially instead,
which writes (or raises) what it always did. Exports of fewer than :data:`PARALLEL_ROWS`
rows, or of less than an eighth of the log, are left to the sequential path, as is a
process with other threads alive (a fork copies their locks held).

The parts' files live in a private directory (``mkdtemp``: mode 0700) beside the output,
each created 0600 and named by its number only (no PHI in a name); the directory is removed
on every path, an error or an interrupt included, and every worker is ended and joined.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import itertools
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import BinaryIO

from middleware.audit.cli_common import all_rows
from middleware.audit.export import ExportEntry, ExportHeader
from middleware.audit.export_collect import ExportSpec, SnapshotView, collect_export, proof_tree
from middleware.audit.export_write import export_head, write_entries
from middleware.audit.proofs import ProofMaker
from middleware.audit.row import AuditQuery, AuditRow
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import leaf_fields
from middleware.storage.ledger_bulk import read_bulk
from middleware.storage.ledger_open import open_log_store

__all__ = ["PARALLEL_ROWS", "PartsJob", "export_in_parts", "usable_cores"]

#: Exports of fewer rows are made sequentially: forking and reading the whole log would cost
#: more than the second core saves.
PARALLEL_ROWS = 20_000
#: An export of less than 1/_BULK of the log reads entry by entry (``cli_reports._BULK``).
_BULK = 8
#: A part's outcome as a worker sends it: ``(rows read, lines written, lowest index,
#: highest index)`` (-1, -1: no row), or None when it failed.
_Outcome = tuple[int, int, int, int] | None


@dataclass(frozen=True, slots=True)
class PartsJob:
    """What every part shares: the store (``url``, ``schema``), the index ``query`` the export
    stands for (no patient: a patient's export proves its chain, which is not cut), the
    file's ``fmt`` (``"ndjson"`` or ``"csv"``), its ``spec`` and the evidence ``wrap_key``."""

    url: str
    schema: str
    query: AuditQuery
    fmt: str
    spec: ExportSpec
    wrap_key: bytes


def usable_cores() -> int:
    """The cores this process may run on (all of the machine's where that is not known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity call
        return os.cpu_count() or 1


def export_in_parts(
    job: PartsJob,
    out: Path,
    *,
    jobs: int | None = None,
    min_rows: int = PARALLEL_ROWS,
    tell: Callable[[int], object] | None = None,
) -> tuple[int, int] | None:
    """Write ``job``'s export to ``out`` (an empty private file) with up to ``jobs`` worker
    processes (None: one per usable core); ``tell`` is told each part's lines as it is
    appended. Returns ``(rows, lines)``, or None when the file is to be made sequentially
    (module docstring), ``out`` then holding anything or nothing."""
    jobs = usable_cores() if jobs is None else jobs
    if (
        jobs < 2
        or job.query.patient is not None
        or job.spec.pseudonym is not None
        or threading.active_count() > 1
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return None
    prepared = asyncio.run(_prepare(job, jobs, min_rows))
    if prepared is None:
        return None
    view, tree, header, slices = prepared
    directory = Path(tempfile.mkdtemp(prefix=".consentry-export-", dir=out.parent))
    try:
        shared = _Shared(job, view, tree)
        return _run_parts(shared, header, slices, directory, out, tell=tell)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- in this process ---------------------------------------------------------------------------

_Slice = tuple[int | None, int | None]  # since_us, until_us (inclusive; None: open)


async def _prepare(
    job: PartsJob, jobs: int, min_rows: int
) -> tuple[SnapshotView, ProofMaker, ExportHeader, list[_Slice]] | None:
    """The snapshot, the checked tree, the header and the slices; None: too small to cut,
    or a log the sequential path is to judge."""
    store = await open_log_store(job.url, schema=job.schema, replay=False)
    try:
        count = await store.audit_count(replace(job.query, limit=1, after=None))
        if count < max(min_rows, 1) or count * _BULK < await store.size():
            return None
    finally:
        await store.close()
    try:
        view = SnapshotView(await read_bulk(job.url, schema=job.schema))
        tree = await proof_tree(view)
        header, _ = await collect_export(
            view, job.spec, [], wrapped_keys=_no_keys, wrap_key=job.wrap_key, tree=tree
        )
        slices = _slices(view, job.query.since_us, job.query.until_us, jobs)
    except LedgerError:  # the sequential path reports it
        return None
    return view, tree, header, slices


async def _no_keys(pseudonyms: Sequence[bytes]) -> Mapping[bytes, bytes]:
    return {}  # the header's export has no entry, so needs no key


def _slices(view: SnapshotView, since: int | None, until: int | None, parts: int) -> list[_Slice]:
    """``[since, until]`` cut at the times of leaves in it (:func:`_shares` of them), each
    cut time starting the next slice: together exactly the period, whatever the times. The
    leaves are searched as if their times rose with their indexes, which only makes the
    parts less even where they do not."""

    def recorded(index: int) -> int:
        return leaf_fields(view.leaf(index)).recorded_us

    first = 0 if since is None else bisect.bisect_left(range(view.size), since, key=recorded)
    end = view.size if until is None else bisect.bisect_right(range(view.size), until, key=recorded)
    cuts: list[int] = []
    for share in itertools.accumulate(_shares(parts)[:-1]):
        at = recorded(first + int((end - first) * share)) if end > first else None
        low = cuts[-1] if cuts else since
        if at is not None and (low is None or at > low) and (until is None or at <= until):
            cuts.append(at)
    starts: list[int | None] = [since, *cuts]
    ends: list[int | None] = [*(c - 1 for c in cuts), until]
    return list(zip(starts, ends, strict=True))


#: The command's work before the fork (the snapshot and the tree) over its rows' work, about
#: 0.13 s to 0.6 s for 50,000 rows (docs/audit.md, Speed).
_BEFORE = 0.2


def _shares(parts: int) -> list[float]:
    """The share of the rows each part gets, the first (this process's) less by the work it
    did before the fork, so that all end together: with ``b`` that work over the rows' and
    ``n`` parts, each worker's is ``(1 + b) / n`` and the first's ``(1 + b) / n - b``."""
    first = max((1 + _BEFORE) / parts - _BEFORE, 0.0)
    return [first] + [(1 - first) / (parts - 1)] * (parts - 1)


def _run_parts(
    shared: _Shared,
    header: ExportHeader,
    slices: list[_Slice],
    directory: Path,
    out: Path,
    *,
    tell: Callable[[int], object] | None,
) -> tuple[int, int] | None:
    """Fork a worker for each slice but the first, make the first here, straight into
    ``out`` after the header, then append the workers' parts in order as they end."""
    context = multiprocessing.get_context("fork")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for number, period in enumerate(slices[1:], start=1):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_part,
                args=(shared, period, directory / f"part-{number}", send),
                name=f"consentry-export-{number}",
                daemon=True,
            )
            process.start()
            send.close()  # the worker's end: EOF here when it ends without a word
            workers.append((process, receive))
        with out.open("r+b") as sink:
            sink.write(export_head(header, shared.job.fmt))
            try:
                outcome = _make_part(shared, slices[0], sink)
            except Exception:  # noqa: BLE001 - the sequential path says what it is
                return None
            outcomes = itertools.chain([outcome], (_outcome(end) for _, end in workers))
            rows = lines = 0
            last = -1
            for number, made in enumerate(outcomes):
                if made is None:
                    return None
                part_rows, part_lines, low, high = made
                if low >= 0:
                    if low <= last:  # this part's lines are not all after the last part's
                        return None
                    last = high
                rows, lines = rows + part_rows, lines + part_lines
                if number:
                    sink.flush()  # the bytes buffered before, then the kernel's copy
                    _append(sink.fileno(), directory / f"part-{number}")
                    (directory / f"part-{number}").unlink()
                if tell is not None:
                    tell(part_lines)
        return rows, lines
    finally:
        for worker, end in workers:  # each ended (killed if need be) and joined
            end.close()
            if worker.is_alive():
                worker.kill()
            worker.join()
            worker.close()


def _outcome(receive: Connection) -> _Outcome:
    try:
        sent: _Outcome = receive.recv()
    except EOFError:  # the worker ended without a word (killed)
        return None
    return sent


def _append(fd: int, part: Path) -> None:
    """The bytes of ``part`` appended at ``fd``'s position, copied by the kernel."""
    source = os.open(part, os.O_RDONLY)
    try:
        left = os.fstat(source).st_size
        while left > 0:
            copied = _copy(source, fd, left)
            if copied == 0:
                raise OSError("a part of the export shrank while it was copied")
            left -= copied
    finally:
        os.close(source)


def _copy(source: int, target: int, count: int) -> int:
    if hasattr(os, "copy_file_range"):
        with contextlib.suppress(OSError):  # not between these file systems: sendfile
            return os.copy_file_range(source, target, count)
    return os.sendfile(target, source, None, count)


# -- in a worker (and in this process, for the first part) -------------------------------------


@dataclass(frozen=True, slots=True)
class _Shared:
    """What a worker inherits by fork: the job, the snapshot and the checked tree."""

    job: PartsJob
    view: SnapshotView
    tree: ProofMaker


def _part(shared: _Shared, period: _Slice, path: Path, send: Connection) -> None:
    """A worker's whole life: its part written to ``path``, its outcome sent. Any failure is
    sent as None, without a trace on standard error (the sequential path then says what it
    is, and a trace could show a row's values)."""
    # The collector would walk the heap inherited from the parent (copy on write) to find no
    # cycle: the sequential export pauses it too (cli_reports._collector_paused).
    gc.freeze()
    gc.disable()
    outcome: _Outcome = None
    with contextlib.suppress(BaseException):  # reported as None; an interrupt ends it anyway
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as sink:
            outcome = _make_part(shared, period, sink)
    with contextlib.suppress(OSError):
        send.send(outcome)
    send.close()


def _make_part(shared: _Shared, period: _Slice, sink: BinaryIO) -> _Outcome:
    """The slice's lines written to ``sink``; what :data:`_Outcome` says of them."""
    job, view = shared.job, shared.view
    rows, header, entries = asyncio.run(_collect_part(shared, period))
    lines = write_entries(header, entries, sink, job.fmt)
    # A superset of the lines' indexes (the rows of the proved tree): parts whose rows do not
    # overlap have lines that do not.
    indexes = [r.index for r in rows if 0 <= r.index < view.size]
    return len(rows), lines, min(indexes, default=-1), max(indexes, default=-1)


async def _collect_part(
    shared: _Shared, period: _Slice
) -> tuple[list[AuditRow], ExportHeader, Iterator[ExportEntry]]:
    """The slice's index rows and lines (made lazily from what was read: the store is closed
    before they are)."""
    job = shared.job
    store = await open_log_store(job.url, schema=job.schema, replay=False)
    try:
        since, until = period
        rows = await all_rows(store, replace(job.query, since_us=since, until_us=until))
        header, entries = await collect_export(
            shared.view,
            job.spec,
            rows,
            wrapped_keys=store.audit_keys_get,
            wrap_key=job.wrap_key,
            tree=shared.tree,
        )
    finally:
        await store.close()
    return rows, header, entries
