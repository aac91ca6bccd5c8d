"""A process of an earlier version on the same board honours no claim whose start is not on
the ledger (review R7c-2). The earlier versions' reads and writes are their SQL, run as they
ran it: the version before pending claims honoured any row with ``ends > now`` and swept
``ends <= now``. Was: a claim wrote its real end at once, so that version honoured it while
its start was still undecided (or after it failed)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.storage.breakglass_postgres import PostgresSessionBoard
from middleware.storage.breakglass_sqlite import SqliteSessionBoard
from tests.contract.backends import POSTGRES, PostgresBackend

KEY = bytes(range(32))
P1 = "Patient/p1"
DR = "dr"


@dataclass
class Mixed:
    """The new board, and the earlier version's SQL on the same table: ``run(sql, *args)``
    with ``?`` placeholders, the rows it returns."""

    board: SqliteSessionBoard | PostgresSessionBoard
    run: Callable[..., Awaitable[list[tuple[object, ...]]]]
    table: str


@pytest.fixture(params=["sqlite", POSTGRES])
async def mixed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mixed]:
    if request.param == "sqlite":
        path = tmp_path / "x.db.sessions"
        sqlite_board = SqliteSessionBoard(path, KEY)
        await sqlite_board.active(DR, [P1], 0.0)  # the file made

        async def run_sqlite(sql: str, *args: object) -> list[tuple[object, ...]]:
            db = sqlite3.connect(path, isolation_level=None)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()

        yield Mixed(sqlite_board, run_sqlite, "open_session")
        sqlite_board.close()
        return
    backend = await PostgresBackend.create()

    async def named() -> str:
        return backend.schema

    pg_board = PostgresSessionBoard(backend.dsn, KEY, schema=named)
    await pg_board.active(DR, [P1], 0.0)  # the table made

    async def run_pg(sql: str, *args: object) -> list[tuple[object, ...]]:
        n = 0

        def numbered(part: str) -> str:
            nonlocal n
            n += 1
            return f"${n}{part}"

        pieces = sql.split("?")
        sql = pieces[0] + "".join(numbered(p) for p in pieces[1:])
        conn = await asyncpg.connect(backend.dsn, server_settings={"search_path": backend.schema})
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    yield Mixed(pg_board, run_pg, "consentry_breakglass_sessions")
    await pg_board.aclose()
    await backend.cleanup()


async def _old_active(m: Mixed, now: float) -> bool:
    """The earlier version's session check (its only test: ``ends``)."""
    row_id = m.board._id(DR, P1)
    rows = await m.run(f"SELECT 1 FROM {m.table} WHERE id = ? AND ends > ?", row_id, now)
    return bool(rows)


async def test_an_earlier_version_honours_no_pending_claim(mixed: Mixed) -> None:
    assert await mixed.board.claim(DR, P1, ends=700.0, now=100.0)
    assert not await _old_active(mixed, 101.0)  # was True: honoured before its start
    await mixed.board.confirm(DR, P1, ends=700.0)
    assert await _old_active(mixed, 101.0)  # started: every version honours it
    assert await mixed.board.active(DR, [P1], 101.0) == {P1}
    assert not await _old_active(mixed, 700.0)  # over at its end


async def test_a_confirm_marks_only_its_own_claim(mixed: Mixed) -> None:
    """The earlier version swept the pending claim (its ``ends`` is past for it) and wrote its
    own row: the new claim's confirm leaves that row as it is."""
    row_id = mixed.board._id(DR, P1)
    assert await mixed.board.claim(DR, P1, ends=700.0, now=100.0)
    await mixed.run(f"DELETE FROM {mixed.table} WHERE ends <= ?", 101.0)
    await mixed.run(f"INSERT INTO {mixed.table} (id, ends) VALUES (?, ?)", row_id, 701.0)
    await mixed.board.confirm(DR, P1, ends=700.0)
    rows = await mixed.run(f"SELECT ends, pending_until FROM {mixed.table}")
    assert rows == [(701.0, 0.0)]  # not confirmed as the new claim
    assert await mixed.board.active(DR, [P1], 101.0) == frozenset()
