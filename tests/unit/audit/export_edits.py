"""Edited exports for the verifier's fast-path property tests (``test_export_fast``,
``test_export_fast_real``): what the full path alone says of a file (:func:`full_path`), and
a strategy (:func:`edited`) that edits an export of a pool the ways a forger or a damaged
file would, among them the edits that only a scope check catches: a genuine row line of
another export of the same log (another patient's, another user's, outside the period), and
a header whose period, patient or agent is changed.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from middleware.audit.export_check import RowOpener
from middleware.audit.export_read import ndjson_lines
from middleware.audit.export_read_csv import csv_lines
from middleware.audit.verify_export import ExportReport, begin_export
from middleware.ledger.trust import TrustPolicy

__all__ = ["Pool", "edited", "full_path", "row_lines", "with_line"]

#: Exports of one log: each text with the keyword arguments its verification takes.
Pool = Sequence[tuple[str, dict[str, Any]]]


def full_path(text: str, policy: TrustPolicy, opener: RowOpener, **kwargs: Any) -> ExportReport:
    """verify_export as it was before the fast path: every entry line judged by ``entry``."""
    lines = iter(io.StringIO(text))
    report, check = begin_export(next(lines, ""), policy, opener=opener, **kwargs)
    if check is None:
        return report
    read = csv_lines if check.escaped else ndjson_lines
    for number, entry in read(lines, check.names):
        report.lines += 1
        if isinstance(entry, str):
            report.add("line-malformed", entry, number)
        else:
            check.entry(number, entry)
    check.finish()
    return report


def _is_csv(text: str) -> bool:
    return text.startswith("#")


@functools.cache
def row_lines(text: str) -> dict[int, str]:
    """The export's ``row`` lines by ledger index."""
    lines = text.splitlines(keepends=True)
    found = {}
    if _is_csv(text):
        for line in lines[2:]:
            record = next(csv.reader([line]))
            role, index = record[-7], record[-6]
            if role == "row":
                found[int(index)] = line
    else:
        for line in lines[1:]:
            entry = json.loads(line)
            if entry["role"] == "row":
                found[entry["index"]] = line
    return found


@functools.cache
def _columns(text: str) -> tuple[bool, tuple[str, ...]]:
    """Whether the export is CSV, and its header's columns."""
    header = json.loads(text.split("\n", 1)[0].removeprefix("#"))
    return _is_csv(text), tuple(header["columns"])


def with_line(text: str, line: str) -> str:
    """``text`` with ``line`` as its first entry line (after the header and the CSV's column
    line)."""
    lines = text.splitlines(keepends=True)
    at = 2 if _is_csv(text) else 1
    return "".join([*lines[:at], line, *lines[at:]])


#: The fields a spliced line takes from another line: the proof columns (CSV: the last seven
#: cells, ``role`` first) in groups a forger would move together, or the report's cells.
_GROUPS: tuple[tuple[str, ...], ...] = (
    *(("salt",), ("key",), ("salt", "evidence", "key"), ("leaf",), ("proof",), ("index",)),
    *(("index", "leaf", "proof"), ("columns",)),
)
_PROOF = ("role", "index", "leaf", "proof", "salt", "evidence", "key")


def _spliced(line: str, donor: str, fields: tuple[str, ...]) -> str:
    """``line`` with the ``fields`` of ``donor`` (two entry lines of one format)."""
    if line.startswith("{"):
        entry, given = json.loads(line), json.loads(donor)
        entry.update({f: given[f] for f in fields})
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
    record, cells = next(csv.reader([line])), next(csv.reader([donor]))
    if len(record) != len(cells):
        raise ValueError("records of different widths")
    width = len(record) - len(_PROOF)
    for f in fields:
        at = range(width) if f == "columns" else [width + _PROOF.index(f)]
        for i in at:
            record[i] = cells[i]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(record)
    return out.getvalue()


def _header(line: str, key: str, value: str | None) -> str:
    prefix = "#" if line.startswith("#") else ""
    header = json.loads(line[len(prefix) :])
    header[key] = value
    return prefix + json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n"


#: The edits, the two that make lines only one check refuses (a genuine row of another scope,
#: a line's fields from another line) twice as likely as the others.
_EDITS = ("char", "drop", "repeat", "swap", "foreign", "blank", "header", *("row", "splice") * 2)


@st.composite
def edited(
    draw: st.DrawFn,
    pool: Pool,
    *,
    times: Sequence[str],
    patients: Sequence[str],
    agents: Sequence[str],
) -> tuple[str, dict[str, Any]]:
    """An export of ``pool`` with up to three edits: a character changed, a line dropped,
    repeated, swapped with the next, a line of any export of the pool inserted, a blank
    line, fields of a line replaced by another line's (the opening, the leaf, the proof, the
    index, the report's cells, alone or together), a row line of an export of the pool with
    the same columns inserted (a genuine row, in or out of this export's scope), the
    header's ``since``/``until`` (one of ``times``), ``patient`` (``patients``) or ``agent``
    (``agents``) changed or made None."""
    text, kwargs = draw(st.sampled_from(pool))
    lines = text.splitlines(keepends=True)
    # Rows of exports with other columns are refused for their cells; these are not.
    siblings = [t for t, _ in pool if _columns(t) == _columns(text)]
    values = {"since": times, "until": times, "patient": patients, "agent": agents}
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(1, len(lines) - 1)) if len(lines) > 1 else 0
        edit = draw(st.sampled_from(_EDITS))
        if edit == "char":
            line = lines[at]
            where = draw(st.integers(0, max(len(line) - 2, 0)))
            char = draw(st.characters(min_codepoint=32, max_codepoint=126))
            lines[at] = line[:where] + char + line[where + 1 :]
        elif edit == "drop":
            del lines[at]
        elif edit == "repeat":
            lines.insert(at, lines[at])
        elif edit == "swap" and at + 1 < len(lines):
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        elif edit == "foreign":
            other = draw(st.sampled_from(pool))[0].splitlines(keepends=True)
            lines.insert(at, other[draw(st.integers(1, len(other) - 1))])
        elif edit == "blank":
            lines.insert(at, "\n")
        elif edit == "row":
            rows = list(row_lines(draw(st.sampled_from(siblings))).values())
            if rows:
                lines.insert(at, draw(st.sampled_from(rows)))
        elif edit == "header" and lines:
            key = draw(st.sampled_from(sorted(values)))
            value = draw(st.none() | st.sampled_from(values[key]))
            # ValueError, TypeError: the header line was edited into something else already.
            with contextlib.suppress(ValueError, TypeError):
                lines[0] = _header(lines[0], key, value)
        elif edit == "splice" and len(lines) > 1:
            donor = lines[draw(st.integers(1, len(lines) - 1))]
            # A line already edited into something else is left as it is.
            with contextlib.suppress(ValueError, LookupError, TypeError, csv.Error):
                lines[at] = _spliced(lines[at], donor, draw(st.sampled_from(_GROUPS)))
    return "".join(lines), kwargs
