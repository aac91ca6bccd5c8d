"""Read most of a log at once for an export: its latest checkpoint, every leaf, the evidence.

:func:`read_bulk` reads, in one read-only transaction (SQLite ``mode=ro``; PostgreSQL
``REPEATABLE READ READ ONLY``), the latest signed checkpoint note, every leaf in index order
and every evidence row, as they are stored: nothing is checked here (the export checks what
it writes: ``middleware.audit.export_collect``). It reads what
:func:`~middleware.storage.ledger_dump.dump_log` reads for the export, less what the export
does not use (stored leaf hashes, older checkpoints, the state row), and leaves the evidence
rows as the driver returns them, ``(index, salt, data)``, keyed by index: building an
``Evidence`` object and the snapshot's lists per entry was more than half of a dump's time.
The snapshot, its errors (:class:`~middleware.errors.ServiceUnavailable`) and the rule for a
BLOB column holding something else are ``dump_log``'s (:mod:`~middleware.storage.ledger_dump_read`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from middleware.storage.ledger_dump_read import Read, blob, blobs, note_text, read_snapshot

__all__ = ["BulkLog", "LeafRange", "read_bulk", "read_hashes", "read_range"]

_READS = (
    Read("SELECT note FROM consentry_ledger_checkpoints ORDER BY size DESC LIMIT 1", one=True),
    Read("SELECT leaf FROM consentry_ledger_leaves ORDER BY idx"),
    Read(
        "SELECT idx, salt, data FROM consentry_ledger_evidence "
        "WHERE salt IS NOT NULL AND data IS NOT NULL"
    ),
)


@dataclass(frozen=True, slots=True, repr=False)
class BulkLog:
    """A log as read by :func:`read_bulk`: ``note`` the latest signed checkpoint note (None:
    none yet), ``leaves`` every stored leaf in index order, ``evidence`` each stored evidence
    row ``(index, salt, data)`` by its index (shredded evidence is absent). Values that are
    not bytes where a BLOB belongs (a hand-typed UPDATE can store text) are encoded as
    ``dump_log`` encodes them, so the export's checks report them instead of failing on them."""

    note: str | None
    leaves: list[bytes]
    evidence: Mapping[int, tuple[int, bytes, bytes]]

    def __repr__(self) -> str:  # short: asyncio formats a coroutine's result
        return f"BulkLog(leaves={len(self.leaves)}, evidence={len(self.evidence)})"


async def read_bulk(url: str, *, schema: str = "public") -> BulkLog:
    """The log at ``url`` (``sqlite:PATH`` or a PostgreSQL DSN, tables in ``schema``). A
    missing SQLite file is an error, not an empty log."""
    note, leaves, evidence = await read_snapshot(url, _READS, schema=schema)
    if evidence and type(evidence[0]) is not tuple:  # asyncpg's Records
        evidence = [tuple(r) for r in evidence]
    return _bulk(note, leaves, evidence)


_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def _bulk(note: Any, leaves: Sequence[Any], evidence: Sequence[Any]) -> BulkLog:
    text = None if note is None else note_text(note[0])
    rows: Sequence[Any] = evidence
    if not _all_bytes(rows):
        rows = [(r[0], blob(r[1]), blob(r[2])) for r in rows]
    return BulkLog(
        note=text,
        leaves=blobs(list(map(_FIRST, leaves))),
        evidence=dict(zip(map(int, map(_FIRST, rows)), rows, strict=True)),
    )


async def read_hashes(url: str, *, schema: str = "public") -> tuple[str | None, list[bytes]]:
    """The latest signed checkpoint note (None: none yet; the one :func:`read_bulk` reads)
    and every stored leaf hash in index order, in one read-only transaction: what an export
    made in parts reads before its workers start (they read their own leaves,
    :func:`read_range`). Unchecked: the export checks the hashes against the note's root."""
    note, hashes = await read_snapshot(url, _HASHES, schema=schema)
    return None if note is None else note_text(note[0]), blobs(list(map(_FIRST, hashes)))


_HASHES = (_READS[0], Read("SELECT leaf_hash FROM consentry_ledger_leaves ORDER BY idx"))


@dataclass(frozen=True, slots=True, repr=False)
class LeafRange:
    """The leaves and evidence rows of the indexes ``[first, last]`` as :func:`read_range`
    read them: ``leaves`` by index, ``evidence`` ``(index, salt, data)`` by index (as in
    :class:`BulkLog`; shredded evidence is absent)."""

    leaves: Mapping[int, bytes]
    evidence: Mapping[int, tuple[int, bytes, bytes]]

    def __repr__(self) -> str:
        return f"LeafRange(leaves={len(self.leaves)}, evidence={len(self.evidence)})"


async def read_range(url: str, first: int, last: int, *, schema: str = "public") -> LeafRange:
    """The stored leaves and evidence of the indexes ``first`` to ``last`` (inclusive), in
    one read-only transaction, as stored (the rows as the driver returns them, values that
    are not bytes encoded as :func:`read_bulk` encodes them): a part of an export made in
    parts reads its own slice of the log."""
    where = f"WHERE idx BETWEEN {int(first)} AND {int(last)}"  # integers, not text
    reads = (
        Read(f"SELECT idx, leaf FROM consentry_ledger_leaves {where}"),  # noqa: S608
        Read(
            f"SELECT idx, salt, data FROM consentry_ledger_evidence {where} "  # noqa: S608
            "AND salt IS NOT NULL AND data IS NOT NULL"
        ),
    )
    leaves, evidence = await read_snapshot(url, reads, schema=schema)
    if evidence and type(evidence[0]) is not tuple:  # asyncpg's Records
        evidence = [tuple(r) for r in evidence]
    values = blobs(list(map(_SECOND, leaves)))
    return LeafRange(
        leaves=dict(zip(map(int, map(_FIRST, leaves)), values, strict=True)),
        evidence=_bulk(None, [], evidence).evidence,
    )


def _all_bytes(rows: Sequence[Any]) -> bool:
    """Whether every row's salt and data are exactly ``bytes`` (types compared in C)."""
    types = set(map(type, map(itemgetter(1), rows)))
    types.update(map(type, map(itemgetter(2), rows)))
    return types <= {bytes}
