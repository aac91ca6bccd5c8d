"""The verifier's fast path for a CSV export's lines when none holds a quote: a block of
whole lines (a ``verify_parallel`` worker's) read a line at a time without the CSV reader
(:func:`plain_lines`) and judged (:func:`judge_plain`).

Without a quote no field is quoted, so a line is one record, its cells the line split at
its commas (what ``export_read_csv.csv_records`` makes of such a line). A ``row`` line's
last seven cells are the proof columns and the cells before them, left joined as the line
holds them, are compared at once with the expected cells joined by commas
(:func:`joined_same`), instead of being split, copied to a tuple and compared one by one.
Only a line that the line-by-line path would hand to the row acceptor with the same values
is so judged (its cells as many as the header's and the proof columns, role ``row``, a
decimal index, the five binary cells given, no backslash, all five base64 that msgspec
decodes); it passes only when the acceptor passes it, so its verdict is the one that path
gives. Every other line, and a line the acceptor does not pass, is judged by that path
(``slow``), which reports what it always did. A line whose end is not read so (a lone
carriage return, LF and CRLF in one block) raises :class:`NotPlain` when it is reached, and
the worker judges the whole block again line by line (judging changes nothing that matters).
"""

from __future__ import annotations

import csv
import io
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec

from middleware.audit.export import EntryOpening
from middleware.audit.export_fast import Accept
from middleware.audit.report_csv import FORMULA_START, csv_escape

__all__ = ["NotPlain", "PlainLines", "joined_same", "judge_plain", "plain_lines"]

#: A line's verdict as ``ExportChecker.judge`` yields it (``export_check.Verdict``).
Judged = tuple[int, Any]
#: ``slow(number, line)``: the verdicts of one line (without its newline) read by the
#: line-by-line path, numbered ``number``.
Slow = Callable[[int, str], Iterator[Judged]]

_FIRST_CHARACTER = operator.itemgetter(slice(0, 1))  # c[:1]: empty for an empty cell
#: A comma then a formula's first character (``report_csv.FORMULA_START``): one regular
#: expression search finds it in a third of the time of testing each cell's first character.
_formula_after_comma = re.compile(",[" + re.escape("".join(sorted(FORMULA_START))) + "]").search
#: The five binary cells of a row as a JSON array (``export_read_csv._decode_cells``).
_decode_cells = msgspec.json.Decoder(tuple[bytes, ...]).decode


class NotPlain(ValueError):
    """A line of the block is not what :class:`PlainLines` reads (it is read line by line)."""


class PlainLines:
    """The lines of ``data`` (whole lines of a CSV export, UTF-8, ending in a newline)
    without their newlines, as ``open`` reads them (universal newlines), when each is a
    record by itself that ``csv_records`` splits at its commas: no quote, no NUL, every line
    ending in ``\n`` or every one in ``\r\n`` holding no other carriage return, each
    shorter than ``csv.field_size_limit()``. Iterated once, a line at a time: a line that is
    not so raises :class:`NotPlain` when it is reached, bytes that are not UTF-8 raise
    UnicodeDecodeError (as reading the lines one by one does). ``read``: the lines read."""

    __slots__ = ("_lines", "data", "read")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read = 0
        self._lines = self._each()

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def count(self) -> int:
        """All the lines (the ones not iterated yet read now)."""
        for _ in self._lines:
            pass
        return self.read

    def _each(self) -> Iterator[str]:
        # Cut at each "\n" by BytesIO (memchr), each line decoded when it is judged and
        # dropped after: the lines of a whole block held at once (4 MB of new strings) cost
        # the allocator's fresh pages, as much again as reading them.
        limit = csv.field_size_limit()
        if b"\r" not in self.data:
            for raw in io.BytesIO(self.data):
                self.read += 1
                line = raw[:-1].decode("utf-8")
                if len(line) >= limit:
                    raise NotPlain
                yield line
            return
        for raw in io.BytesIO(self.data):
            self.read += 1
            if raw[-2:] != b"\r\n":
                raise NotPlain
            line = raw[:-2].decode("utf-8")
            if len(line) >= limit or "\r" in line:  # a carriage return alone ends a line
                raise NotPlain
            yield line


def plain_lines(data: bytes) -> PlainLines | None:
    """:class:`PlainLines` of ``data``, None when its bytes show at once that they are not
    so (a quote, a NUL, no newline at the end)."""
    if b'"' in data or b"\0" in data or not data.endswith(b"\n"):
        return None
    return PlainLines(data)


def joined_same(width: int) -> Callable[[Sequence[str], Any], bool]:
    """``same(cells, given)`` for a CSV row whose report cells are ``given``, the text before
    the proof columns as the line holds it: True exactly when the cells as the file holds
    them (``report_csv.csv_escape``) are ``tuple(given.split(","))`` and ``width`` many,
    which is what ``export_fast.csv_same`` answers for the cells split."""

    def same(cells: Sequence[str], given: Any) -> bool:
        if len(cells) != width or type(given) is not str or given.count(",") != width - 1:
            return False
        try:
            joined = ",".join(cells)
            if joined == given:
                # Then no cell holds a comma (given's width - 1 commas are the joins), so the
                # cells start given and after each comma: equal unless one needs its escape.
                return given[:1] not in FORMULA_START and _formula_after_comma(given) is None
            if FORMULA_START.isdisjoint(map(_FIRST_CHARACTER, cells)):
                return False  # nothing to escape: the cells as the file holds them differ
            escaped = [c if c[:1] not in FORMULA_START else csv_escape(c) for c in cells]
            return ",".join(escaped) == given
        except TypeError:  # a cell that is not text: not what a file holds
            return False

    return same


def judge_plain(
    lines: Iterable[str], width: int, *, after: int, accept: Accept | None, slow: Slow
) -> Iterator[Judged]:
    """The verdicts of ``lines`` (records after the column line, each a line without its
    newline, as :func:`plain_lines` gives them), numbered from ``after + 1``, for an export
    of ``width`` report columns: a ``row`` line ``accept`` passes (its ``given``: the report
    cells as the line holds them, see :func:`joined_same`) as ``(index, leaf fields)``,
    every other line as ``slow`` judges it (module docstring; ``accept`` None: every line)."""
    if accept is None:  # no fast path (no trusted checkpoint, no opener)
        for number, line in enumerate(lines, start=after + 1):
            if line:
                yield from slow(number, line)
        return
    decode = _decode_cells
    commas = width - 1
    number = after
    for line in lines:
        number += 1
        # The line-by-line path's values (module docstring): width report cells, then role
        # "row", a decimal index and five binary cells given, base64 that msgspec decodes.
        cells = line.rsplit(",", 7)
        if len(cells) == 8 and cells[1] == "row" and cells[0].count(",") == commas:
            given, _, index, leaf, proof, salt, evidence, key = cells
            if index.isdigit() and salt and evidence and key and "\\" not in line:
                try:
                    at = int(index)
                    binary = decode(f'["{leaf}","{proof}","{salt}","{evidence}","{key}"]')
                except ValueError:  # int() of another digit; msgspec's DecodeError
                    binary = ()
                if len(binary) == 5:  # no other count can be (no quote), but checked
                    opening = EntryOpening(binary[2], binary[3], binary[4])
                    fields = accept(at, binary[0], binary[1], opening, given)
                    if fields is not None:
                        yield number, (at, fields)
                        continue
        if line:  # an empty line is an empty record, which has no verdict
            yield from slow(number, line)
