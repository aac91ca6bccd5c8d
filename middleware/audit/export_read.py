"""Reading an audit export (``middleware.audit.export``'s format) into lines, without judging.

:func:`read_header` parses the first line; :func:`ndjson_lines` (and, for a CSV file,
:func:`~middleware.audit.export_read_csv.csv_lines`) yield each entry line with its 1-based
file line number, as an :class:`ExportLine` or, for a line that cannot be read, the reason as
text. Nothing here checks a proof: that is :mod:`middleware.audit.verify_export`'s job.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec

from middleware.audit.export import EXPORT_FORMAT, EntryOpening, format_time
from middleware.ledger.leaf import micros

__all__ = [
    "LINE_ROLES",
    "REPORTS",
    "ExportLine",
    "HeaderError",
    "RawLine",
    "decode_base64",
    "decode_raw_line",
    "ndjson_line",
    "ndjson_lines",
    "parse_time",
    "read_header",
]

#: The report kinds an export can be of.
REPORTS = frozenset({"accounting", "access-report", "user-report", "date-range", "search"})


class HeaderError(ValueError):
    """The first line is not a usable header; ``code`` is the finding's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_header(first: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The header of an export's ``first`` line (NDJSON, or CSV's ``#`` line) and its column
    names; ``since``/``until`` become microseconds and ``chain`` bytes. Raises
    :class:`HeaderError`."""
    text = first[1:] if first.startswith("#") else first
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise HeaderError("header-format", f"the first line is not a {EXPORT_FORMAT} header")
    header.setdefault("rules", None)  # files written before the header carried the rules
    if set(header) != _HEADER_KEYS:
        raise HeaderError("header-malformed", "the header's keys are not the format's")
    names = header["columns"]
    fields_ok = header.get("report") in REPORTS and isinstance(header.get("checkpoint"), str)
    fields_ok = fields_ok and isinstance(header["rules"], dict | None)
    if not fields_ok or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HeaderError("header-malformed", "the header lacks report, checkpoint or columns")
    try:
        for key in ("since", "until"):
            header[key] = parse_time(header.get(key))
        chain = header.get("chain")
        header["chain"] = None if chain is None else bytes.fromhex(chain)
    except (ValueError, TypeError) as exc:
        raise HeaderError("header-malformed", f"the header's scope: {exc}") from exc
    return header, tuple(names)


def parse_time(text: object) -> int | None:
    """An export's RFC 3339 UTC time (as ``format_time`` writes it) in microseconds, None for
    None; ValueError for any other spelling."""
    if text is None:
        return None
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    us = micros(datetime.fromisoformat(text))
    if format_time(us) != text:  # one spelling per instant, as the exporter writes it
        raise ValueError(f"not the export's time format: {text!r}")
    return us


class ExportLine(msgspec.Struct, frozen=True, gc=False):
    """One entry line as read (not yet checked). A ``msgspec.Struct``: one is built for every
    line of an export (0.1 µs, a frozen dataclass about 1 µs)."""

    role: str
    index: int
    leaf: bytes
    proof: bytes
    opening: EntryOpening | None
    columns: tuple[str, ...] | None


#: An entry line's ``role`` values (both formats; ``export.Role``).
LINE_ROLES = frozenset({"row", "other", "before", "after", "tail"})
_HEADER_KEYS = frozenset(
    {"format", "report", "patient", "agent", "since", "until", "columns", "origin"}
    | {"checkpoint", "chain", "rules"}
)


def ndjson_lines(
    lines: Iterator[str], names: tuple[str, ...]
) -> Iterator[tuple[int, ExportLine | str]]:
    """The NDJSON entry lines after the header (a row's ``columns`` named as ``names``)."""
    for number, text in enumerate(lines, start=2):
        if not text or text.isspace():  # not text.strip(), without copying the line
            continue
        yield number, ndjson_line(text, names)


def ndjson_line(text: str, names: tuple[str, ...]) -> ExportLine | str:
    """One NDJSON entry line (not blank) as :func:`ndjson_lines` yields it: the line, or
    why it cannot be read."""
    try:
        return _ndjson_line(text, names)
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        return f"not an export line: {exc}"


def _ndjson_line(text: str, names: tuple[str, ...]) -> ExportLine:
    """One NDJSON entry line, or the error :func:`_ndjson_line_slowly` raises for it.

    Tried first as :class:`_BinaryLine` (msgspec decodes the base64 values in C); a line that
    does not decode so, or has only one of ``salt`` and ``evidence``, is read again by
    :func:`_ndjson_line_slowly`, whose error is the finding. msgspec's base64 accepts a subset
    of what ``binascii.a2b_base64(strict_mode=True)`` accepts (it also refuses padding after
    a whole quantum, ``AAAA=``) and decodes it to the same bytes
    (``tests/unit/audit/test_export_read.py``), so a line read here reads the same there."""
    try:
        line = _decode_binary(text)
    except ValueError:  # msgspec.DecodeError, ValidationError
        return _ndjson_line_slowly(text, names)
    if (line.salt is None) != (line.evidence is None):
        return _ndjson_line_slowly(text, names)
    values = _values(line.columns, names)
    role, index = line.role, line.index
    _check_role_and_index(role, index)
    opening = None
    if line.salt is not None and line.evidence is not None:
        opening = EntryOpening(line.salt, line.evidence, line.key)
    return ExportLine(role, index, line.leaf, line.proof, opening, values)


def _ndjson_line_slowly(text: str, names: tuple[str, ...]) -> ExportLine:
    """:func:`_ndjson_line` with the binary values read as text, then base64 by binascii."""
    line = _decode(text)
    values = _values(line.columns, names)
    # The CSV reader's checks (export_read_csv._parse), in its order, on the typed line (role,
    # index, then the binary values: salt, evidence, key, leaf, proof), so a bad line says the
    # same in either format.
    role, index = line.role, line.index
    _check_role_and_index(role, index)
    opening = None
    if line.salt is not None or line.evidence is not None:
        key = line.key
        opening = EntryOpening(
            decode_base64(line.salt),
            decode_base64(line.evidence),
            None if key is None else _a2b(key, strict_mode=True),
        )
    leaf = _a2b(line.leaf, strict_mode=True)
    return ExportLine(role, index, leaf, _a2b(line.proof, strict_mode=True), opening, values)


def _values(cols: dict[str, str] | None, names: tuple[str, ...]) -> tuple[str, ...] | None:
    """A row's column values, which must be named ``names`` in that order."""
    if cols is None:
        return None
    if tuple(cols) != names:
        raise ValueError("the columns are not the header's, in its order")
    return tuple(cols.values())


def _check_role_and_index(role: str, index: int) -> None:
    if role not in LINE_ROLES:
        raise ValueError(f"unknown role {role!r}")
    if index < 0:  # an int: the typed decoder refuses booleans and floats
        raise ValueError("the index is a non-negative integer")


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    """An NDJSON entry line as msgspec reads it: an object of exactly these keys (no others;
    ``salt``, ``evidence``, ``key`` and ``columns`` may be absent or null), ``index`` an
    integer (not a boolean or a float), binary values base64 text (decoded and checked by
    :func:`_ndjson_line_slowly`), ``columns`` an object of strings. Typed decoding does in C
    what a dict's checks did in Python (about a fifth of verifying a line); a line that is not
    so raises ValueError."""

    role: str
    index: int
    leaf: str
    proof: str
    salt: str | None = None
    evidence: str | None = None
    key: str | None = None
    columns: dict[str, str] | None = None


#: As strict as json.loads and more (RFC 8259: no NaN, no trailing data); errors are
#: ValueErrors (msgspec.DecodeError, ValidationError).
_decode = msgspec.json.Decoder(_Line).decode


class _BinaryLine(msgspec.Struct, forbid_unknown_fields=True):
    """:class:`_Line` with its binary values decoded from base64 by msgspec (standard
    alphabet, padded): what :func:`_ndjson_line` tries first."""

    role: str
    index: int
    leaf: bytes
    proof: bytes
    salt: bytes | None = None
    evidence: bytes | None = None
    key: bytes | None = None
    columns: dict[str, str] | None = None


_decode_binary = msgspec.json.Decoder(_BinaryLine).decode


class RawLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """:class:`_BinaryLine` with ``columns`` left as its raw JSON text (``msgspec.Raw``; an
    empty one when absent), for the verifier's fast path (``export_fast``), which compares
    it whole with the expected cells' encoding instead of decoding it. What it accepts is
    not a line yet: :func:`ndjson_line` decides that, as the full path does."""

    role: str
    index: int
    leaf: bytes
    proof: bytes
    salt: bytes | None = None
    evidence: bytes | None = None
    key: bytes | None = None
    columns: msgspec.Raw = msgspec.Raw()


#: The :class:`RawLine` of NDJSON text; ValueError (msgspec.DecodeError, ValidationError)
#: for what does not decode so.
decode_raw_line = msgspec.json.Decoder(RawLine).decode


_a2b = binascii.a2b_base64


def decode_base64(text: Any) -> bytes:
    """The bytes of a binary value of a line read as text (both formats); ValueError
    (``binascii.Error`` included) when it is not base64 text."""
    # strict_mode: only the standard alphabet, padding only at the end, nothing after it
    # (what b64decode(validate=True) checks with a regular expression, and a little more).
    if not isinstance(text, str):
        raise ValueError("a binary value is a base64 string")
    return binascii.a2b_base64(text, strict_mode=True)
