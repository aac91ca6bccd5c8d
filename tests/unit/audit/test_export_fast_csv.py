"""The CSV block fast path (``export_fast_csv``, taken by ``verify_parallel``'s workers for a
block without a quote) gives exactly the verdicts of the line-by-line path
(``ExportChecker.judge`` of the lines as ``open`` reads them): on untouched and edited CSV
exports made by the CLI (``export_edits``), their characters further mutated (quotes, commas,
backslashes, carriage returns, NULs, formula characters, other digits), LF and CRLF line
ends, from the column line or from any later line. ``plain_lines`` is the lines ``open``
reads, each a record ``csv.reader`` splits at its commas, and None for a block it cannot
read so; ``joined_same`` answers what ``csv_same`` answers of the cells split. An untouched
export's rows all pass on the fast path (none left to the slow one)."""

from __future__ import annotations

import csv
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import export_check
from middleware.audit.cli_reports import facts_opener
from middleware.audit.export import format_time
from middleware.audit.export_check import ExportChecker
from middleware.audit.export_fast import csv_same
from middleware.audit.export_fast_csv import joined_same, plain_lines
from middleware.audit.export_read_csv import csv_part
from middleware.audit.report_csv import csv_escape
from middleware.audit.verify_export import begin_export
from middleware.audit.verify_parallel import _lines_of
from tests.unit.audit.export_edits import edited
from tests.unit.audit.export_real import HOUR, REAL_POLICY, T0, real_exports

_CSV: list[tuple[str, dict[str, Any]]] = [
    (text, {}) for (_, fmt), text in sorted(real_exports().items()) if fmt == "csv"
]
_EDITED = edited(
    _CSV,
    times=[format_time(T0 + n * HOUR + d) for n in range(0, 60, 3) for d in (-1, 0, 1)],
    patients=["Patient/a", "Patient/b", "Patient/c"],
    agents=[f"Practitioner/pr-{n}" for n in range(4)],
)
#: Characters a mutation puts into a line: CSV syntax, what the fast path refuses, formula
#: starts, digits int() reads (Arabic-Indic three) or refuses (superscript two), UTF-8.
_MUTANTS = [",", '"', "\\", "\r", "\0", "'", "=", "-", "\t", "0", "٣", "²", "é", " "]


def _checker(text: str) -> tuple[ExportChecker, bytes]:
    """A fresh checker of the CSV export ``text`` and the bytes after its header line."""
    first, _, rest = text.partition("\n")
    check = begin_export(first + "\n", REAL_POLICY, opener=facts_opener)[1]
    assert check is not None
    assert check.escaped
    return check, rest.encode("utf-8")


def _typed(verdicts: Any) -> list[tuple[int, type, Any]]:
    """Verdicts with their types (a ``Stop`` is a ``str`` too)."""
    return [(n, type(v), v) for n, v in verdicts]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, int]:
    """An edited export, up to three characters of its entry lines replaced or inserted, its
    lines ending in LF or CRLF, and where a part starts (a line after the column line)."""
    text = draw(_EDITED)[0]
    head, _, body = text.partition("\n")
    for _ in range(draw(st.integers(0, 3))):
        if not body:
            break
        at = draw(st.integers(0, len(body) - 1))
        keep = draw(st.booleans())
        body = body[:at] + draw(st.sampled_from(_MUTANTS)) + body[at + int(not keep) :]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    cut = draw(st.integers(1, max(body.count("\n"), 1)))
    return head + "\n" + body.replace("\n", newline), cut


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_the_verdicts_are_the_line_by_line_paths(case: tuple[str, int]) -> None:
    text, cut = case
    check, data = _checker(text)
    plain = plain_lines(data)
    if plain is None:  # the worker reads the block line by line: nothing to compare
        assert b'"' in data or b"\0" in data or b"\r" in data or not data.endswith(b"\n")
        return
    old = _typed(check.judge(_lines_of(data)))
    assert _typed(_checker(text)[0].judge_plain(plain, part=False)) == old
    # A later block: the lines from ``cut`` on (no column line), numbered from 1.
    pieces = data.split(b"\n", cut)
    part = pieces[-1] if len(pieces) > cut else b""
    if part:
        old = _typed(_checker(text)[0].judge(_lines_of(part), part=True))
        assert _typed(_checker(text)[0].judge_plain(plain_lines(part) or [], part=True)) == old


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_an_untouched_exports_rows_all_pass_on_the_fast_path(
    newline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the lines that are not rows are read again line by line (``csv_part``)."""
    slow: list[str] = []

    def spy(lines: Any, names: tuple[str, ...]) -> Any:
        slow.extend(lines)
        return csv_part(iter(slow[-1:]), names)

    monkeypatch.setattr(export_check, "csv_part", spy)
    for text, _ in _CSV:
        check, data = _checker(text.replace("\n", newline))
        plain = plain_lines(data)
        assert plain is not None
        slow.clear()
        verdicts = list(check.judge_plain(plain, part=False))
        rows = [line for line in plain[1:] if line.split(",")[-7] == "row"]
        assert sum(type(v) is tuple for _, v in verdicts) == len(rows) > 0
        assert slow == [line for line in plain[1:] if line.split(",")[-7] != "row"]


_PIECES = ["a", ",", '"', "\r", "\n", "\r\n", "\0", "é"]


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(_PIECES), max_size=30))
def test_plain_lines_are_the_records_open_and_the_csv_reader_read(pieces: list[str]) -> None:
    data = "".join(pieces).encode()
    plain = plain_lines(data)
    lines = _lines_of(data)
    crlf_only = data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n")
    readable = b'"' not in data and b"\0" not in data and data.endswith(b"\n")
    assert (plain is not None) is (readable and (b"\r" not in data or crlf_only))
    if plain is not None:
        assert plain == [line.removesuffix("\n") for line in lines]
        for line in plain:
            assert list(csv.reader([line])) == [line.split(",") if line else []]


def test_bytes_that_are_not_utf8_raise_as_the_lines_do() -> None:
    with pytest.raises(UnicodeDecodeError):
        _lines_of(b"a\xff\n")
    with pytest.raises(UnicodeDecodeError):
        plain_lines(b"a\xff\n")


_CELL = st.text(st.sampled_from(["a", ",", "=", "+", "-", "@", "\t", "'", " ", "é"]), max_size=4)


@settings(max_examples=2000)
@given(
    st.lists(_CELL, max_size=5),
    st.booleans(),
    st.integers(-1, 1),
    st.sampled_from(["", "x", ",", "'", ",a"]),
)
def test_joined_same_is_csv_same_of_the_cells_split(
    cells: list[str], escape: bool, wider: int, extra: str
) -> None:
    """Given the cells joined (escaped or not, a text added or not), for a width of the
    cells' count or one off: the answer of ``csv_same`` of the joined text split at commas,
    when that split has as many cells as the width (the records the fast path compares)."""
    width = len(cells) + wider
    given = ",".join(csv_escape(c) if escape else c for c in cells) + extra
    split = tuple(given.split(","))
    expected = len(split) == width and csv_same(cells, split)
    assert joined_same(width)(cells, given) is expected
