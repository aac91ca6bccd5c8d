"""Read a whole log as stored, without replaying or trusting it: the offline verifier's input.

:func:`dump_log` reads every row of a log store's tables (``ledger_base`` describes them) in
one read-only snapshot and returns a :class:`~middleware.ledger.snapshot.LogSnapshot`. Unlike
opening a store (which replays and refuses a forged log), it never refuses and never writes:
a tampered database must still be read, so that the verifier can say what is wrong with it.

SQLite is opened read-only (``mode=ro`` URI), in one read transaction; PostgreSQL in one
``REPEATABLE READ READ ONLY`` transaction. Database errors become
:class:`~middleware.errors.ServiceUnavailable`, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable, SettingsError
from middleware.ledger.entry import Evidence
from middleware.ledger.snapshot import LogSnapshot

__all__ = ["dump_log"]

_LEAVES = "SELECT idx, leaf, leaf_hash FROM consentry_ledger_leaves ORDER BY idx"
_CHECKPOINTS = "SELECT note FROM consentry_ledger_checkpoints ORDER BY size"
_EVIDENCE = (
    "SELECT idx, salt, data FROM consentry_ledger_evidence "
    "WHERE salt IS NOT NULL AND data IS NOT NULL ORDER BY idx"
)
_STATE = "SELECT size, root FROM consentry_ledger_state WHERE id = 1"


async def dump_log(url: str, *, schema: str = "public") -> LogSnapshot:
    """Every row of the log at ``url`` (``sqlite:PATH`` or a PostgreSQL DSN, tables in
    ``schema``). A missing SQLite file is an error, not an empty log."""
    if url.startswith("sqlite:"):
        return await asyncio.to_thread(_dump_sqlite, Path(url.removeprefix("sqlite:")))
    if url.startswith(("postgresql://", "postgres://")):
        return await _dump_postgres(url, schema)
    raise SettingsError(f"store: cannot read a log from {url!r} (sqlite:PATH or postgresql://)")


def _dump_sqlite(path: Path) -> LogSnapshot:
    if not path.is_file():
        raise ServiceUnavailable(f"no log store at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")
        leaves = conn.execute(_LEAVES).fetchall()
        notes = conn.execute(_CHECKPOINTS).fetchall()
        evidence = conn.execute(_EVIDENCE).fetchall()
        state = conn.execute(_STATE).fetchone()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot read the log in {path}: {exc}") from exc
    finally:
        conn.close()
    return _snapshot(leaves, notes, evidence, state)


async def _dump_postgres(dsn: str, schema: str) -> LogSnapshot:
    try:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema}, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ServiceUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            leaves = await conn.fetch(_LEAVES)
            notes = await conn.fetch(_CHECKPOINTS)
            evidence = await conn.fetch(_EVIDENCE)
            state = await conn.fetchrow(_STATE)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(f"cannot read the log in schema {schema}: {exc}") from exc
    finally:
        await conn.close()
    return _snapshot(leaves, notes, evidence, state)


def _snapshot(leaves: Any, notes: Any, evidence: Any, state: Any) -> LogSnapshot:
    salts, data = _blobs([r[1] for r in evidence]), _blobs([r[2] for r in evidence])
    return LogSnapshot(
        leaves=_blobs([r[1] for r in leaves]),
        checkpoints=[r[0] if isinstance(r[0], str) else repr(r[0]) for r in notes],
        evidence={
            int(r[0]): Evidence(salt, item)
            for r, salt, item in zip(evidence, salts, data, strict=True)
        },
        indexes=[int(r[0]) for r in leaves],
        leaf_hashes=_blobs([r[2] for r in leaves]),
        state=None if state is None else (int(state[0]), _blob(state[1])),
    )


def _blobs(values: list[Any]) -> list[bytes]:
    if all(type(v) is bytes for v in values):
        return values
    return [_blob(v) for v in values]


def _blob(value: object) -> bytes:
    """A BLOB column's value as bytes. SQLite lets a hand-typed UPDATE store text or a number
    in a BLOB column; that is reported by the verifier (as a mismatch), not an error here."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")
