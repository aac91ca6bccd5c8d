"""Read most of a log at once for an export: its latest checkpoint, every leaf, the evidence.

:func:`read_bulk` reads, in one read-only transaction (SQLite ``mode=ro``; PostgreSQL
``REPEATABLE READ READ ONLY``), the latest signed checkpoint note, every leaf in index order
and every evidence row, as they are stored: nothing is checked here (the export checks what
it writes: ``middleware.audit.export_collect``). It reads what
:func:`~middleware.storage.ledger_dump.dump_log` reads for the export, less what the export
does not use (stored leaf hashes, older checkpoints, the state row), and leaves the evidence
rows as the driver returns them, ``(index, salt, data)``, keyed by index: building an
``Evidence`` object and the snapshot's lists per entry was more than half of a dump's time.
Database errors become :class:`~middleware.errors.ServiceUnavailable`, as ``dump_log``'s do.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable, SettingsError

__all__ = ["BulkLog", "read_bulk"]

_LATEST = "SELECT note FROM consentry_ledger_checkpoints ORDER BY size DESC LIMIT 1"
_LEAVES = "SELECT leaf FROM consentry_ledger_leaves ORDER BY idx"
_EVIDENCE = (
    "SELECT idx, salt, data FROM consentry_ledger_evidence "
    "WHERE salt IS NOT NULL AND data IS NOT NULL"
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
    if url.startswith("sqlite:"):
        return await asyncio.to_thread(_read_sqlite, Path(url.removeprefix("sqlite:")))
    if url.startswith(("postgresql://", "postgres://")):
        return await _read_postgres(url, schema)
    raise SettingsError(f"store: cannot read a log from {url!r} (sqlite:PATH or postgresql://)")


def _read_sqlite(path: Path) -> BulkLog:
    if not path.is_file():
        raise ServiceUnavailable(f"no log store at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")
        note = conn.execute(_LATEST).fetchone()
        leaves = conn.execute(_LEAVES).fetchall()
        evidence = conn.execute(_EVIDENCE).fetchall()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot read the log in {path}: {exc}") from exc
    finally:
        conn.close()
    return _bulk(note, leaves, evidence)


async def _read_postgres(dsn: str, schema: str) -> BulkLog:
    try:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema}, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ServiceUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            note = await conn.fetchrow(_LATEST)
            leaves = await conn.fetch(_LEAVES)
            evidence = [tuple(r) for r in await conn.fetch(_EVIDENCE)]
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(f"cannot read the log in schema {schema}: {exc}") from exc
    finally:
        await conn.close()
    return _bulk(note, leaves, evidence)


_FIRST = itemgetter(0)


def _bulk(note: Any, leaves: Sequence[Any], evidence: Sequence[Any]) -> BulkLog:
    text = None if note is None else note[0] if isinstance(note[0], str) else repr(note[0])
    rows: Sequence[Any] = evidence
    if not _all_bytes(map(itemgetter(1), rows)) or not _all_bytes(map(itemgetter(2), rows)):
        rows = [(r[0], _blob(r[1]), _blob(r[2])) for r in rows]
    values = list(map(_FIRST, leaves))
    return BulkLog(
        note=text,
        leaves=values if _all_bytes(values) else [_blob(v) for v in values],
        evidence=dict(zip(map(int, map(_FIRST, rows)), rows, strict=True)),
    )


def _all_bytes(values: Any) -> bool:
    """Whether every value is exactly ``bytes`` (types compared in C: ``set(map(type))``)."""
    return set(map(type, values)) <= {bytes}


def _blob(value: object) -> bytes:
    """A BLOB column's value as bytes (``ledger_dump._blob``'s rule)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")
