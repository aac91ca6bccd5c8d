"""The opener of a break-the-glass session records its stop unless the board proves another
did (review R7): an edited board row (deleted, its lease pushed far ahead, its sealed stop
changed or moved to another row) no longer suppresses it; an ambiguous ``owe``, a give-back
racing a request, and a shutdown while the stop's append is queued record one stop, not two
or none; an expired session is never continued, and a session whose start the ledger did not
take is honoured nowhere (tests/app/test_break_glass_pending.py, through the request path).
Red before: each test's assertion on the count of stops or on the session (see the comment
at it)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from middleware.errors import ServiceUnavailable
from middleware.pipeline.breakglass import GRACE, HELD_RETRY
from middleware.storage.breakglass_rows import LEASE
from middleware.storage.breakglass_sqlite import SqliteSessionBoard
from tests.unit.proxy.test_glass_stops import (
    ENDS,
    KEY,
    P1,
    Gateway,
    Ledger,
    _caller,
    _open,
    gateway,  # noqa: F401  # the fixture (SQLite file, PostgreSQL schema)
)


def _sqlite(tmp_path: Path) -> tuple[Gateway, Path]:
    path = tmp_path / "x.db.sessions"
    return Gateway(lambda: SqliteSessionBoard(path, KEY)), path


def _edit(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


async def _opener_records_despite(gw: Gateway, path: Path, sql: str, reason: str) -> None:
    opener, other = gw.process(), gw.process()
    await _open(opener)
    _edit(path, sql)
    gw.now = ENDS
    assert await opener.close_expired("rid", None) == 1  # was 0: dropped as "recorded"
    assert not opener.sessions.holding()
    assert opener.unproven == {reason: 1}
    for k in range(3):  # and no other process records it again
        gw.now = ENDS + GRACE + k * (LEASE + 1)
        assert await other.sweep() == 0
    (stop,) = gw.facts("break-glass-stopped")
    assert stop.request_id == "rid"
    assert stop.reason is None


async def test_a_deleted_row_does_not_suppress_the_openers_stop(tmp_path: Path) -> None:
    gw, path = _sqlite(tmp_path)
    await _opener_records_despite(gw, path, "DELETE FROM owed_stop", "missing")


async def test_a_lease_far_ahead_does_not_suppress_it(tmp_path: Path) -> None:
    gw, path = _sqlite(tmp_path)
    sql = "UPDATE owed_stop SET taken_until = 1e200"
    await _opener_records_despite(gw, path, sql, "lease-out-of-range")


async def test_a_changed_sealed_stop_does_not_suppress_it(tmp_path: Path) -> None:
    gw, path = _sqlite(tmp_path)
    sql = "UPDATE owed_stop SET stop = zeroblob(length(stop)), taken_until = 1e9"
    await _opener_records_despite(gw, path, sql, "unreadable")


async def test_a_sealed_stop_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    """The sealed bytes are bound to their row (id and ends): a copy elsewhere is unreadable
    (before: it opened, and a sweep recorded a stop for the wrong session)."""
    board = SqliteSessionBoard(tmp_path / "x.db.sessions", KEY)
    await board.owe("b", P1, ENDS, b"stop-1")
    await board.owe("b", "Patient/other", ENDS + 1, b"stop-2")
    (stop,) = (
        sqlite3.connect(board.path)
        .execute("SELECT stop FROM owed_stop WHERE ends = ?", (ENDS,))
        .fetchone()
    )
    _edit(board.path, "UPDATE owed_stop SET stop = ? WHERE ends = ?", stop, ENDS + 1)
    taken = await board.take("b", P1, ENDS, ENDS)
    assert not isinstance(taken, str)
    assert taken.stop == b"stop-1"
    await board.settle(taken, recorded=True)
    assert await board.take("b", "Patient/other", ENDS + 1, ENDS + 2) == "unreadable"
    assert await board.take_overdue(ENDS + 2, ENDS + 3 + LEASE) == []  # the moved row only
    assert board.unreadable == 1
    await board.aclose()


async def test_an_owe_whose_answer_was_lost_gives_one_stop(gateway: Gateway) -> None:  # noqa: F811
    """The row was stored but ``owe`` raised (a timeout): the opener takes it all the same
    (before: it recorded alone, and a sweep recorded the row's stop again: two)."""
    opener, other = gateway.process(), gateway.process()
    board = opener.sessions._board
    assert board is not None
    real = board.owe

    async def ambiguous(*args: object) -> None:
        await real(*args)  # type: ignore[arg-type]
        raise ServiceUnavailable("timeout")

    board.owe = ambiguous  # type: ignore[method-assign,assignment]
    await _open(opener)
    gateway.now = ENDS
    assert await opener.close_expired("rid", None) == 1
    gateway.now = ENDS + GRACE
    assert await other.sweep() == 0
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_an_owe_that_stored_nothing_the_opener_records(gateway: Gateway) -> None:  # noqa: F811
    opener = gateway.process()
    board = opener.sessions._board
    assert board is not None

    async def down(*args: object) -> None:
        raise ServiceUnavailable("board down")

    board.owe = down  # type: ignore[method-assign,assignment]
    await _open(opener)
    gateway.now = ENDS
    assert await opener.close_expired("rid", None) == 1
    assert opener.unproven == {"missing": 1}
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_a_give_back_racing_a_request_keeps_the_stop_with_the_opener(
    gateway: Gateway,  # noqa: F811
) -> None:
    """The ledger refuses the opener's stop; while its row is being given back, a second
    request takes nothing (the row still under the opener's lease): the session is kept, and
    recorded by the opener (before: dropped, then recorded by another as 'opener gone')."""
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS
    board = opener.sessions._board
    assert board is not None
    real_settle, gate, giving_back = board.settle, asyncio.Event(), asyncio.Event()

    async def slow_settle(owed: object, *, recorded: bool) -> bool:
        if not recorded:  # the give-back stalls (a busy board)
            giving_back.set()
            await gate.wait()
        return await real_settle(owed, recorded=recorded)  # type: ignore[arg-type]

    board.settle = slow_settle  # type: ignore[method-assign]
    gateway.ledger.down = True
    first = asyncio.create_task(opener.close_expired("rid-a", None))
    await asyncio.wait_for(giving_back.wait(), 5)
    gateway.ledger.down = False
    assert await opener.close_expired("rid-b", None) == 0
    assert opener.sessions.holding()  # was False: dropped as "recorded by another"
    gate.set()
    with contextlib.suppress(ServiceUnavailable, OSError):
        await first
    assert await opener.close_expired("rid-c", None) == 1
    gateway.now = ENDS + GRACE
    assert await other.sweep() == 0
    (stop,) = gateway.facts("break-glass-stopped")
    assert stop.request_id == "rid-c"
    assert stop.reason is None


async def test_shutdown_while_the_stop_is_queued_gives_one_stop(gateway: Gateway) -> None:  # noqa: F811
    """The ledger's writer commits an append whose caller was cancelled: the shutdown waits
    for it and marks the row (before: given back, and recorded again by a sweep: two)."""

    class Writer(Ledger):
        async def append(self, entry):  # type: ignore[no-untyped-def]
            return await asyncio.shield(asyncio.ensure_future(super().append(entry)))

    gateway.ledger = Writer()
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS
    gate = gateway.ledger.gate = asyncio.Event()
    opener.every = 3600
    opener.start()
    await asyncio.wait_for(gateway.ledger.waiting.wait(), 5)
    closing = asyncio.create_task(opener.aclose())  # graceful shutdown, the stop queued
    await asyncio.sleep(0.05)
    gate.set()
    gateway.ledger.gate = None
    await asyncio.wait_for(closing, 5)
    assert len(gateway.facts("break-glass-stopped")) == 1
    gateway.now = ENDS + GRACE
    assert await other.sweep() == 0
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_an_expired_session_is_never_continued(gateway: Gateway) -> None:  # noqa: F811
    """The board's take failed at close: a new emergency request opens a new session, whose
    start is to be recorded (before: none opened; the old one was honoured again)."""
    opener = gateway.process()
    await _open(opener)
    board = opener.sessions._board
    assert board is not None
    real_take = board.take

    async def busy(*args: object) -> object:
        raise ServiceUnavailable("board busy")

    board.take = busy  # type: ignore[method-assign,assignment]
    gateway.now = ENDS + 1
    assert await opener.close_expired("rid", None) == 0
    assert opener.sessions.holding()  # its stop still owed here
    dr = _caller()
    assert await opener.sessions.active(dr, gateway.now, [P1]) == frozenset()
    assert [s.patient for s in await opener.sessions.open(dr, [P1], gateway.now)] == [P1]  # was []
    board.take = real_take  # type: ignore[method-assign]
    assert await opener.close_expired("rid-2", None) == 0  # not asked again at once (R7c-3)
    gateway.now += HELD_RETRY
    assert await opener.close_expired("rid-2", None) == 1  # the old session's stop
    assert opener.sessions.open_count(gateway.now) == 1  # the new one open
