"""The CSV block fast path (``export_fast_csv``, taken by ``verify_parallel``'s workers for a
block without a quote) gives exactly the verdicts of the line-by-line path
(``ExportChecker.judge`` of the lines as ``open`` reads them): on untouched and edited CSV
exports made by the CLI (``export_edits``), their characters further mutated (quotes, commas,
backslashes, carriage returns, NULs, formula characters, other digits), LF and CRLF line
ends, from the column line or from any later line. ``plain_lines`` is the lines ``open``
reads, each a record ``csv.reader`` splits at its commas, and None for a block it cannot
read so; ``joined_same`` answers what ``csv_same`` answers of the cells split. An untouched
export's rows all pass on the fast path (none left to the slow one). Each guard that turns a
line away from the fast path has an example the verdicts differ on without it."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import export_check, verify_parallel
from middleware.audit.cli_reports import facts_opener
from middleware.audit.export import format_time
from middleware.audit.export_check import ExportChecker
from middleware.audit.export_fast import csv_same
from middleware.audit.export_fast_csv import NotPlain, joined_same, plain_lines
from middleware.audit.export_read_csv import csv_part
from middleware.audit.report_csv import csv_escape
from middleware.audit.verify_export import begin_export, verify_file
from middleware.audit.verify_parallel import _lines_of, verify_path
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


def _plain_verdicts(data: bytes, check: ExportChecker, *, part: bool) -> Any:
    """``judge_plain``'s verdicts of ``data`` and its lines, None when the worker reads the
    block line by line instead (``plain_lines`` None, or ``NotPlain`` raised)."""
    plain = plain_lines(data)
    if plain is None:
        assert b'"' in data or b"\0" in data or not data.endswith(b"\n")
        return None
    try:
        verdicts = _typed(check.judge_plain(plain, part=part))
        return verdicts, plain.count()
    except NotPlain:  # a carriage return that does not end a line with LF, a long line
        assert b"\r" in data or max(map(len, data.split(b"\n"))) >= csv.field_size_limit()
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_the_verdicts_are_the_line_by_line_paths(case: tuple[str, int]) -> None:
    text, cut = case
    check, data = _checker(text)
    plain = _plain_verdicts(data, check, part=False)
    if plain is not None:
        lines = _lines_of(data)
        assert plain == (_typed(_checker(text)[0].judge(lines)), len(lines))
    # A later block: the lines from ``cut`` on (no column line), numbered from 1.
    pieces = data.split(b"\n", cut)
    part = pieces[-1] if len(pieces) > cut else b""
    plain = _plain_verdicts(part, _checker(text)[0], part=True) if part else None
    if plain is not None:
        lines = _lines_of(part)
        assert plain == (_typed(_checker(text)[0].judge(lines, part=True)), len(lines))


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
        plain_read = plain_lines(data)
        assert plain_read is not None
        plain = list(plain_read)
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
    read = plain_lines(data)
    try:
        plain = None if read is None else list(read)
    except NotPlain:
        plain = None
    lines = _lines_of(data)
    crlf_only = data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n")
    readable = b'"' not in data and b"\0" not in data and data.endswith(b"\n")
    assert (plain is not None) is (readable and (b"\r" not in data or crlf_only))
    if plain is not None:
        assert read is not None
        assert read.count() == len(plain)
        assert plain == [line.removesuffix("\n") for line in lines]
        for line in plain:
            assert list(csv.reader([line])) == [line.split(",") if line else []]


def test_bytes_that_are_not_utf8_raise_as_the_lines_do() -> None:
    with pytest.raises(UnicodeDecodeError):
        _lines_of(b"a\xff\n")
    read = plain_lines(b"a\xff\n")
    assert read is not None
    with pytest.raises(UnicodeDecodeError):
        read.count()


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


@pytest.mark.parametrize(
    ("mark", "at"),
    [("\r", "mid-line"), ("\r\n", "lf-line"), ("\n", "bare-lf")],
    ids=["lone-cr", "crlf-in-lf-file", "lf-in-crlf-file"],
)
def test_a_block_the_fast_path_stops_in_is_judged_line_by_line(
    tmp_path: Path, mark: str, at: str
) -> None:
    """A line end the fast path does not read (a lone CR; a block mixing LF and CRLF) met
    after rows it judged: the worker judges that block again line by line, and the report
    is the sequential one (the lone CR ends a line there, as ``open`` reads it)."""
    text = real_exports()["date-period", "csv"]
    lines = text.splitlines(keepends=True)
    middle = len(lines) * 2 // 3
    line = lines[middle]
    if at == "mid-line":  # CRLF file, a CR inside a row line
        body = "".join(lines).replace("\n", "\r\n")
        cut = len("".join(lines[:middle]).replace("\n", "\r\n")) + len(line) // 2
        body = body[:cut] + mark + body[cut:]
    elif at == "lf-line":  # LF file, one line ending in CRLF
        body = "".join([*lines[:middle], line[:-1] + mark, *lines[middle + 1 :]])
    else:  # CRLF file, one line ending in LF only
        crlf = [x.replace("\n", "\r\n") for x in lines]
        body = "".join([*crlf[:middle], line, *crlf[middle + 1 :]])
    path = tmp_path / "export.csv"
    path.write_bytes(body.encode("utf-8"))
    assert threading.active_count() == 1  # else verify_path would not fork
    with path.open(encoding="utf-8") as read:
        sequential = verify_file(read, REAL_POLICY, opener=facts_opener).to_json()
    for block in (1024, 4000, 9000):  # blocks of one line, and of lines before and after it
        parallel = verify_parallel.verify_path(
            path, REAL_POLICY, opener=facts_opener, jobs=2, block=block
        )
        assert parallel.to_json() == sequential


def _row_edited(text: str, case: str) -> str:
    """``text`` with a ``row`` line in its middle changed (``long-cell``: its first and last
    ``row`` lines) so that the line-by-line path does not pass it (or stops at it): each
    change is what a guard of ``export_fast_csv.judge_plain`` or ``PlainLines`` turns away
    from the fast path."""
    lines = text.split("\n")
    rows = [n for n, line in enumerate(lines) if line.count(",") > 7 and ",row," in line]
    number = rows[len(rows) // 2]
    given, role, index, *binary = lines[number].rsplit(",", 7)
    if case in ("index-plus", "index-space"):  # int() reads it, str.isdigit does not
        index = ("+" if case == "index-plus" else " ") + index
    elif case == "unicode-escape":  # msgspec reads \u0041 as A, base64 refuses the backslash
        binary[-1] = f"\\u{ord(binary[-1][0]):04x}" + binary[-1][1:]
    elif case == "slash-escape":  # \/ is / to msgspec
        cell = next(n for n, c in enumerate(binary) if "/" in c)
        binary[cell] = binary[cell].replace("/", "\\/", 1)
    else:  # the first and last rows' first cell over csv.field_size_limit() (131,072)
        assert case == "long-cell"
        for at in (rows[0], rows[-1]):  # the first stops the reading, the second pads
            cells = lines[at].split(",")
            lines[at] = ",".join(["a" * 140_000, *cells[1:]])
        return "\n".join(lines)
    lines[number] = ",".join([given, role, index, *binary])
    return "\n".join(lines)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize(
    "case", ["index-plus", "index-space", "unicode-escape", "slash-escape", "long-cell"]
)
def test_a_row_the_line_by_line_path_refuses_gets_its_verdict(
    tmp_path: Path, case: str, newline: str
) -> None:
    """Each guard of the fast path met in a block with lines before and after its line:
    ``judge_plain``'s verdicts are ``judge``'s, and ``verify_path`` in blocks gives the
    sequential report (an index written ``+n`` or after a space, a JSON escape in a base64 cell,
    a cell longer than the field size limit: each refused or a stop, not a row passed)."""
    text = _row_edited(real_exports()["date-period", "csv"], case).replace("\n", newline)
    check, data = _checker(text)
    lines = _lines_of(data)
    expected = _typed(_checker(text)[0].judge(lines))
    assert any(type(v) is not tuple for _, _, v in expected)  # the line is not a row passed
    plain = _plain_verdicts(data, check, part=False)
    assert plain is None or plain == (expected, len(lines))
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode("utf-8"))
    assert threading.active_count() == 1  # else verify_path would not fork
    with path.open(encoding="utf-8") as read:
        sequential = verify_file(read, REAL_POLICY, opener=facts_opener).to_json()
    # Blocks of a few lines; for the long cell, blocks of 150,000 bytes, the first holding
    # the long line and the lines after it (a 4,000-byte block ends at the long line).
    blocks = (4000, 150_000) if case == "long-cell" else (4000,)
    assert len(data) >= 2 * blocks[-1]  # else verify_path reads the file sequentially
    for block in blocks:
        parallel = verify_path(path, REAL_POLICY, opener=facts_opener, jobs=2, block=block)
        assert parallel.to_json() == sequential
