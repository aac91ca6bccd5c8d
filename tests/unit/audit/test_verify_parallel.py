"""verify_parallel: on several processes, the report is the one-process verifier's, field for
field (findings and their order, counts, scope, rules), whatever was done to the file; a
worker that dies fails the verification."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit import verify_parallel, verify_report
from middleware.audit.export import EntryOpening
from middleware.audit.export_read import HeaderError, read_header
from middleware.audit.export_read_csv import csv_head_ok, csv_records
from middleware.audit.row import AuditRow
from middleware.audit.verify_export import ExportReport, verify_file
from middleware.audit.verify_parallel import WorkerError, start_verify
from middleware.ledger.leaf import LeafFields
from tests.unit.audit.export_fixtures import POLICY, build_log, export, fake_opener
from tests.unit.audit.test_verify_export import (
    CSV_CASES,
    NDJSON_CASES,
    TRUNCATIONS,
    Lines,
    _csv,
    _ndjson,
)

JOBS = [2, 3, 5]


def _one(text: str, **kwargs: Any) -> ExportReport:
    return verify_file(io.StringIO(text), POLICY, opener=fake_opener, **kwargs)


def _many(text: str, jobs: int, **kwargs: Any) -> ExportReport:
    lines = io.StringIO(text).readlines()
    with start_verify(lines, POLICY, opener=fake_opener, jobs=jobs, min_lines=1, **kwargs) as run:
        assert (run.jobs > 1) == _readable(lines)  # the parts were really checked apart
        told: list[int] = []
        report = run.report(told.append)
    assert sum(told) == len(lines)  # the progress bar counts every line once
    return report


def _readable(lines: list[str]) -> bool:
    """Whether the header and a CSV's column line read, and there is more than one line after
    them (else one process checks the file)."""
    try:
        _, names = read_header(lines[0])
    except HeaderError:
        return False
    if not lines[0].startswith("#"):
        return len(lines) > 2
    read, head = next(csv_records(iter(lines[1:])), (0, None))
    return csv_head_ok(head, names) and len(lines) > 2 + read


def _same(text: str, jobs: int, **kwargs: Any) -> ExportReport:
    one = _one(text, **kwargs)
    many = _many(text, jobs, **kwargs)
    assert many.findings == one.findings
    assert many.to_json() == one.to_json()
    return one


# -- the tampered files of test_verify_export, NDJSON and CSV ------------------------------------


@pytest.mark.parametrize("jobs", JOBS)
@pytest.mark.parametrize(
    "edit", [case[0] for case in NDJSON_CASES + TRUNCATIONS], ids=lambda e: e.__qualname__
)
def test_each_ndjson_edit_reports_the_same(edit: Callable[[Lines], None], jobs: int) -> None:
    assert not _same(_ndjson(edit), jobs).ok


@pytest.mark.parametrize("jobs", JOBS)
@pytest.mark.parametrize("edit", [case[0] for case in CSV_CASES], ids=lambda e: e.__qualname__)
def test_each_csv_edit_reports_the_same(edit: Callable[[list[list[str]]], None], jobs: int) -> None:
    assert not _same(_csv(edit), jobs).ok


# -- a longer chain, cut and edited anywhere ------------------------------------------------------

LONG = build_log(60)
LONG_NDJSON = export(LONG, since_us=None, until_us=None)  # patient a: 40 lines, a tail
LONG_CSV = export(LONG, since_us=None, until_us=None, fmt="csv")


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("jobs", JOBS)
def test_an_untouched_export_reports_the_same(fmt: str, jobs: int) -> None:
    report = _same(LONG_CSV if fmt == "csv" else LONG_NDJSON, jobs)
    assert report.ok, report.findings
    assert report.scope["tail"] == "end-of-log"


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["drop", "repeat", "swap", "char", "blank"]),
        st.integers(1, 200),
        st.integers(0, 10_000),
        st.characters(min_codepoint=32, max_codepoint=126),
    ),
    max_size=4,
)


def _edited(text: str, edits: list[tuple[str, int, int, str]]) -> str:
    lines = text.splitlines(keepends=True)
    for what, at, other, char in edits:
        n = 1 + at % (len(lines) - 1)  # an entry line
        if what == "drop" and len(lines) > 2:
            del lines[n]
        elif what == "repeat":
            lines.insert(n, lines[n])
        elif what == "swap":
            m = 1 + other % (len(lines) - 1)
            lines[n], lines[m] = lines[m], lines[n]
        elif what == "blank":
            lines.insert(n, "\n")
        else:  # one character changed (a CSV quote may open a cell across lines)
            line = lines[n]
            i = other % max(1, len(line) - 1)
            lines[n] = line[:i] + char + line[i + 1 :]
    return "".join(lines)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["ndjson", "csv"]), st.sampled_from(JOBS), _EDITS)
def test_any_edit_reports_the_same(fmt: str, jobs: int, edits: Any) -> None:
    """Lines dropped, repeated, swapped, blank lines inserted, characters changed: the report
    on several processes is the one-process report."""
    text = _edited(LONG_CSV if fmt == "csv" else LONG_NDJSON, edits)
    try:
        one = _one(text)
    except csv.Error as exc:  # the CSV reader's own error: raised the same way
        with pytest.raises(csv.Error, match=str(exc)):
            _many(text, jobs)
        return
    assert _many(text, jobs).to_json() == one.to_json()


@pytest.mark.parametrize("jobs", JOBS)
@pytest.mark.parametrize("record", [1, 5, 12, 20, 33])
def test_a_csv_cell_across_lines_and_parts_reports_the_same(record: int, jobs: int) -> None:
    """A quoted cell holding newlines spans lines, so a part may start inside its record: the
    rest is read again from where the record ends."""
    first, _, rest = LONG_CSV.partition("\r\n")
    records = list(csv.reader(io.StringIO(rest)))
    records[record][2] = "an\nedited\ncell\n" * 5
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(records)
    report = _same(first + "\r\n" + out.getvalue(), jobs)
    assert [f.code for f in report.findings] == ["edited"]


# -- openings, rules, the findings' cap -------------------------------------------------------


@pytest.mark.parametrize("jobs", JOBS)
def test_lines_without_openings_and_other_lines_report_the_same(jobs: int) -> None:
    """Rows and 'other' lines stripped of their openings (as a shredded entry's), with and
    without the report's rule."""
    log = build_log(60, consents=frozenset({6, 12}))
    lines = [
        json.loads(line) for line in export(log, exclude=frozenset({6, 9, 12, 15})).splitlines()
    ]
    for line in lines[4::5]:
        for key in ("salt", "evidence", "key"):
            line.pop(key, None)
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    _same(text, jobs)
    _same(text, jobs, rules={"access-report": lambda row: row.index % 2 == 0})


def test_the_findings_cap_keeps_the_same_first_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_report, "MAX_FINDINGS", 5)
    lines = LONG_NDJSON.splitlines(keepends=True)
    text = "".join([lines[0], *reversed(lines[1:])])  # every line out of order
    report = _same(text, 3)
    assert len(report.findings) == 5
    assert report.omitted > 0


def test_without_an_opener_the_report_is_the_same() -> None:
    one = verify_file(io.StringIO(LONG_NDJSON), POLICY, opener=None)
    lines = io.StringIO(LONG_NDJSON).readlines()
    with start_verify(lines, POLICY, opener=None, jobs=2, min_lines=1) as run:
        assert run.report().to_json() == one.to_json()


# -- when it runs one process, and failing ----------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "min_lines", "expected"),
    [(1, 1, 1), (2, 1, 2), (4, 1, 4), (2, 10_000, 1), (100, 1, 8)],
    ids=["jobs-1", "jobs-2", "jobs-4", "short-file", "capped"],
)
def test_how_many_processes(jobs: int, min_lines: int, expected: int) -> None:
    lines = LONG_NDJSON.splitlines(keepends=True)
    with start_verify(lines, POLICY, opener=fake_opener, jobs=jobs, min_lines=min_lines) as run:
        assert run.jobs == expected
        assert run.report().ok


def test_with_another_thread_alive_one_process_does_it() -> None:
    """A fork copies a thread's locks but not the thread: no fork while one runs."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        lines = LONG_NDJSON.splitlines(keepends=True)
        with start_verify(lines, POLICY, opener=fake_opener, jobs=2, min_lines=1) as run:
            assert run.jobs == 1
            assert run.report().ok
    finally:
        stop.set()
        thread.join()


def test_a_receipt_or_a_bad_header_is_verified_by_one_process() -> None:
    lines = ["not a header\n", *LONG_NDJSON.splitlines(keepends=True)[1:]]
    with start_verify(lines, POLICY, opener=fake_opener, jobs=2, min_lines=1) as run:
        assert run.jobs == 1
        assert run.report().to_json() == _one("".join(lines)).to_json()


def test_a_worker_that_dies_fails_the_verification() -> None:
    """Never a report (let alone ok) without every part's results."""
    parent = os.getpid()

    def dying(opening: EntryOpening, leaf: LeafFields, index: int) -> AuditRow:
        if os.getpid() != parent:
            os._exit(9)
        return fake_opener(opening, leaf, index)

    lines = LONG_NDJSON.splitlines(keepends=True)
    with (
        start_verify(lines, POLICY, opener=dying, jobs=2, min_lines=1) as run,
        pytest.raises(WorkerError, match="exit code 9"),
    ):
        run.report()


def test_an_error_in_a_worker_is_raised_in_its_turn() -> None:
    parent = os.getpid()

    def failing(opening: EntryOpening, leaf: LeafFields, index: int) -> AuditRow:
        if os.getpid() != parent:
            raise KeyError("unexpected")
        return fake_opener(opening, leaf, index)

    lines = LONG_NDJSON.splitlines(keepends=True)
    with (
        start_verify(lines, POLICY, opener=failing, jobs=2, min_lines=1) as run,
        pytest.raises(KeyError, match="unexpected"),
    ):
        run.report()


class _Unpicklable(RuntimeError):
    """An exception that pickles but does not unpickle: unpickling calls ``__init__`` with
    its message alone (as for ``JsonTooDeep``): TypeError."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"nests {depth} levels, more than {limit}")


@pytest.mark.parametrize("checked", [True, False], ids=["sent-as-worker-error", "read-fails"])
def test_an_error_that_does_not_unpickle_fails_the_verification(
    monkeypatch: pytest.MonkeyPatch, checked: bool
) -> None:
    """A worker's exception that would not unpickle fails the verification with WorkerError
    (the command's exit status 2), never a TypeError: the worker sends it as a WorkerError
    naming it, and when it does not (``checked=False``: no round trip checked) the parent's
    failed read is one."""
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(_Unpicklable(300, 256)))
    parent = os.getpid()

    def deep(opening: EntryOpening, leaf: LeafFields, index: int) -> AuditRow:
        if os.getpid() != parent:
            raise _Unpicklable(300, 256)
        return fake_opener(opening, leaf, index)

    if not checked:
        monkeypatch.setattr(verify_parallel, "_round_trips", lambda error: True)
    lines = LONG_NDJSON.splitlines(keepends=True)
    expected = "failed \\(_Unpicklable" if checked else "could not be read \\(TypeError"
    with (
        start_verify(lines, POLICY, opener=deep, jobs=2, min_lines=1) as run,
        pytest.raises(WorkerError, match=f"{expected}.*the file is not verified"),
    ):
        run.report()


# -- a part of a CSV file read on its own ------------------------------------------------------

_CSV_LINES = ["a\n", '"b\n', 'c"\n', "d\n"]


@pytest.mark.parametrize(
    ("read", "stop", "expected"),
    [
        (0, 0, []),
        (0, 1, [(1, ["a"])]),
        (0, 2, [(1, ["a"]), (3, ["b\nc"])]),  # the record begun at line 2 read whole
        (0, 3, [(1, ["a"]), (3, ["b\nc"])]),  # none begins at line 3
        (0, 4, [(1, ["a"]), (3, ["b\nc"]), (4, ["d"])]),
        (1, 2, [(3, ["b\nc"])]),  # from line 2 on, counted from 1
        (3, 4, [(4, ["d"])]),
    ],
    ids=["nothing", "one", "spanning", "inside", "all", "from-2", "from-4"],
)
def test_csv_records_of_a_part(read: int, stop: int, expected: list[Any]) -> None:
    """csv_records(read=, stop=): lines counted from ``read``; no record begins after line
    ``stop``, and one begun before it is read to its end."""
    assert list(csv_records(iter(_CSV_LINES[read:]), read=read, stop=stop)) == expected
