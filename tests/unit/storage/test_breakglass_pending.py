"""A board honours only a session whose start is on the ledger (review R7b-3), a stop held
by another process is not asked for at every request (R7b-4) nor recorded again by an
opener whose clock runs behind the taker's (R7b-5), nor again after a mark the board refused
once (R7b-6); on both boards (SQLite file, PostgreSQL schema), and on a board of the previous
version. Red before: the assertions marked "was"."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.pipeline.breakglass import (
    GRACE,
    HELD_RETRY,
    PENDING,
    BeingOpened,
    BreakGlass,
    Owed,
)
from middleware.proxy.glass_stops import GlassStops
from middleware.storage.breakglass_postgres import PostgresSessionBoard
from middleware.storage.breakglass_rows import LEASE
from middleware.storage.breakglass_sqlite import SqliteSessionBoard
from tests.contract.backends import PostgresBackend
from tests.unit.audit.test_recorder import recorder
from tests.unit.proxy.test_glass_stops import ENDS, Gateway, _open, gateway  # noqa: F401
from tests.unit.storage.test_breakglass_board import KEY, P1, Boards, _caller, boards  # noqa: F401


async def test_a_claim_is_honoured_elsewhere_only_once_started(boards: Boards) -> None:  # noqa: F811
    a, b = BreakGlass(10, board=boards()), BreakGlass(10, board=boards())
    dr = _caller()
    opened = await a.open(dr, [P1], 100.0)
    assert [s.patient for s in opened] == [P1]
    assert await b.active(dr, 101.0, [P1]) == frozenset()  # was {P1}: start not yet durable
    assert await a.active(dr, 101.0, [P1]) == frozenset()  # not here either
    with pytest.raises(BeingOpened):  # a second claim waits for the first's outcome
        await b.open(dr, [P1], 101.0)
    assert not b.holding()
    await a.begin(opened)
    assert await b.active(dr, 102.0, [P1]) == {P1}
    assert await b.open(dr, [P1], 102.0) == []  # started elsewhere: recorded there


async def test_a_lost_release_leaves_an_inert_row(boards: Boards) -> None:  # noqa: F811
    """The start failed and the release of the claim never ran: no process honours the row
    (was: honoured until the session's end), and it blocks a claim ``PENDING`` seconds only."""
    a, b = BreakGlass(10, board=boards()), BreakGlass(10, board=boards())
    dr = _caller()
    opened = await a.open(dr, [P1], 100.0)
    assert [s.patient for s in opened] == [P1]
    board = a._board
    assert board is not None
    board.release = lambda *args: None  # type: ignore[method-assign]
    a.abandon(opened)
    assert not a.holding()
    assert await b.active(dr, 500.0, [P1]) == frozenset()  # was {P1}
    with pytest.raises(BeingOpened):
        await b.open(dr, [P1], 100.0 + PENDING - 1)
    assert [s.patient for s in await b.open(dr, [P1], 100.0 + PENDING)] == [P1]  # replaced


async def test_an_older_sqlite_board_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "x.db.sessions"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE open_session (id BLOB PRIMARY KEY, ends REAL NOT NULL) WITHOUT ROWID")
    old.commit()
    old.close()
    first, second = SqliteSessionBoard(path, KEY), SqliteSessionBoard(path, KEY)
    assert await first.claim("dr", P1, ends=700.0, now=100.0)
    assert await second.active("dr", [P1], 101.0) == frozenset()  # opened twice: idempotent
    await first.confirm("dr", P1, ends=700.0)
    assert await second.active("dr", [P1], 101.0) == {P1}
    first.close()
    second.close()


async def test_an_older_postgres_board_gets_the_column() -> None:
    backend = await PostgresBackend.create()
    try:
        conn = await asyncpg.connect(backend.dsn)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{backend.schema}"')
        await conn.execute(
            f'CREATE TABLE "{backend.schema}".consentry_breakglass_sessions '
            "(id bytea PRIMARY KEY CHECK (octet_length(id) = 32), ends double precision NOT NULL)"
        )
        await conn.close()

        async def named() -> str:
            return backend.schema

        racers = [PostgresSessionBoard(backend.dsn, KEY, schema=named) for _ in range(3)]
        opening = [b.active("dr", [P1], 101.0) for b in racers]  # replicas opening at once
        assert await asyncio.gather(*opening) == [frozenset()] * 3
        assert await racers[0].claim("dr", P1, ends=700.0, now=100.0)
        await racers[0].confirm("dr", P1, ends=700.0)
        assert await racers[1].active("dr", [P1], 101.0) == {P1}
        for board in racers:
            await board.aclose()
    finally:
        await backend.cleanup()


async def test_a_held_stop_is_not_asked_for_at_every_request(gateway: Gateway) -> None:  # noqa: F811
    """Another process holds the row (its lease: 300 s); the opener's requests ask the board
    once per ``HELD_RETRY`` seconds (was: a write transaction at every request)."""
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS + GRACE
    assert len(await other.sessions.overdue(gateway.now)) == 1
    board = opener.sessions._board
    assert board is not None
    real, takes = board.take, list[float]()

    async def counted(*args: object) -> object:
        takes.append(gateway.now)
        return await real(*args)  # type: ignore[arg-type]

    board.take = counted  # type: ignore[method-assign,assignment]
    for k in range(50):  # one request a second
        gateway.now = ENDS + GRACE + k
        assert await opener.close_expired(f"rid-{k}", None) == 0
    assert opener.sessions.holding()
    assert len(takes) == 5  # was 50
    assert all(b - a >= HELD_RETRY for a, b in itertools.pairwise(takes))


async def test_a_taker_whose_clock_runs_ahead_holds_the_stop(gateway: Gateway) -> None:  # noqa: F811
    """Another process, its clock 1 s ahead, takes the row while the opener (late: its ledger
    was down) asks for it: one stop (was two: the lease looked out of range)."""
    opener = gateway.process()
    rec, _ = recorder(gateway.ledger, gateway.pseudonyms)
    ahead = GlassStops(rec, BreakGlass(10, board=gateway.boards()), lambda: gateway.now + 1)
    await _open(opener)
    gateway.now = ENDS + GRACE
    (owed,) = await ahead.sessions.overdue(gateway.now + 1)
    assert await opener.close_expired("rid", None) == 0  # was 1: "lease-out-of-range"
    assert opener.unproven == {}
    assert await ahead._record_owed(owed) == 1
    gateway.now += HELD_RETRY
    assert await opener.close_expired("rid-2", None) == 0
    assert not opener.sessions.holding()
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_a_mark_the_board_refused_once_is_written_at_the_next_sweep(
    gateway: Gateway,  # noqa: F811
) -> None:
    """The opener recorded its stop; the board refused the mark once (a transient error, no
    process died): its next sweep marks it, and no other process records it again after the
    lease (was: two stops)."""
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    board = opener.sessions._board
    assert board is not None
    real, refused = board.settle, list[bool]()

    async def busy_once(owed: Owed, *, recorded: bool) -> bool:
        if recorded and not refused:
            refused.append(True)
            return False  # as the board answers when it cannot be written
        return await real(owed, recorded=recorded)

    board.settle = busy_once  # type: ignore[method-assign]
    gateway.now = ENDS
    assert await opener.close_expired("rid", None) == 1
    assert refused
    gateway.now = ENDS + 30
    assert await opener.sweep() == 0  # marks it
    gateway.now = ENDS + GRACE + LEASE + 1
    assert await other.sweep() == 0  # was 1: the row's lease lapsed, taken again
    assert len(gateway.facts("break-glass-stopped")) == 1
