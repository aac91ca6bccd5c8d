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

__all__ = ["BulkLog", "read_bulk"]

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


def _all_bytes(rows: Sequence[Any]) -> bool:
    """Whether every row's salt and data are exactly ``bytes`` (types compared in C)."""
    types = set(map(type, map(itemgetter(1), rows)))
    types.update(map(type, map(itemgetter(2), rows)))
    return types <= {bytes}
