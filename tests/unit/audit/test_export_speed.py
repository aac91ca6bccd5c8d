"""The export's fast paths give what the plain ones give (each compared with an independent
reference): remembered proof paths, hour-cached times, msgspec lines, strict base64."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.export import (
    PROOF_COLUMNS,
    EntryOpening,
    ExportEntry,
    ExportHeader,
    Role,
    format_time,
)
from middleware.audit.export_read import ndjson_lines, read_header
from middleware.audit.export_write import csv_record, write_csv, write_ndjson
from middleware.audit.proofs import ProofMaker
from middleware.audit.report_csv import csv_escape
from middleware.ledger.tree import MerkleLevels, hash_leaves

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = st.integers(-(10**15), 253_402_300_799_999_999)  # 1938 .. 9999-12-31T23:59:59.999999


# -- proofs -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1))))
)
def test_one_maker_asked_in_any_order_gives_the_ledger_s_paths(case: tuple[int, list[int]]) -> None:
    """The per-level memory of the last path never leaks into another leaf's path (RFC 9162
    §2.1.3.1; reference: MerkleLevels' recursive split)."""
    size, asked = case
    leaves = [n.to_bytes(4, "big") for n in range(size)]
    tree = MerkleLevels.of_leaves(leaves)
    maker = ProofMaker(hash_leaves(leaves))
    for index in [*asked, *range(size), *reversed(range(size))]:
        assert maker.inclusion_proof(index) == tree.inclusion_proof(index)
        assert maker.inclusion_bytes(index) == b"".join(tree.inclusion_proof(index))


# -- times ------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(_US, min_size=1, max_size=20))
def test_cached_times_are_strftime_s(values: list[int]) -> None:
    """format_time (hours remembered) equals the datetime formatting it replaced, for times
    on both sides of the epoch and asked repeatedly."""
    for us in [*values, *values]:
        expected = (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert format_time(us) == expected


# -- lines ------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_BYTES = st.binary(max_size=40)
#: Report cells: formula starts, quotes, separators, line breaks, other text.
_CELL = st.text(st.sampled_from("=+-@\t\r'\",\n aé"), max_size=5)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**40),
            _BYTES,
            st.lists(_BYTES, max_size=3),
            st.none() | st.tuples(_BYTES, _BYTES, st.none() | _BYTES),
            st.none() | st.tuples(_TEXT, _TEXT),
        ),
        max_size=6,
    )
)
def test_ndjson_lines_are_what_json_dumps_writes(
    lines: list[
        tuple[
            int,
            bytes,
            list[bytes],
            tuple[bytes, bytes, bytes | None] | None,
            tuple[str, str] | None,
        ]
    ],
) -> None:
    """The msgspec writer's bytes equal ``json.dumps(ensure_ascii=False, compact)`` of the
    entry's ``to_json`` (standard base64), any text but lone surrogates included; and the
    reader gives back what was written. One column name is no Python identifier: the line's
    columns struct writes its fields under the header's names, whatever they are."""
    names = ("a", "b c-é")
    header = ExportHeader(report="date-range", checkpoint="c", origin="o", columns=names)
    entries = [
        ExportEntry(
            "row",
            index,
            leaf,
            b"".join(proof),
            None if opened is None else EntryOpening(*opened),
            cells,
        )
        for index, leaf, proof, opened, cells in lines
    ]
    out = io.StringIO(newline="")
    write_ndjson(header, entries, out)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    expected = [dumps(header.to_json())] + [dumps(e.to_json(names)) for e in entries]
    written = out.getvalue().split("\n")
    assert written == [*expected, ""]
    raw = io.BytesIO()
    write_ndjson(header, entries, raw)  # a binary stream: the same text, as UTF-8
    assert raw.getvalue() == out.getvalue().encode("utf-8")
    _, read_names = read_header(written[0])
    got = [line for _, line in ndjson_lines(iter(written[1:]), read_names)]
    for entry, line in zip(entries, got, strict=True):
        assert not isinstance(line, str), line
        assert (line.index, line.leaf, line.proof) == (
            entry.index,
            entry.leaf,
            entry.proof,
        )
        assert line.opening == entry.opening
        assert line.columns == (None if entry.columns is None else tuple(entry.columns))


def _line(**change: object) -> str:
    obj: dict[str, object] = {"role": "before", "index": 3, "leaf": "AAAA", "proof": ""}
    obj.update(change)
    return json.dumps(obj)


@pytest.mark.parametrize(
    "text",
    [
        _line(leaf="AAA"),
        _line(leaf="AA=A"),
        _line(leaf="AAAA AAAA"),
        _line(leaf="AA\nAA"),
        _line(leaf="AA-_"),
        _line(leaf="AAAé"),
        _line(leaf=7),
        _line(index=True),
        _line(index=-1),
        _line(index=1.0),
        '{"role":"before","index":3,"leaf":"AAAA","proof":"",}',
        '{"role":"before","index":NaN,"leaf":"AAAA","proof":""}',
        _line() + " x",
        _line(colour="red"),
        _line(columns={"a": 1}),
        _line(columns=["x"]),
        _line(salt="AAAA"),
        '{"role":"before","index":3,"proof":""}',
        "[1, 2]",
    ],
    ids=[
        "short",
        "inner-padding",
        "space",
        "newline",
        "urlsafe-alphabet",
        "non-ascii",
        "number",
        "bool-index",
        "negative-index",
        "float-index",
        "trailing-comma",
        "nan",
        "trailing-data",
        "unknown-key",
        "column-not-text",
        "columns-not-an-object",
        "salt-without-evidence",
        "no-leaf",
        "not-an-object",
    ],
)
def test_lines_that_are_not_the_format_are_reported(text: str) -> None:
    """Each is refused by the reader, as ``base64.b64decode(validate=True)`` or ``json.loads``
    refuse them or stricter."""
    ((_, line),) = list(ndjson_lines(iter([text]), ()))
    assert isinstance(line, str)
    assert line.startswith("not an export line")


@settings(max_examples=400)
@given(st.text("AB/+=9z\n -", max_size=14))
def test_binary_values_are_read_as_b64decode_validate_reads_them(text: str) -> None:
    """The reader's base64 (binascii strict mode) accepts and refuses exactly what
    ``base64.b64decode(text, validate=True)`` does, with the same bytes."""
    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except ValueError:
        expected = None
    ((_, line),) = list(ndjson_lines(iter([_line(leaf=text)]), ()))
    assert (None if isinstance(line, str) else line.leaf) == expected


def test_the_reader_accepts_what_b64encode_writes() -> None:
    data = bytes(range(256))
    text = _line(leaf=base64.b64encode(data).decode())
    ((_, line),) = list(ndjson_lines(iter([text]), ()))
    assert not isinstance(line, str)
    assert line.leaf == data


# -- CSV records ------------------------------------------------------------------------------


@settings(max_examples=400)
@given(st.lists(st.text(st.sampled_from(',"\r\n ab\x00é\t'), max_size=6), min_size=2, max_size=9))
def test_csv_records_are_what_csv_writer_writes(cells: list[str]) -> None:
    """csv_record (one scan when nothing needs quoting) writes csv.writer's bytes, quotes
    and doubled quotes included (the reference: the standard library's writer)."""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    assert csv_record(cells) == out.getvalue()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(
        st.tuples(
            st.sampled_from(["row", "other", "before", "after", "tail"]),
            st.integers(0, 2**40),
            _BYTES,
            st.none() | st.tuples(_BYTES, _BYTES, st.none() | _BYTES),
            st.none() | st.lists(_CELL, max_size=4),
        ),
        max_size=6,
    ),
)
def test_csv_exports_are_what_csv_writer_writes(
    width: int,
    lines: list[
        tuple[Role, int, bytes, tuple[bytes, bytes, bytes | None] | None, list[str] | None]
    ],
) -> None:
    """write_csv's records (formula cells escaped inline, base64 cells joined as bytes) are
    csv.writer's records of ``csv_escape``'d report cells (or ``width`` empty ones) then the
    proof columns, to a text and to a binary stream (the reference: the standard library's
    writer and base64 module), for any role, width and number of cells."""
    names = ("a", "b", "c")[:width]
    header = ExportHeader(report="date-range", checkpoint="c", origin="o", columns=names)
    entries = [
        ExportEntry(
            role,
            index,
            leaf,
            leaf[::-1],
            None if opened is None else EntryOpening(*opened),
            cells,
        )
        for role, index, leaf, opened, cells in lines
    ]
    out = io.StringIO(newline="")
    write_csv(header, entries, out)
    binary = io.BytesIO()
    write_csv(header, entries, binary)
    expected = io.StringIO(newline="")
    expected.write("#" + json.dumps(header.to_json(), ensure_ascii=False, separators=(",", ":")))
    expected.write("\r\n")
    writer = csv.writer(expected, lineterminator="\r\n")
    writer.writerow([*names, *PROOF_COLUMNS])
    for e in entries:
        o = e.opening
        writer.writerow(
            ([""] * width if e.columns is None else [csv_escape(c) for c in e.columns])
            + [e.role, str(e.index), b64(e.leaf), b64(e.proof)]
            + (["", "", ""] if o is None else [b64(o.salt), b64(o.evidence)])
            + ([] if o is None else ["" if o.key is None else b64(o.key)])
        )
    assert out.getvalue() == expected.getvalue()
    assert binary.getvalue() == expected.getvalue().encode("utf-8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("count", [0, 1, 4096, 4097, 9000], ids=str)
@pytest.mark.parametrize("write", [write_ndjson, write_csv], ids=["ndjson", "csv"])
def test_progress_is_told_every_line_written_chunk_by_chunk(count: int, write: Any) -> None:
    """The chunks (islice, 4,096 lines) cover every entry once, in order: the lines written
    and the counts progress is told both add up to the entries, none empty."""
    header = ExportHeader(report="date-range", checkpoint="c", origin="o", columns=("a",))
    entries = (ExportEntry("tail", i, b"l", b"p") for i in range(count))
    told: list[int] = []
    out = io.BytesIO()
    assert write(header, entries, out, progress=told.append) == count
    assert sum(told) == count
    assert all(0 < n <= 4096 for n in told)
    lines = out.getvalue().splitlines()
    assert len(lines) == count + (1 if write is write_ndjson else 2)
    if count:
        assert (b'"index":%d,' % (count - 1) in lines[-1]) or lines[-1].startswith(
            b",tail,%d," % (count - 1)
        )
