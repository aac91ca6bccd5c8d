"""``verify_path`` (``verify_parallel``): checking an export's blocks in worker processes
gives the report the sequential verifier gives for the same file, for untouched and edited
exports (``export_edits``: characters changed, lines dropped, repeated, swapped, inserted from
other exports, the header's scope changed), NDJSON and CSV, LF and CRLF line ends, blocks
cut anywhere; a CSV record that spans a block's end (a quoted field) sends the whole file to
the sequential path, the lines told to the progress once; where the CSV reader stops (a bad
column line, a field over the CSV field size limit) the report stops as the sequential one
does; lines are read as ``open`` reads them (universal newlines). The file is the one opened
at the start: one put in its place mid-run is not read, a write into it raises ``OSError``;
a worker killed mid-run sends the file to the sequential path."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import verify_parallel
from middleware.audit.cli_reports import facts_opener
from middleware.audit.export import format_time
from middleware.audit.verify_export import ExportReport, verify_file
from tests.unit.audit.export_edits import edited
from tests.unit.audit.export_real import HOUR, REAL_POLICY, T0, real_exports

_POOL: list[tuple[str, dict[str, Any]]] = [(text, {}) for _, text in sorted(real_exports().items())]
_EDITED = edited(
    _POOL,
    times=[format_time(T0 + n * HOUR + d) for n in range(0, 60, 3) for d in (-1, 0, 1)],
    patients=["Patient/a", "Patient/b", "Patient/c"],
    agents=[f"Practitioner/pr-{n}" for n in range(4)],
)


@pytest.fixture
def sequential_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files ``verify_path`` handed to its sequential path."""
    calls: list[Path] = []
    sequential = verify_parallel._sequential

    def spy(raw: BinaryIO, *args: Any) -> ExportReport:
        calls.append(Path(raw.name))
        return sequential(raw, *args)

    monkeypatch.setattr(verify_parallel, "_sequential", spy)
    assert threading.active_count() == 1  # else verify_path would not fork
    return calls


def _sequential(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as lines:
        return verify_file(lines, REAL_POLICY, opener=facts_opener).to_json()


def _parallel(path: Path, block: int, count: verify_parallel.Count | None = None) -> dict[str, Any]:
    report = verify_parallel.verify_path(
        path, REAL_POLICY, opener=facts_opener, jobs=2, block=block, count=count
    )
    return report.to_json()


def _write(folder: Path, text: str, newline: str, name: str = "export") -> Path:
    path = folder / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("name", ["date-period", "access-a", "accounting-a-period", "user-1"])
def test_an_untouched_export_verifies_in_blocks(
    tmp_path: Path, sequential_calls: list[Path], name: str, fmt: str, newline: str
) -> None:
    path = _write(tmp_path, real_exports()[name, fmt], newline)
    for block in (256, 1000, 4096):
        parallel = _parallel(path, block)
        assert parallel["ok"], parallel["findings"]
        assert parallel == _sequential(path)
    assert sequential_calls == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_EDITED, newline=st.sampled_from(["\n", "\r\n"]), block=st.integers(64, 3000))
def test_an_edited_export_gets_the_sequential_report(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[str, dict[str, Any]],
    newline: str,
    block: int,
) -> None:
    path = _write(tmp_path_factory.mktemp("edited"), case[0], newline)
    assert _parallel(path, block) == _sequential(path)


@pytest.mark.parametrize("at", [2, 10, -6], ids=["first-record", "middle", "near-the-end"])
def test_a_quoted_field_across_blocks_is_verified_sequentially(
    tmp_path: Path, sequential_calls: list[Path], at: int
) -> None:
    """A CSV record whose quoted field runs over several lines swallows them (``csv.reader``);
    a block starting inside it would read them as records of their own."""
    lines = real_exports()["date-period", "csv"].splitlines(keepends=True)
    where = at % len(lines)
    lines[where] = 'x,"opened' + lines[where]
    lines[where + 4] = 'closed",y' + lines[where + 4]
    path = _write(tmp_path, "".join(lines), "\r\n")
    sequential = _sequential(path)
    assert not sequential["ok"]
    told: list[int] = []
    assert _parallel(path, 600, told.append) == sequential
    assert sequential_calls == [path]
    assert sum(told) == len(lines)  # each line told once, though read twice


def test_a_quoted_field_open_at_the_end_of_the_file_needs_no_second_pass(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    text = real_exports()["date-period", "csv"] + 'x,"never closed\nrow,1\n'
    path = _write(tmp_path, text, "\n")
    assert _parallel(path, 500) == _sequential(path)
    assert sequential_calls == []


def test_a_bad_column_line_stops_the_reading_as_before(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    lines = real_exports()["date-period", "csv"].splitlines(keepends=True)
    lines[1] = lines[1].replace("role", "rôle")
    path = _write(tmp_path, "".join(lines), "\n")
    parallel = _parallel(path, 300)
    assert [f["code"] for f in parallel["findings"]] == ["line-malformed"]
    assert parallel == _sequential(path)
    assert sequential_calls == []


@pytest.mark.parametrize("block", [300, 600, 1200, 2000])
def test_a_column_line_running_past_the_first_block_stops_the_reading_as_before(
    tmp_path: Path, sequential_calls: list[Path], block: int
) -> None:
    """The column line opens a quoted field closed five lines on: the sequential reader reads
    them as that one record, refuses it and stops; the first block's reader runs out inside
    it (and might have read on), so the file is read sequentially."""
    lines = real_exports()["date-period", "csv"].splitlines(keepends=True)
    lines[1] = '"' + lines[1]
    lines[6] = 'x"' + lines[6]
    path = _write(tmp_path, "".join(lines), "\n")
    sequential = _sequential(path)
    assert (sequential["lines"], sequential["rows"]) == (1, 0)
    assert _parallel(path, block) == sequential
    assert sequential_calls == [path]


@pytest.mark.parametrize("at", [1, 20, -2], ids=["column-line", "middle", "near-the-end"])
def test_a_field_over_the_csv_limit_is_a_finding_that_stops_the_reading(
    tmp_path: Path, sequential_calls: list[Path], at: int
) -> None:
    """``csv.reader`` raises ``csv.Error`` on a field longer than ``csv.field_size_limit()``;
    where that record ends is not known, so the reading stops there, on both paths."""
    lines = real_exports()["date-period", "csv"].splitlines(keepends=True)
    where = at % len(lines)
    lines[where] = lines[where].replace(",", "," + "A" * 140_000, 1)
    path = _write(tmp_path, "".join(lines), "\r\n")
    sequential = _sequential(path)
    assert sequential["lines"] == max(where - 2, 0) + 1  # the entry lines before it, and it
    [finding] = sequential["findings"]
    assert (finding["code"], finding["line"]) == ("line-malformed", where + 1)
    assert "field larger than field limit" in finding["message"]
    assert _parallel(path, 500) == sequential
    assert sequential_calls == []


def test_a_file_put_in_its_place_mid_run_is_not_read(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    """Every read is of the file opened at the start: an untouched export renamed over the
    edited one once the workers run does not make the edited one verify."""
    text = real_exports()["date-period", "ndjson"]
    lines = text.splitlines(keepends=True)
    lines[-3] = lines[-3].replace("Practitioner/pr-", "Practitioner/px-", 1)
    path = _write(tmp_path, "".join(lines), "\n")
    expected = _sequential(path)
    assert [f["code"] for f in expected["findings"]] == ["edited"]
    honest = _write(tmp_path, text, "\n", name="honest")

    def swap(lines: int) -> None:
        if honest.exists() and multiprocessing.active_children():
            os.replace(honest, path)

    assert _parallel(path, 200, swap) == expected
    assert not honest.exists()
    assert sequential_calls == []


def test_a_write_into_the_file_mid_run_raises(tmp_path: Path) -> None:
    """A write into the open file (its size or modification time differ after the run):
    ``OSError``, no report of bytes that changed while they were read."""
    text = real_exports()["date-period", "ndjson"]
    path = _write(tmp_path, text, "\n")
    os.utime(path, ns=(0, 0))  # a modification time the write below cannot keep
    at = text.rindex("Practitioner/pr-") + len("Practitioner/p")
    written: list[int] = []

    def write(lines: int) -> None:
        if not written and multiprocessing.active_children():
            with path.open("r+b") as file:
                written.append(file.seek(at))
                file.write(b"x")

    with pytest.raises(OSError, match="changed while it was verified"):
        _parallel(path, 200, write)
    assert written


def test_a_worker_killed_mid_run_leaves_the_sequential_report(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    """The pool breaks (``BrokenProcessPool``): the file is read sequentially, each line told
    to the progress once."""
    path = _write(tmp_path, real_exports()["date-period", "ndjson"], "\n")
    killed: list[int] = []
    told: list[int] = []

    earlier = {c.pid for c in multiprocessing.active_children()}

    def kill(lines: int) -> None:
        told.append(lines)
        # Only this run's workers: a child another test left alive is not the pool's.
        workers = [c for c in multiprocessing.active_children() if c.pid not in earlier]
        for child in workers[: 1 - len(killed)]:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)
            # Let the pool see the death before the other worker judges what is left:
            # otherwise a fast worker may finish every remaining block first and the pool
            # never breaks (this test's subject); that made the test flaky.
            while child.is_alive():
                time.sleep(0.005)
            time.sleep(0.3)

    assert _parallel(path, 200, kill) == _sequential(path)
    assert killed
    assert sequential_calls == [path]
    assert sum(told) == len(path.read_bytes().splitlines())
    assert multiprocessing.active_children() == []


def test_bytes_that_are_not_utf8_raise_what_the_sequential_reader_raises(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    data = real_exports()["date-period", "ndjson"].encode("utf-8")
    path = tmp_path / "export"
    path.write_bytes(data[: len(data) // 2] + b"\xff" + data[len(data) // 2 :])
    with pytest.raises(UnicodeDecodeError):
        _parallel(path, 300)
    assert sequential_calls == [path]


def test_a_small_file_or_one_job_is_verified_in_this_process(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    path = _write(tmp_path, real_exports()["date-period", "ndjson"], "\n")
    assert _parallel(path, path.stat().st_size) == _sequential(path)
    report = verify_parallel.verify_path(path, REAL_POLICY, opener=facts_opener, jobs=1)
    assert report.ok
    assert sequential_calls == [path, path]


@given(st.lists(st.sampled_from(["a", "\r", "\n", "\r\n", "é", "\u2028", "\x0b"]), max_size=40))
def test_lines_are_read_as_open_reads_them(parts: list[str]) -> None:
    """Universal newlines: ``\\r``, ``\\n`` and ``\\r\\n`` end a line, and nothing else does
    (not ``str.splitlines``' other separators); the reference is ``StringIO``'s reading."""
    text = "".join(parts)
    data = text.encode("utf-8")
    cut = data.rfind(b"\n") + 1  # the lines of a block are whole (it ends after an LF)
    assert verify_parallel._lines_of(data[:cut]) == list(
        io.StringIO(data[:cut].decode("utf-8"), newline=None)
    )


def test_a_file_of_one_long_header_line_has_no_blocks(
    tmp_path: Path, sequential_calls: list[Path]
) -> None:
    header = real_exports()["date-period", "ndjson"].splitlines()[0]
    path = _write(tmp_path, header + " " * 2000 + "\n", "\n")
    assert _parallel(path, 500) == _sequential(path)
    assert sequential_calls == []
