"""Reading export lines: the fast NDJSON reading (msgspec decodes the base64 values) gives
exactly the line, or the error, that the text-then-binascii reading gives; csv_records gives
exactly the records, line numbers and errors of csv.reader."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.export import EntryOpening
from middleware.audit.export_read import ExportLine, _ndjson_line, _ndjson_line_slowly
from middleware.audit.export_read_csv import _csv_line, _parse, csv_records

NAMES = ("a", "b")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: Base64-like text: valid encodings, and the near misses (padding, other alphabets, spaces).
b64ish = st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()) | st.text(
    st.sampled_from([*ALPHABET[:5], "+", "/", "=", "-", "_", " ", "\n", "é"]), max_size=9
)


def judged(read: Callable[[str, tuple[str, ...]], ExportLine], text: str) -> ExportLine | str:
    try:
        return read(text, NAMES)
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=2000)
@given(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["row", "other", "tail", "party"]),
         "index": st.sampled_from([0, 7, -1, True, 1.5, "3"]),
         "leaf": b64ish, "proof": b64ish},
        optional={"salt": st.none() | b64ish, "evidence": st.none() | b64ish,
                  "key": st.none() | b64ish,
                  "columns": st.none() | st.sampled_from([{"a": "1", "b": ""}, {"b": "", "a": "1"},
                                                          {"a": "1"}, {"a": 1, "b": ""}]),
                  "extra": st.just(1)},
    )
)  # fmt: skip
def test_a_line_reads_as_the_slow_reading_reads_it(line: dict[str, Any]) -> None:
    text = json.dumps(line)
    assert judged(_ndjson_line, text) == judged(_ndjson_line_slowly, text)


@settings(max_examples=5000)
@given(b64ish | st.text(max_size=10))
def test_msgspecs_base64_is_a_subset_of_binasciis_strict_mode(text: str) -> None:
    """What msgspec accepts, binascii's strict mode accepts and decodes to the same bytes."""
    try:
        fast = msgspec.json.decode(msgspec.json.encode(text), type=bytes)
    except msgspec.ValidationError:
        return
    assert binascii.a2b_base64(text, strict_mode=True) == fast


# -- CSV records -------------------------------------------------------------------------------


def csv_reader_records(lines: list[str]) -> list[tuple[int, list[str]]] | str:
    reader = csv.reader(iter(lines))
    try:
        return [(reader.line_num, record) for record in reader]
    except csv.Error as exc:
        return f"csv.Error: {exc}"


def fast_records(lines: list[str]) -> list[tuple[int, list[str]]] | str:
    try:
        return list(csv_records(iter(lines)))
    except csv.Error as exc:
        return f"csv.Error: {exc}"


#: Lines of the characters the csv module treats specially, and ordinary ones.
csv_lines_st = st.lists(
    st.text(st.sampled_from(["a", "b", ",", '"', "\r", "\n", "\0", " ", "'", "\\"]), max_size=12),
    max_size=6,
)


@settings(max_examples=3000)
@given(csv_lines_st)
def test_csv_records_are_the_csv_readers(lines: list[str]) -> None:
    assert fast_records(lines) == csv_reader_records(lines)


@settings(max_examples=500)
@given(st.lists(st.lists(st.text(st.sampled_from('a,"\n '), max_size=5), max_size=4), max_size=4))
def test_csv_records_read_what_csv_writer_wrote(rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    lines = out.getvalue().splitlines(keepends=True)
    assert fast_records(lines) == csv_reader_records(lines)


def test_a_field_over_the_size_limit_is_the_readers_error() -> None:
    line = "a" * (csv.field_size_limit() + 1) + "\n"
    assert fast_records([line]) == csv_reader_records([line])
    assert isinstance(csv_reader_records([line]), str)


# -- CSV binary cells --------------------------------------------------------------------------

#: Cells as a CSV record may hold them: base64, near misses, JSON's quote and escapes.
cells_st = b64ish | st.sampled_from(["", '"', "\\u0041AAA", 'QQ=="', "QQ==\\", "QQ==,QQ=="])


def parsed(read: Callable[[], ExportLine], /) -> ExportLine | str:
    try:
        return read()
    except (ValueError, TypeError, binascii.Error) as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=3000)
@given(
    st.sampled_from(["row", "tail", "other", "party"]),
    st.sampled_from([0, 5, -1, "x"]),
    st.lists(cells_st, min_size=5, max_size=5),
    st.none() | st.just(("1", "2")),
)
def test_a_csv_records_binary_cells_read_as_parse_reads_them(
    role: str, index: int | str, cells: list[str], values: tuple[str, ...] | None
) -> None:
    leaf, proof, salt, evidence, key = cells

    def slow() -> ExportLine:
        return _parse(role, index, leaf, proof, salt=salt or None, evidence=evidence or None,
                      key=key or None, values=values)  # fmt: skip

    def fast() -> ExportLine:
        return _csv_line(role, index, list(cells), values) or slow()

    assert parsed(fast) == parsed(slow)


def test_the_fast_csv_reading_reads_a_genuine_record() -> None:
    """Both shapes, with and without the opening, are read by the fast path itself."""
    b64 = base64.b64encode
    cells = [b64(b"leaf").decode(), b64(b"proof").decode(), "", "", ""]
    assert _csv_line("tail", 3, cells, None) == ExportLine("tail", 3, b"leaf", b"proof", None, None)
    cells[2:] = [b64(b"s").decode(), b64(b"e").decode(), b64(b"k").decode()]
    line = _csv_line("row", 3, cells, ("v",))
    assert line is not None
    assert line.opening == EntryOpening(b"s", b"e", b"k")
