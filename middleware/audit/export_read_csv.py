"""Reading the CSV form of an audit export (``middleware.audit.export``'s format) into
lines, without judging: :func:`csv_lines` is :func:`~middleware.audit.export_read.ndjson_lines`
for a CSV file (the ``#`` header line read by ``export_read.read_header``), and
:func:`csv_records` is what ``csv.reader`` yields, faster for the records an export writes.

Two findings end the reading (each a :class:`Stop`, the last thing yielded): a column line
that is not the header's, and a record the CSV reader refuses (``csv.Error``: a field longer
than ``csv.field_size_limit()``), after which where the record ends is not known.
"""

from __future__ import annotations

import binascii
import csv
import itertools
from collections.abc import Iterator
from typing import Any

import msgspec

from middleware.audit.export import PROOF_COLUMNS, EntryOpening
from middleware.audit.export_read import LINE_ROLES, ExportLine, decode_base64  # the line, shared

__all__ = ["Stop", "csv_lines", "csv_part", "csv_records"]


class Stop(str):
    """Why a line cannot be read (the finding's message) when no line after it is read."""

    __slots__ = ()


def csv_lines(
    lines: Iterator[str], names: tuple[str, ...]
) -> Iterator[tuple[int, ExportLine | str]]:
    """The CSV records after the ``#`` header line (the column line first)."""
    records = csv_records(lines)
    try:
        read, head = next(records, (0, None))
    except csv.Error as exc:
        yield 2, Stop(f"not a CSV record: {exc}")
        return
    if head != [*names, *PROOF_COLUMNS]:
        yield 2, Stop("the column line is not the header's columns then the proof columns")
        return
    yield from _csv_body(records, names, after=read)


def csv_part(
    lines: Iterator[str], names: tuple[str, ...]
) -> Iterator[tuple[int, ExportLine | str]]:
    """:func:`csv_lines` of later lines of the file that start at a record (no column line),
    each numbered by the lines read from the first of ``lines`` (1 for the first)."""
    return _csv_body(csv_records(lines), names, before=0)


def _csv_body(
    records: Iterator[tuple[int, list[str]]],
    names: tuple[str, ...],
    *,
    before: int = 1,
    after: int = 0,
) -> Iterator[tuple[int, ExportLine | str]]:
    """:func:`csv_lines` of the records after the column line (``csv_records``' of the lines
    after the header line, the column line read); ``before``: the lines before the first
    that ``csv_records`` read (the header line); ``after``: the lines it has read (the column
    line's)."""
    width = len(names)
    number = after + before  # the last line read
    try:
        for read, record in records:
            number = read + before
            if not record:
                continue
            if len(record) != width + len(PROOF_COLUMNS):
                yield number, f"{len(record)} cells, not {width + len(PROOF_COLUMNS)}"
                continue
            role, index, leaf, proof, salt, evidence, key = record[width:]
            values = tuple(record[:width]) if role == "row" else None
            try:
                at = int(index) if index.isdigit() else index
                yield number, _csv_line(role, at, record[width + 2 :], values) or _parse(
                    role, at, leaf, proof,
                    salt=salt or None, evidence=evidence or None, key=key or None, values=values,
                )  # fmt: skip
            except (ValueError, TypeError, binascii.Error) as exc:
                yield number, f"not an export record: {exc}"
    except csv.Error as exc:  # the reader's; the next record starts after the last line read
        yield number + 1, Stop(f"not a CSV record: {exc}")


def _csv_line(
    role: str, index: int | str, cells: list[str], values: tuple[str, ...] | None
) -> ExportLine | None:
    """:func:`_parse` of a CSV record whose five binary cells (leaf, proof, salt, evidence,
    key; the last three all empty or all given) msgspec decodes from base64 at once, as one
    JSON array (about 1.3 µs less a record than five ``binascii`` calls); None for any other
    record, which :func:`_parse` then reads (and refuses, with its reason). The cells hold no
    quote or backslash (so the array is exactly these strings, no escape read), and msgspec's
    base64 accepts a subset of what ``binascii`` does, to the same bytes."""
    if role not in LINE_ROLES or type(index) is not int or index < 0:
        return None
    if not (cells[2] or cells[3] or cells[4]):
        cells = cells[:2]
    elif not (cells[2] and cells[3] and cells[4]):
        return None
    joined = '","'.join(cells)
    if joined.count('"') != 2 * len(cells) - 2 or "\\" in joined:
        return None
    try:
        binary = _decode_cells(f'["{joined}"]')
    except ValueError:  # msgspec.DecodeError, ValidationError
        return None
    if len(binary) != len(cells):  # cannot be (no quote in a cell), but checked, not assumed
        return None
    if len(binary) == 2:
        return ExportLine(role, index, binary[0], binary[1], None, values)
    leaf, proof, salt, evidence, key = binary
    return ExportLine(role, index, leaf, proof, EntryOpening(salt, evidence, key), values)


#: The binary cells of a CSV record as a JSON array: leaf and proof, then salt, evidence, key.
_decode_cells = msgspec.json.Decoder(tuple[bytes, ...]).decode


def csv_records(lines: Iterator[str]) -> Iterator[tuple[int, list[str]]]:
    """What ``csv.reader(lines)`` yields, each record with the reader's ``line_num`` after it
    (lines read so far), the same errors (``csv.Error``).

    A line without a quote, a carriage return or a NUL, one newline at most and that at its
    end, and shorter than the field size limit is split at its commas: what the reader makes
    of it (the excel dialect has no escape character and does not skip spaces), about six
    times faster (the reader is a state machine run per character). Any other line, and the
    lines a quoted field spans after it, are read by a ``csv.reader``."""
    limit = csv.field_size_limit()
    read = 0
    for text in lines:
        read += 1
        body = text[:-1] if text.endswith("\n") else text
        if (
            len(body) < limit
            and "\n" not in body
            and '"' not in body
            and "\r" not in body
            and "\0" not in body  # an error of the reader before Python 3.11
        ):
            yield read, body.split(",") if body else []
            continue
        reader = csv.reader(itertools.chain((text,), lines))
        record = next(reader, None)
        read += reader.line_num - 1
        if record is not None:
            yield read, record


def _parse(
    role: Any,
    index: Any,
    leaf: Any,
    proof: Any,
    *,
    salt: Any,
    evidence: Any,
    key: Any,
    values: tuple[str, ...] | None,
) -> ExportLine:
    if role not in LINE_ROLES:
        raise ValueError(f"unknown role {role!r}")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError("the index is a non-negative integer")
    opening = None
    if salt is not None or evidence is not None:
        opening = EntryOpening(
            decode_base64(salt),
            decode_base64(evidence),
            None if key is None else decode_base64(key),
        )
    return ExportLine(role, index, decode_base64(leaf), decode_base64(proof), opening, values)
