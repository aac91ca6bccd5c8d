"""One read-only snapshot of a log's tables, as stored: what ``dump_log`` (the verifier's
input) and ``read_bulk`` (an export's) both read, each with its own statements.

:func:`read_snapshot` runs the given statements in order in one read-only transaction (SQLite
opened with a ``mode=ro`` URI, one read transaction; PostgreSQL ``REPEATABLE READ READ
ONLY``) and returns their rows as the driver gives them. A missing SQLite file is an error,
not an empty log; database errors become :class:`~middleware.errors.ServiceUnavailable`, here
and nowhere else. :func:`blob` is the one rule for a BLOB column holding something else.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable, SettingsError

__all__ = ["Read", "blob", "blobs", "note_text", "read_snapshot"]


class Read(NamedTuple):
    """One statement of a snapshot: ``one`` fetches its first row (None: no row), else all."""

    sql: str
    one: bool = False


async def read_snapshot(url: str, reads: Sequence[Read], *, schema: str = "public") -> list[Any]:
    """The rows of each of ``reads`` (in order, one snapshot) from the log at ``url``
    (``sqlite:PATH`` or a PostgreSQL DSN, tables in ``schema``)."""
    if url.startswith("sqlite:"):
        return await asyncio.to_thread(_sqlite, Path(url.removeprefix("sqlite:")), reads)
    if url.startswith(("postgresql://", "postgres://")):
        return await _postgres(url, schema, reads)
    raise SettingsError(f"store: cannot read a log from {url!r} (sqlite:PATH or postgresql://)")


def _sqlite(path: Path, reads: Sequence[Read]) -> list[Any]:
    if not path.is_file():
        raise ServiceUnavailable(f"no log store at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")
        out = [
            conn.execute(r.sql).fetchone() if r.one else conn.execute(r.sql).fetchall()
            for r in reads
        ]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot read the log in {path}: {exc}") from exc
    finally:
        conn.close()
    return out


async def _postgres(dsn: str, schema: str, reads: Sequence[Read]) -> list[Any]:
    try:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema}, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ServiceUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            out = [await conn.fetchrow(r.sql) if r.one else await conn.fetch(r.sql) for r in reads]
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(f"cannot read the log in schema {schema}: {exc}") from exc
    finally:
        await conn.close()
    return out


def blob(value: object) -> bytes:
    """A BLOB column's value as bytes. SQLite lets a hand-typed UPDATE store text or a number
    in a BLOB column; that is reported by the verifier (as a mismatch) or the export's
    checks, not an error here."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def blobs(values: list[Any]) -> list[bytes]:
    """``values`` as bytes (:func:`blob`); the list itself when every one is exactly bytes
    (types compared in C: ``set(map(type))``)."""
    if set(map(type, values)) <= {bytes}:
        return values
    return [blob(v) for v in values]


def note_text(value: object) -> str:
    """A checkpoint note as stored: text, or the ``repr`` of what else a column holds."""
    return value if isinstance(value, str) else repr(value)
