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
of ``recorded_us`` per job, of about as many leaves each. Worker processes, forked with the snapshot
and the tree (nothing is sent to them), each make a slice's part (``export_part``: their own
read-only store, the slice's index rows, the lines collected and checked as always, the
encoded bytes) in a file of their own. This process makes the first slice's lines itself,
straight into the output after the header, then appends the workers' parts in order
(``os.copy_file_range``).

The slices are by time and the lines by index, so the parts are the sequential file's only
when each part's indexes all come after the previous part's; a log's times rise with its
indexes, but a clock stepped back can break that. Each worker reports its lowest and highest
index, and when two parts overlap (or a worker fails in any way: a forged leaf, a store it
cannot open) nothing is written here and the caller makes the file sequentially instead,
which writes (or raises) what it always did. Exports of fewer than :data:`PARALLEL_ROWS`
rows, or of less than an eighth of the log, are left to the sequential path, as is a
process with other threads alive (a fork copies their locks held).

No part has a name: each is a file this process opens without one (``O_TMPFILE``, or made
and unlinked at once where that flag is not supported), 0600, in the output's directory,
before it forks the worker that writes it; the worker writes the descriptor it inherited,
and this process copies from its own. A part so opened is gone, disk space included, once
the last process holding it ends, however it ends. Until then the parts take about as much
disk again as the export (the output and the parts side by side); a part that cannot be
appended (``ENOSPC``, any ``OSError``) leaves the file to the sequential path, which needs
the output's room only. The workers cannot outlive this process (``export_signals``): each
dies with it (Linux's ``PR_SET_PDEATHSIG``, SIGKILL), and while workers run, SIGTERM and
SIGHUP are an interrupt here, as Ctrl-C is, so every worker is ended and joined on every
path, an error or an interrupt included (the caller then re-delivers the signal).

Never more processes than :func:`usable_cores` nor than one per ``min_rows / 2`` rows: more
would only add forks and page copies (a worker that waits for a core gains nothing).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import multiprocessing
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

from middleware.audit.export import ExportHeader
from middleware.audit.export_collect import SnapshotView, collect_export, proof_tree
from middleware.audit.export_part import Outcome, PartsJob, Shared, Slice, make_part, part_worker
from middleware.audit.export_signals import Terminated, blocked, terminations_interrupt
from middleware.audit.export_write import export_head
from middleware.audit.proofs import ProofMaker
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import leaf_fields
from middleware.storage.ledger_bulk import read_bulk
from middleware.storage.ledger_open import open_log_store

__all__ = ["PARALLEL_ROWS", "PartsJob", "Terminated", "export_in_parts", "usable_cores"]

#: Exports of fewer rows are made sequentially: forking and reading the whole log would cost
#: more than the second core saves.
PARALLEL_ROWS = 20_000
#: An export of less than 1/_BULK of the log reads entry by entry (``cli_reports._BULK``).
_BULK = 8


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
    cores: int | None = None,
    min_rows: int = PARALLEL_ROWS,
    tell: Callable[[int], object] | None = None,
) -> tuple[int, int] | None:
    """Write ``job``'s export to ``out`` (an empty private file) with up to ``jobs`` worker
    processes (None: one per core), no more than ``cores`` (None: :func:`usable_cores`) nor
    than one per ``min_rows / 2`` rows; ``tell`` is told each part's lines as it is
    appended. Returns ``(rows, lines)``, or None when the file is to be made sequentially
    (module docstring), ``out`` then holding anything or nothing. SIGTERM or SIGHUP meanwhile
    raises :class:`Terminated` once every worker is ended."""
    cores = usable_cores() if cores is None else cores
    jobs = min(cores if jobs is None else jobs, cores)
    if (
        jobs < 2
        or job.query.patient is not None
        or job.spec.pseudonym is not None
        or threading.active_count() > 1
        or threading.current_thread() is not threading.main_thread()  # signal handlers
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return None
    with terminations_interrupt():
        prepared = asyncio.run(_prepare(job, jobs, min_rows))
        if prepared is None:
            return None
        view, tree, header, slices = prepared
        return _run_parts(Shared(job, view, tree), header, slices, out, tell=tell)


# -- in this process ---------------------------------------------------------------------------


async def _prepare(
    job: PartsJob, jobs: int, min_rows: int
) -> tuple[SnapshotView, ProofMaker, ExportHeader, list[Slice]] | None:
    """The snapshot, the checked tree, the header and the slices; None: too small to cut,
    or a log the sequential path is to judge."""
    store = await open_log_store(job.url, schema=job.schema, replay=False)
    try:
        count = await store.audit_count(replace(job.query, limit=1, after=None))
        if count < max(min_rows, 1) or count * _BULK < await store.size():
            return None
        if min_rows > 0:  # a part of min_rows / 2 rows at least
            jobs = min(jobs, max(2, 2 * count // min_rows))
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


def _slices(view: SnapshotView, since: int | None, until: int | None, parts: int) -> list[Slice]:
    """``[since, until]`` cut at the times of leaves spread evenly over the leaves in it,
    each cut time starting the next slice: together exactly the period, whatever the times.
    The leaves are searched as if their times rose with their indexes, which only makes the
    parts less even where they do not. The parts are even: the work this process did before
    the fork delays no part, and its own part and a worker's cost about the same a row (each
    process copies the pages of the snapshot it touches)."""

    def recorded(index: int) -> int:
        return leaf_fields(view.leaf(index)).recorded_us

    first = 0 if since is None else bisect.bisect_left(range(view.size), since, key=recorded)
    end = view.size if until is None else bisect.bisect_right(range(view.size), until, key=recorded)
    cuts: list[int] = []
    for k in range(1, parts):
        at = recorded(first + (end - first) * k // parts) if end > first else None
        low = cuts[-1] if cuts else since
        if at is not None and (low is None or at > low) and (until is None or at <= until):
            cuts.append(at)
    starts: list[int | None] = [since, *cuts]
    ends: list[int | None] = [*(c - 1 for c in cuts), until]
    return list(zip(starts, ends, strict=True))


def _run_parts(
    shared: Shared,
    header: ExportHeader,
    slices: list[Slice],
    out: Path,
    *,
    tell: Callable[[int], object] | None,
) -> tuple[int, int] | None:
    """Fork a worker for each slice but the first, each with its part's file opened here
    first; make the first here, straight into ``out`` after the header, then append the
    workers' parts in order as they end."""
    context = multiprocessing.get_context("fork")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    parts: list[int] = []
    try:
        with blocked():  # no SIGTERM between a fork and the worker's own dispositions
            for number, period in enumerate(slices[1:], start=1):
                parts.append(_nameless(out.parent))
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=part_worker,
                    args=(shared, period, parts[-1], send, os.getpid()),
                    name=f"consentry-export-{number}",
                    daemon=True,
                )
                workers.append((process, receive))
                process.start()
                send.close()  # the worker's end: EOF here when it ends without a word
        try:
            return _join(
                shared, header, slices[0], workers=workers, parts=parts, out=out, tell=tell
            )
        except OSError:  # ENOSPC or any: the sequential path needs only the output's room
            return None
    finally:
        for worker, end in workers:  # each ended (killed if need be) and joined
            end.close()
            if worker.pid is None:  # not started
                continue
            if worker.is_alive():
                worker.kill()
            worker.join()
            worker.close()
        for fd in parts:  # its disk freed once no worker holds it either
            os.close(fd)


def _join(
    shared: Shared,
    header: ExportHeader,
    first: Slice,
    *,
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]],
    parts: list[int],
    out: Path,
    tell: Callable[[int], object] | None,
) -> tuple[int, int] | None:
    """The header and the first slice's lines written to ``out``, then each worker's part
    appended as it ends; None at the first part that fails or overlaps the one before."""
    with out.open("r+b") as sink:
        sink.write(export_head(header, shared.job.fmt))
        try:
            outcome = make_part(shared, first, sink)
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
                _append(sink.fileno(), parts[number - 1])
            if tell is not None:
                tell(part_lines)
    return rows, lines


def _nameless(directory: Path) -> int:
    """A new file in ``directory`` (the output's file system: the kernel can copy within it),
    0600, open for reading and writing, that has no name (``tempfile.TemporaryFile``:
    ``O_TMPFILE`` where the file system supports it, else made and unlinked at once)."""
    made = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - its descriptor is kept
    fd = os.dup(made.fileno())
    made.close()
    return fd


def _outcome(receive: Connection) -> Outcome:
    try:
        sent: Outcome = receive.recv()
    except EOFError:  # the worker ended without a word (killed)
        return None
    return sent


def _append(fd: int, part: int) -> None:
    """The bytes of the file open at ``part``, from its start, appended at ``fd``'s position,
    copied by the kernel."""
    size = os.fstat(part).st_size
    offset = 0
    while offset < size:
        copied = _copy(part, fd, offset, size - offset)
        if copied == 0:
            raise OSError("a part of the export shrank while it was copied")
        offset += copied


def _copy(source: int, target: int, offset: int, count: int) -> int:
    if hasattr(os, "copy_file_range"):
        with contextlib.suppress(OSError):  # not between these file systems: sendfile
            return os.copy_file_range(source, target, count, offset)
    return os.sendfile(target, source, offset, count)
