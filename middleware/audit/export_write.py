"""Writing an audit export (:mod:`middleware.audit.export`'s format) to a stream.

:func:`write_ndjson` and :func:`write_csv` take the header and the entry lines
(:func:`~middleware.audit.export.entries_for`) and write the file's bytes, to a text or a
binary stream alike (:func:`_write`), a chunk of lines at a time. Both are fast paths of a
plain rule, which property tests compare them with (``tests/unit/audit/test_export_speed.py``):
an NDJSON line is ``json.dumps`` of :meth:`ExportEntry.to_json`, a CSV record what
``csv.writer`` writes for :meth:`ExportEntry.to_cells`.
Pure: no I/O beyond the stream handed in.
"""

from __future__ import annotations

import binascii
import functools
import io
import itertools
import json
import operator
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, TextIO, cast

import msgspec

from middleware.audit.export import PROOF_COLUMNS, ExportEntry, ExportHeader
from middleware.audit.report_csv import FORMULA_START

__all__ = ["csv_record", "export_head", "write_csv", "write_entries", "write_ndjson"]


def write_ndjson(
    header: ExportHeader,
    entries: Iterable[ExportEntry],
    out: TextIO | BinaryIO,
    *,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Write the NDJSON export (UTF-8) to a text or a binary stream; returns the number of
    entry lines written. ``progress`` is told the count of each chunk of lines written.

    Entry lines are encoded by msgspec, which writes the bytes ``json.dumps(ensure_ascii=
    False, separators=(",", ":"))`` writes for :meth:`ExportEntry.to_json`'s object, and bytes
    values as standard base64 (a property test compares the two); it is several times faster.
    Each line is a :class:`_Line` struct, its columns a struct of the header's columns
    (:func:`_columns_type`): msgspec writes their fields in order, as the dict's keys were,
    and building them costs a tenth of building the dicts."""
    return _write(out, *_ndjson_parts(header), entries, progress)


def _ndjson_parts(header: ExportHeader) -> tuple[str, Callable[[list[ExportEntry]], bytes]]:
    """The NDJSON file's first line, and the encoder of a chunk of entry lines."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    encode = _LINES.encode_lines
    columns_type, width = _columns_type(header.columns), len(header.columns)

    def lines(chunk: list[ExportEntry]) -> bytes:
        return encode([_wire(entry, columns_type, width) for entry in chunk])

    return dumps(header.to_json()) + "\n", lines


def write_csv(
    header: ExportHeader,
    entries: Iterable[ExportEntry],
    out: TextIO | BinaryIO,
    *,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Write the CSV export (RFC 4180, ``\r\n`` line ends, UTF-8) to a text or a binary
    stream; returns entry records written. ``progress`` is told the count of each chunk.

    Each record is what ``csv.writer`` writes for :meth:`ExportEntry.to_cells` (a property
    test compares them), made in two parts: the report's cells as text (:func:`csv_record`'s
    rule; a ``'`` before a formula), then the proof columns as bytes. Those are the role,
    the index and base64 cells, none of which ever needs quoting, so they are joined as
    ``binascii`` writes them, without being decoded, scanned for quotes and encoded again
    (that, and a text stream's encoding, was two fifths of a CSV export's time)."""
    return _write(out, *_csv_parts(header), entries, progress)


def _csv_parts(header: ExportHeader) -> tuple[str, Callable[[list[ExportEntry]], bytes]]:
    """The CSV file's header line and column record, and the encoder of a chunk of records."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    width = len(header.columns)
    head = "#" + dumps(header.to_json()) + "\r\n" + csv_record([*header.columns, *PROOF_COLUMNS])

    def records(chunk: list[ExportEntry]) -> bytes:
        return b"".join([_csv_bytes(entry, width) for entry in chunk])

    return head, records


def export_head(header: ExportHeader, fmt: str) -> bytes:
    """The bytes ``fmt``'s writer (``"ndjson"`` or ``"csv"``) writes before the entries."""
    head, _ = _csv_parts(header) if fmt == "csv" else _ndjson_parts(header)
    return head.encode("utf-8")


def write_entries(
    header: ExportHeader,
    entries: Iterable[ExportEntry],
    out: BinaryIO,
    fmt: str,
    *,
    progress: Callable[[int], object] | None = None,
) -> int:
    """The bytes ``fmt``'s writer writes after :func:`export_head`: the entry lines only (a
    part of a file made in parts, ``export_parallel``); returns the lines written."""
    _, encode = _csv_parts(header) if fmt == "csv" else _ndjson_parts(header)
    with _Writer(out) as writer:
        return _encode_all(entries, encode, progress, writer.put)


def _write(
    out: TextIO | BinaryIO,
    head: str,
    encode: Callable[[list[ExportEntry]], bytes],
    entries: Iterable[ExportEntry],
    progress: Callable[[int], object] | None,
) -> int:
    """Write ``head``, then ``encode(chunk)`` (UTF-8) of each chunk of ``entries``, to
    ``out``; returns the entries written, each chunk's count told to ``progress``. A binary
    stream takes the encoded bytes as they are, from a writer thread (:class:`_Writer`); a
    text stream their text (decoded here, encoded again on its way out)."""
    if not isinstance(out, io.BufferedIOBase | io.RawIOBase):
        text = cast(TextIO, out)
        text.write(head)
        return _encode_all(entries, encode, progress, lambda data: text.write(data.decode("utf-8")))
    binary = cast(BinaryIO, out)
    binary.write(head.encode("utf-8"))
    with _Writer(binary) as writer:
        return _encode_all(entries, encode, progress, writer.put)


def _encode_all(
    entries: Iterable[ExportEntry],
    encode: Callable[[list[ExportEntry]], bytes],
    progress: Callable[[int], object] | None,
    put: Callable[[bytes], object],
) -> int:
    written = 0
    for chunk in _chunks(entries):
        put(encode(chunk))
        written += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return written


class _Writer:
    """Writes the chunks :meth:`put` is given to ``out``, in order, on a thread of its own,
    while the caller encodes the next ones: a file's ``write`` releases the GIL for the whole
    chunk (about half a megabyte), so writing overlaps encoding. At most :data:`_QUEUED`
    chunks wait, so memory stays bounded. A write that fails is raised from the next
    :meth:`put` or from the ``with`` block's end (the chunks after it are not written);
    leaving the block waits until the thread has written or dropped every chunk and ended,
    also when the block raises."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._queue: queue.Queue[bytes | None] = queue.Queue(_QUEUED)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="consentry-export-write")

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if error is None and self._error is not None:
            raise self._error

    def put(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def _run(self) -> None:
        write = self._out.write
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # failed: drain the queue, so put never blocks for ever
            try:
                write(data)
            except BaseException as exc:  # handed to the caller's thread  # noqa: BLE001
                self._error = exc


#: Chunks encoded but not yet written (each :data:`_CHUNK` lines).
_QUEUED = 2

#: Lines encoded at a time: a chunk's lines and its bytes (about 0.5 MB of NDJSON) are freed
#: before the next chunk is made, which then reuses their memory. Chunks of 4,096 lines (some
#: 8 MB of bytes each) took fresh pages every time: 28,000-31,000 minor page faults in a part
#: of 25,000 rows against 18,500 with 256 lines, and 10-15% more CPU (0.363-0.402 s against
#: 0.323-0.343 for NDJSON, 0.408-0.416 against 0.377-0.394 for CSV, best and median of six
#: alternations; 128 and 512 lines did the same as 256, 1,024 between).
_CHUNK = 256


def _chunks(entries: Iterable[ExportEntry], size: int = _CHUNK) -> Iterator[list[ExportEntry]]:
    """``entries`` in lists of ``size`` (the last shorter), cut by ``islice`` (a Python loop
    appending each entry was 4% of an export's time)."""
    it = iter(entries)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


# -- NDJSON -------------------------------------------------------------------------------

_LINES = msgspec.json.Encoder()


class _Line(msgspec.Struct, gc=False):
    """An entry line as msgspec writes it: :meth:`ExportEntry.to_json`'s keys, in its order;
    a field left UNSET is not written (a line without opening or columns), None is null."""

    role: str
    index: int
    leaf: bytes
    proof: bytes
    salt: bytes | msgspec.UnsetType = msgspec.UNSET
    evidence: bytes | msgspec.UnsetType = msgspec.UNSET
    key: bytes | msgspec.UnsetType | None = msgspec.UNSET
    columns: msgspec.Struct | msgspec.UnsetType = msgspec.UNSET


@functools.lru_cache(maxsize=16)
def _columns_type(names: tuple[str, ...]) -> type[msgspec.Struct]:
    """A struct whose fields are written under ``names``, in order (any text: the fields are
    ``c0``, ``c1``... renamed)."""
    fields = [(f"c{i}", str) for i in range(len(names))]
    rename = {f"c{i}": name for i, name in enumerate(names)}
    return msgspec.defstruct("Columns", fields, rename=rename, gc=False)


def _wire(entry: ExportEntry, columns_type: type[msgspec.Struct], width: int) -> _Line:
    """``entry`` as the line msgspec writes (:meth:`ExportEntry.to_json`'s object)."""
    cells = entry.columns
    columns: msgspec.Struct | msgspec.UnsetType = msgspec.UNSET
    if cells is not None:
        if len(cells) != width:
            raise ValueError(f"a row has {len(cells)} columns, the header names {width}")
        columns = columns_type(*cells)
    opening = entry.opening
    if opening is None:
        return _Line(entry.role, entry.index, entry.leaf, entry.proof, columns=columns)
    return _Line(
        entry.role,
        entry.index,
        entry.leaf,
        entry.proof,
        opening.salt,
        opening.evidence,
        opening.key,
        columns,
    )


# -- CSV ----------------------------------------------------------------------------------

#: The role cells as a record holds them (none needs quoting).
_ROLES: dict[str, bytes] = {
    r: r.encode("ascii") for r in ("row", "other", "before", "after", "tail")
}


def _csv_bytes(entry: ExportEntry, width: int) -> bytes:
    """``csv_record(entry.to_cells(width))`` as UTF-8 (see :func:`write_csv`)."""
    role = _ROLES.get(entry.role)
    if role is None:  # not a role the format has: the general path
        return csv_record(entry.to_cells(width)).encode("utf-8")
    b64 = binascii.b2a_base64
    opening = entry.opening
    if opening is None:
        salt = evidence = key = b""
    else:
        salt = b64(opening.salt, newline=False)
        evidence = b64(opening.evidence, newline=False)
        key = b"" if opening.key is None else b64(opening.key, newline=False)
    proofs = b",".join(
        (
            role,
            b"%d" % entry.index,
            b64(entry.leaf, newline=False),
            b64(entry.proof, newline=False),
            salt,
            evidence,
            key,
        )
    )
    columns = entry.columns
    if columns is None:
        return b"," * width + proofs + b"\r\n"  # width empty cells, each before a comma
    if not columns:
        return proofs + b"\r\n"
    return _report_cells(columns).encode("utf-8") + b"," + proofs + b"\r\n"


def _report_cells(columns: Sequence[str]) -> str:
    """``_csv_join`` of ``columns`` escaped as ``csv_escape`` does (as :meth:`to_cells`).
    Most rows need neither quoting nor a ``'``: their cells joined hold no comma but the
    separators, no quote or line break, and no cell starts with a formula's character, which
    a few tests done in C show (``isdisjoint`` of the first characters), at two thirds of
    the cost of escaping the cells one by one, then joining them."""
    line = ",".join(columns)
    if (
        line.count(",") == len(columns) - 1
        and not _any_special(line)
        and FORMULA_START.isdisjoint(map(_FIRST, columns))
    ):
        return line
    formula = FORMULA_START  # csv_escape, inline
    return _csv_join([("'" + c if c[:1] in formula else c) for c in columns])


#: A cell's first character, or "" (``c[:1]``), as a C call ``map`` can make.
_FIRST = operator.itemgetter(slice(None, 1))


def csv_record(cells: Sequence[str]) -> str:
    """The record ``csv.writer(lineterminator="\r\n").writerow(cells)`` writes, for two or
    more cells (a property test compares them). csv.writer (QUOTE_MINIMAL, delimiter ``,``,
    quote ``"``) quotes a cell holding a delimiter, a quote or a line break. Most records need
    no quoting at all (base64 and plain text), which a few substring tests of the joined
    record find (csv.writer copied each character of the kilobyte-long base64 cells one by
    one, a third of an export's time; a regular expression scan of them cost 10 µs)."""
    return _csv_join(cells) + "\r\n"


def _csv_join(cells: Sequence[str]) -> str:
    """:func:`csv_record` without its line end: the cells of a record of two or more."""
    line = ",".join(cells)
    if line.count(",") == len(cells) - 1 and not _any_special(line):
        return line
    quoted = ('"' + c.replace('"', '""') + '"' if "," in c or _any_special(c) else c for c in cells)
    return ",".join(quoted)


def _any_special(text: str) -> bool:
    """Whether ``text`` holds a quote or a line break (each makes csv.writer quote a cell)."""
    return '"' in text or "\n" in text or "\r" in text
