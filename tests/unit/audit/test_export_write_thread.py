"""The export writers write a binary stream from a thread of their own (export_write._Writer):
every chunk in order, a failed write raised to the caller, an error of the lines raised as it
is, and no thread left behind either way."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from middleware.audit.export import ExportEntry, ExportHeader
from middleware.audit.export_write import _CHUNK, write_csv, write_ndjson

HEADER = ExportHeader(report="date-range", checkpoint="c", origin="o", columns=("a",))
WRITERS = pytest.mark.parametrize("write", [write_ndjson, write_csv], ids=["ndjson", "csv"])


class FailingSink(io.BytesIO):
    """A binary stream whose ``fail_at``-th write (0: the header) raises."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.writes = fail_at, 0

    def write(self, data: Any) -> int:
        self.writes += 1
        if self.writes > self.fail_at:
            raise OSError("disk full")
        return super().write(data)


def _entries(count: int) -> Iterator[ExportEntry]:
    return (ExportEntry("tail", i, b"l", b"p") for i in range(count))


@WRITERS
def test_the_chunks_are_written_in_order_from_another_thread(write: Any) -> None:
    threads = threading.active_count()
    out, text = io.BytesIO(), io.StringIO()
    assert write(HEADER, _entries(20_000), out) == 20_000
    assert write(HEADER, _entries(20_000), text) == 20_000  # a text stream: the same text
    assert out.getvalue() == text.getvalue().encode("utf-8")
    assert threading.active_count() == threads


CHUNKS = 5  # chunks of _CHUNK lines after the header, each one write


def _head_lines(write: Any) -> int:
    """The lines ``write`` writes before the entries (its first write)."""
    out = io.BytesIO()
    write(HEADER, _entries(0), out)
    return out.getvalue().count(b"\n")


@WRITERS
@pytest.mark.parametrize("fail_at", [1, 2, CHUNKS], ids=["first", "second", "last"])
def test_a_failed_write_is_raised_to_the_caller(write: Any, fail_at: int) -> None:
    """CHUNKS chunks of _CHUNK lines after the header; the write of chunk ``fail_at`` fails
    (the last: raised when the writer ends, no chunk put after it). The chunks before it are
    written, none after it is tried."""
    threads = threading.active_count()
    sink = FailingSink(fail_at)
    with pytest.raises(OSError, match="disk full"):
        write(HEADER, _entries(CHUNKS * _CHUNK), sink)
    assert threading.active_count() == threads
    assert sink.writes == fail_at + 1  # the header's write, then one a chunk
    assert sink.getvalue().count(b"\n") == _head_lines(write) + (fail_at - 1) * _CHUNK


@WRITERS
def test_an_error_from_the_lines_is_the_caller_s(write: Any) -> None:
    """An error from the lines (a check failing as they are made) is raised as it is, after
    the thread has ended; nothing after it is written."""
    threads = threading.active_count()

    def failing() -> Iterator[ExportEntry]:
        yield from _entries(_CHUNK * 3)
        raise ValueError("a leaf is malformed")

    out = io.BytesIO()
    with pytest.raises(ValueError, match="malformed"):
        write(HEADER, failing(), out)
    assert threading.active_count() == threads
    assert out.getvalue().count(b"\n") <= _CHUNK * 3 + _head_lines(write)
