"""Verifying an export file on several cores: :func:`verify_path`, the same report as
:func:`~middleware.audit.verify_export.verify_file` of the file's text, sooner.

Why it can be split: an export's lines are independent but for their order. Each ``row``
line's checks (the leaf, its RFC 9162 §2.1.3.2 inclusion proof against the checkpoint, the
commitment, the opening, the columns, the scope, the report's rule) need only the line and
the header, and :meth:`ExportChecker.judge <middleware.audit.export_check.ExportChecker.judge>`
makes them without changing anything that matters (module ``export_fast``). What needs the
lines in order (ascending indexes, the pseudonym chain and its end, the counts, and the full
path of any line the fast path does not pass, which reports findings in file order) is
:meth:`~middleware.audit.export_check.ExportChecker.apply`, about 0.3 µs a line.

How: the file is cut into blocks of whole lines, each cut just after a ``\\n`` byte (so no
``\\r\\n`` pair and no UTF-8 sequence is cut), and each block is decoded as the sequential
reader decodes the file (UTF-8, universal newlines). Worker processes, forked with the
checker made from the header, judge blocks; this process applies their verdicts in file
order, each line numbered by the lines before its block. Nothing is trusted from a worker
that this process could not have computed itself: a worker runs the same code on the same
bytes. A CSV block without a quote (each line one record) is judged by
:meth:`~middleware.audit.export_check.ExportChecker.judge_plain` (``export_fast_csv``), the
same verdicts as ``judge`` of its lines.

A CSV record may span lines (a quoted field), so a block's records are the file's only when
the block starts at a record. The first block does; by induction the next one does when the
block before it ended outside a quoted field (its CSV reader never ran out of lines inside
a record). Where the reader stops (a finding after which it reads nothing, ``Stop``: a bad
column line, a record the CSV reader refuses) the verdicts stop too. When a block other than
the last ends inside a record or stops after running out of lines (it might have read on),
or judging any block raises (a byte that is not UTF-8, a worker killed...), the whole file
is verified again on the sequential path, which reports (or raises) what it always did; the
lines it reads are told to ``count`` only past those told already. Files under two blocks,
receipts, exports without a trusted checkpoint or an opener (no fast path), and a process
with other threads alive (a fork copies their locks held) are verified sequentially.

The file is opened once: its size is that open file's, and every read (the header, the
blocks' ends, the workers' ``pread`` of the inherited descriptor, the sequential path) is of
it, so a file put in its place (a rename) mid-run is not read. A write into it is: when its
size or modification time differ after the run, :func:`verify_path` raises ``OSError``
rather than report on bytes that changed while they were read.
"""

from __future__ import annotations

import gc
import io
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from middleware.audit.export_check import ExportChecker, RowOpener, Verdict
from middleware.audit.export_fast_csv import NotPlain, plain_lines
from middleware.audit.export_read_csv import Stop
from middleware.audit.verify_export import begin_export, verify_file
from middleware.audit.verify_report import ExportReport
from middleware.ledger.leaf import LeafFields
from middleware.ledger.receipt import TLOG_PROOF_HEADER
from middleware.ledger.trust import TrustPolicy

__all__ = ["BLOCK_BYTES", "verify_path"]

#: Bytes a block holds (about 2,000 lines of an export): big enough that sending it and its
#: verdicts costs little beside judging it, small enough that the workers start at once.
BLOCK_BYTES = 1 << 22
#: Counts lines the sequential path has read (``Progress.update``).
Count = Callable[[int], None]

#: What a worker judges a block with: the checker made from the header, and the descriptor of
#: the file the parent opened, both inherited by fork.
_checker: ExportChecker | None = None
_fd = -1


def verify_path(
    path: Path,
    policy: TrustPolicy,
    *,
    opener: RowOpener | None,
    jobs: int | None = None,
    block: int = BLOCK_BYTES,
    count: Count | None = None,
) -> ExportReport:
    """Verify the export (or receipt) at ``path`` against ``policy`` with up to ``jobs``
    worker processes (None: one per core this process may use; 1: none), blocks of about
    ``block`` bytes; ``count`` is told the lines read as they are. The report is the one
    ``verify_file`` makes of the file's text (module docstring); OSError when the file was
    written to meanwhile."""
    tell = _Once(count or _ignore)
    jobs = _cores() if jobs is None else jobs
    with path.open("rb") as raw:
        before = os.fstat(raw.fileno())
        report = _verify(
            raw, before.st_size, policy, opener=opener, jobs=jobs, block=block, tell=tell
        )
        after = os.fstat(raw.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise OSError(f"{path} changed while it was verified")
    return report


def _verify(
    raw: BinaryIO,
    size: int,
    policy: TrustPolicy,
    *,
    opener: RowOpener | None,
    jobs: int,
    block: int,
    tell: _Once,
) -> ExportReport:
    """:func:`verify_path` of the open file ``raw`` of ``size`` bytes."""
    if (
        jobs < 2
        or size < 2 * block
        or threading.active_count() > 1
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return _sequential(raw, policy, opener, tell)
    heading = _lines_of(raw.readline())
    bounds = _blocks(raw, raw.tell(), size, block)
    if len(heading) != 1 or heading[0].rstrip("\n") == TLOG_PROOF_HEADER:
        return _sequential(raw, policy, opener, tell)  # a receipt, or a lone CR in line 1
    report, check = begin_export(heading[0], policy, opener=opener)
    if check is None:  # the header is unusable: nothing else is read (verify_export)
        tell(1)
        return report
    if check.proofs is None or check.opener is None:  # no fast path to share out
        return _sequential(raw, policy, opener, tell)
    tell(1)
    fd, jobs = raw.fileno(), min(jobs, len(bounds))
    if bounds and not _in_parallel(check, fd, bounds, jobs=jobs, tell=tell):
        tell.again()
        return _sequential(raw, policy, opener, tell)
    check.finish()
    return report


def _blocks(raw: BinaryIO, start: int, size: int, block: int) -> list[tuple[int, int]]:
    """The byte ranges of the blocks from ``start``: each ends just after the first ``\n``
    at or after ``block`` bytes from its start (or at the file's end). Reads a line a block."""
    bounds = []
    while start < size:
        raw.seek(start + block - 1)
        end = min(size, start + block - 1 + len(raw.readline()))
        bounds.append((start, end))
        start = end
    return bounds


def _in_parallel(
    check: ExportChecker, fd: int, bounds: list[tuple[int, int]], *, jobs: int, tell: Count
) -> bool:
    """Judge the blocks at ``bounds`` of the open file ``fd`` on ``jobs`` processes and apply
    the verdicts in order; False when the file must be verified sequentially instead (module
    docstring), the report then being unfinished."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_install, initargs=(check, fd)
    ) as pool:
        # At most two blocks a worker in flight: the verdicts waiting stay few (memory).
        ahead = 2 * jobs
        futures = deque(
            pool.submit(_judge, s, e, n == 0) for n, (s, e) in enumerate(bounds[:ahead])
        )
        before = 0  # the first block's verdicts carry their file line numbers already
        try:
            for n in range(len(bounds)):
                lines, verdicts, clean, stopped = futures.popleft().result()
                if n + ahead < len(bounds):
                    futures.append(pool.submit(_judge, *bounds[n + ahead], False))
                if not clean and n + 1 < len(bounds):  # the next block starts inside a record
                    pool.shutdown(cancel_futures=True)
                    return False
                check.apply(_verdicts(verdicts, before))
                tell(lines)
                if stopped:  # the sequential reader stops here too (export_read_csv.Stop)
                    pool.shutdown(cancel_futures=True)
                    return True
                before = before + lines if before else 1 + lines
        except Exception:  # noqa: BLE001 - any failure: the sequential path says what it is
            pool.shutdown(cancel_futures=True)
            return False
    return True


def _verdicts(sent: list[_Sent], before: int) -> Iterator[tuple[int, Verdict]]:
    """The verdicts as a worker sent them (:data:`_Sent`), each line numbered in the file."""
    for item in sent:
        if len(item) == 3:
            number, index, fields = item
            yield before + number, (index, _new_fields(LeafFields, fields))
        else:
            yield before + item[0], item[1]


# -- in a worker -----------------------------------------------------------------------------

#: A verdict as sent back: a passed row as ``(number, index, the leaf's fields as a plain
#: tuple)`` (pickled in a third of the time of a ``LeafFields``), any other as judged.
_Sent = tuple[int, int, tuple[Any, ...]] | tuple[int, Verdict]
#: A judged block: its lines, its lines' verdicts, whether its records are the file's (it
#: ended outside a CSV record, or the reader stopped before its end), and whether the reader
#: stopped (its last verdict a ``Stop``).
_Judged = tuple[int, list[_Sent], bool, bool]
#: ``LeafFields`` from a tuple, without its generated ``__new__`` (``leaf._new_fields``).
_new_fields = tuple.__new__


def _install(check: ExportChecker, fd: int) -> None:
    global _checker, _fd
    _checker, _fd = check, fd
    # The collector would walk the heap inherited from the parent, writing to every page of it
    # (copy on write); nothing a block makes outlives it but its verdicts, which hold no cycle.
    gc.freeze()
    gc.disable()


def _judge(start: int, end: int, first: bool) -> _Judged:
    """The verdicts of the file's bytes ``start`` to ``end`` (whole lines; ``first``: the
    block after the header line, numbered as the file's lines, else numbered from 1). The
    worker reads them itself, from the parent's open file: sending them would cost as much as
    reading them."""
    check = _checker
    if check is None:
        raise RuntimeError("the worker has no checker")
    data = os.pread(_fd, end - start, start)
    if len(data) != end - start:
        raise OSError("the file changed while it was verified")
    plain = plain_lines(data) if check.escaped else None
    if plain is not None:  # no quoted field: no record runs past a line, each line is one
        try:
            sent = _sent(check.judge_plain(plain, part=not first))
            read = plain.count()
        except NotPlain:  # a line it does not read: the whole block line by line, below
            pass
        else:
            return read, sent, True, bool(sent) and isinstance(sent[-1][-1], Stop)
    lines = _lines_of(data)
    # Without a quote a CSV block has no quoted field: each line is a record (csv_records).
    counted = _Ends(iter(lines)) if check.escaped and (first or b'"' in data) else None
    judged = check.judge(lines if counted is None else counted, part=not first)
    sent = _sent(judged)
    stopped = bool(sent) and isinstance(sent[-1][-1], Stop)
    if counted is None:  # no quoted field: no record runs past a line
        return len(lines), sent, True, stopped
    if stopped:  # read as the file's only if the reader never ran out of the block's lines
        return len(lines), sent, counted.ends == 0, True
    # Ran out once (the loop's end): every record ended in the block. Twice: a CSV reader ran
    # out inside a quoted field first.
    return len(lines), sent, counted.ends < 2, False


def _sent(judged: Iterable[tuple[int, Verdict]]) -> list[_Sent]:
    """The verdicts as sent back (:data:`_Sent`)."""
    return [(n, v[0], tuple(v[1])) if type(v) is tuple else (n, v) for n, v in judged]


class _Ends:
    """Lines, counting the times they ran out (a ``csv.reader`` and then the loop over
    records may each ask past the last)."""

    __slots__ = ("ends", "lines")

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.ends = 0

    def __iter__(self) -> _Ends:
        return self

    def __next__(self) -> str:
        for line in self.lines:
            return line
        self.ends += 1
        raise StopIteration


# -- the sequential path ---------------------------------------------------------------------


def _sequential(
    raw: BinaryIO, policy: TrustPolicy, opener: RowOpener | None, tell: Count
) -> ExportReport:
    """``verify_file`` of the open file ``raw`` from its start, read as ``open`` reads it."""
    # The descriptor's own offset: a buffered seek may stay inside the buffer, not moving it.
    os.lseek(raw.fileno(), 0, os.SEEK_SET)
    with open(raw.fileno(), encoding="utf-8", closefd=False) as lines:
        return verify_file(_counted(lines, tell), policy, opener=opener)


def _counted(source: Iterator[str], tell: Count) -> Iterator[str]:
    """The lines of ``source``, told to ``tell`` 256 at a time (the rest at the end)."""
    counted = 0
    for counted, line in enumerate(source, start=1):
        if not counted & 0xFF:
            tell(0x100)
        yield line
    tell(counted & 0xFF)


class _Once:
    """Tells ``tell`` each line once: after :meth:`again` (a second reading, from the file's
    start), only the lines past those told before."""

    __slots__ = ("read", "tell", "told")

    def __init__(self, tell: Count) -> None:
        self.tell = tell
        self.read = self.told = 0

    def __call__(self, lines: int) -> None:
        self.read += lines
        if self.read > self.told:
            self.tell(self.read - self.told)
            self.told = self.read

    def again(self) -> None:
        self.read = 0


def _lines_of(data: bytes) -> list[str]:
    """The lines of ``data`` (whole lines) as the sequential reader reads them: UTF-8 (strict),
    universal newlines (``open``'s default). Unless a carriage return stands alone, that is the
    UTF-8 text of each line cut after its ``\n`` (CRLF read as LF), a third of the cost of a
    text wrapper."""
    if b"\r" not in data:
        return [line.decode("utf-8") for line in io.BytesIO(data)]
    lines = []
    for line in io.BytesIO(data):  # a CSV export's records end in CRLF
        if line.endswith(b"\r\n") and line.find(b"\r", 0, -2) < 0:
            lines.append(line[:-2].decode("utf-8") + "\n")
        elif b"\r" in line:  # a CR that does not end a line with LF ends a line there
            return list(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        else:
            lines.append(line.decode("utf-8"))
    return lines


def _cores() -> int:
    """The cores this process may run on (all of the machine's where that is not known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity call
        return os.cpu_count() or 1


def _ignore(lines: int) -> None:
    pass
