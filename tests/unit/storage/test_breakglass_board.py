"""Break-the-glass sessions shared by the processes of one gateway (storage.breakglass_sqlite:
the worker processes of one SQLite store; storage.breakglass_postgres: every replica of a
PostgreSQL store; pipeline.breakglass): a session one process opened is honoured by another,
which never starts a second one; it ends when its opener closes it or lapses. The behaviour
tests run on both boards; the file tests are SQLite's, the table tests PostgreSQL's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeAlias

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.auth.identity import Identity
from middleware.errors import ServiceUnavailable
from middleware.pipeline.breakglass import BreakGlass, SessionBoard
from middleware.pipeline.caller import Caller
from middleware.storage.breakglass_open import session_board
from middleware.storage.breakglass_postgres import PostgresSessionBoard
from middleware.storage.breakglass_sqlite import SqliteSessionBoard
from tests.contract.backends import POSTGRES, PostgresBackend

P1, P2 = "Patient/p1", "Patient/p2"
KEY = bytes(range(32))

#: Opens one more board on the shared location (as another process or replica would).
Boards: TypeAlias = Callable[[], SessionBoard]


def _caller(*, glass: bool = True, subject: str = "dr") -> Caller:
    identity = Identity(subject=subject, issuer="iss", expires_at=9e9, break_the_glass=glass)
    return Caller(
        identity=identity,
        principal=None,  # type: ignore[arg-type]  # not read by BreakGlass
        purposes=frozenset(),
        context="user",
        patient=None,
        binding=f"iss\x00{subject}\x00",
    )


@pytest.fixture(params=["sqlite", POSTGRES])
async def boards(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Boards]:
    """Boards on one SQLite file, or on one PostgreSQL schema (fresh, dropped after)."""
    opened: list[SessionBoard] = []
    backend: PostgresBackend | None = None
    if request.param == "sqlite":
        path = tmp_path / "x.db.sessions"

        def make() -> SessionBoard:
            opened.append(SqliteSessionBoard(path, KEY))
            return opened[-1]

    else:
        backend = await PostgresBackend.create()
        schema = backend.schema

        async def named() -> str:
            return schema

        def make() -> SessionBoard:
            assert backend is not None
            opened.append(PostgresSessionBoard(backend.dsn, KEY, schema=named))
            return opened[-1]

    yield make
    for board in opened:
        await board.aclose()
    if backend is not None:
        await backend.cleanup()


def _workers(boards: Boards) -> tuple[BreakGlass, BreakGlass]:
    """Two processes' session keepers, each with its own connection to one board."""
    return BreakGlass(10, board=boards()), BreakGlass(10, board=boards())


async def test_a_session_opened_by_one_worker_is_honoured_by_the_other(boards: Boards) -> None:
    a, b = _workers(boards)
    dr = _caller()
    opened = await a.open(dr, [P1], now=100.0)
    assert [s.patient for s in opened] == [P1]
    assert await b.active(dr, 101.0, [P1, P2]) == frozenset()  # its start not yet durable
    await a.begin(opened)  # the start is on the ledger
    assert await b.active(dr, 101.0, [P1, P2]) == {P1}
    # The other worker does not start a second, separately recorded session.
    assert await b.open(dr, [P1], now=101.0) == []
    assert await b.expire(now=10_000.0) == []  # not its session to close
    # Another caller, or the same subject's token without the permission, gets nothing.
    assert await b.active(_caller(subject="other"), 101.0, [P1, P2]) == frozenset()
    assert await b.active(_caller(glass=False), 101.0, [P1, P2]) == frozenset()


async def test_the_session_ends_for_every_worker_when_it_is_over(boards: Boards) -> None:
    a, b = _workers(boards)
    dr = _caller()
    await a.begin(await a.open(dr, [P1, P2], now=100.0))
    end = 100.0 + 600
    assert await b.active(dr, end - 1, [P1, P2]) == {P1, P2}
    assert (
        await b.active(dr, end, [P1, P2]) == frozenset()
    )  # lapsed, even before its stop is recorded
    stopped = await a.expire(now=end)
    assert sorted(s.patient for s in stopped) == [P1, P2]
    # A new request may open a new session anywhere, recorded by the worker that opens it.
    opened = await b.open(dr, [P1], now=end + 1)
    assert [s.patient for s in opened] == [P1]
    await b.begin(opened)
    assert await a.active(dr, end + 2, [P1, P2]) == {P1}


async def _released(done: object) -> None:
    """Wait for a release, whichever board queued it (a thread's future or a task)."""
    if isinstance(done, asyncio.Future | asyncio.Task):
        await done
    else:
        assert isinstance(done, concurrent.futures.Future)
        await asyncio.wrap_future(done)


async def test_a_late_close_does_not_end_a_newer_session(boards: Boards) -> None:
    board, other = boards(), boards()
    assert await board.claim("dr", P1, ends=700.0, now=100.0)
    await board.confirm("dr", P1, ends=700.0)
    assert not await other.claim("dr", P1, ends=800.0, now=200.0)  # open: refused
    assert await other.claim("dr", P1, ends=1400.0, now=800.0)  # lapsed: replaced
    await other.confirm("dr", P1, ends=1400.0)
    await _released(board.release("dr", P1, ends=700.0))  # the first one's stop, late
    assert await board.active("dr", [P1], now=900.0) == {P1}
    await _released(other.release("dr", P1, ends=1400.0))
    assert await board.active("dr", [P1], now=900.0) == frozenset()


async def test_two_processes_claiming_at_once_open_one_session(boards: Boards) -> None:
    """Claims race (one emergency request routed to two replicas at once): one wins; the
    others are refused (503, retry) while its start is undecided, never told "open"."""
    racers = [boards() for _ in range(4)]
    won = await asyncio.gather(
        *(b.claim("dr", P1, ends=700.0, now=100.0) for b in racers), return_exceptions=True
    )
    assert won.count(True) == 1
    assert sum(isinstance(w, ServiceUnavailable) for w in won) == 3
    await racers[won.index(True)].confirm("dr", P1, ends=700.0)
    assert await racers[0].claim("dr", P1, ends=800.0, now=200.0) is False  # started: open


def test_each_store_has_its_board(tmp_path: Path) -> None:
    board = session_board(f"sqlite:{tmp_path / 'x.db'}", KEY)
    assert isinstance(board, SqliteSessionBoard)
    assert board.path == tmp_path / "x.db.sessions"
    assert session_board("memory:", KEY) is None
    assert isinstance(session_board("postgresql://db/consentry", KEY), PostgresSessionBoard)


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


async def test_the_file_never_names_the_patient_or_the_caller(tmp_path: Path) -> None:
    """A row is a keyed digest: after a claim, a lapse and a release neither the file nor its
    -wal holds the patient's id or the caller's subject (red before: the patient's reference
    was a column, in the file and its WAL, and lapsed rows stayed forever)."""
    path = tmp_path / "x.db.sessions"
    board, other = SqliteSessionBoard(path, KEY), SqliteSessionBoard(path, KEY)
    assert await board.claim("iss\x00dr-lee\x00", "Patient/ada-4711", ends=700.0, now=100.0)
    assert await board.claim("iss\x00dr-lee\x00", "Patient/bob-0815", ends=700.0, now=100.0)
    await board.confirm("iss\x00dr-lee\x00", "Patient/ada-4711", ends=700.0)
    assert await other.active("iss\x00dr-lee\x00", ["Patient/ada-4711"], 200.0) == {
        "Patient/ada-4711"
    }

    def leaks() -> list[str]:
        found = []
        for name, data in _files(path).items():
            found += [f"{name}: {w!r}" for w in (b"ada-4711", b"bob-0815", b"dr-lee") if w in data]
        return found

    assert leaks() == []
    # A lapsed row (its opener was killed) is deleted by the next claim, anywhere.
    assert await other.claim("iss\x00x\x00", "Patient/p9", ends=1700.0, now=800.0)
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM open_session").fetchone()
    assert rows == (1,)
    other.release("iss\x00x\x00", "Patient/p9", ends=1700.0).result(5)
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM open_session").fetchone()
    assert rows == (0,)
    assert leaks() == []
    assert (tmp_path / "x.db.sessions-wal").stat().st_size == 0  # truncated after the deletes
    assert os.stat(path).st_mode & 0o077 == 0
    board.close()
    other.close()


async def test_the_first_versions_table_is_dropped_and_its_pages_zeroed(tmp_path: Path) -> None:
    path = tmp_path / "x.db.sessions"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE session (binding TEXT, patient TEXT, ends REAL)")
    old.execute("INSERT INTO session VALUES (?, ?, 9e9)", ("iss\x00dr\x00", "Patient/ada-4711"))
    old.commit()
    old.close()
    assert any(b"ada-4711" in data for data in _files(path).values())
    board = SqliteSessionBoard(path, KEY)
    assert await board.claim("dr", P1, ends=700.0, now=100.0)
    assert all(b"ada-4711" not in data for data in _files(path).values())
    board.close()


async def test_a_claim_the_board_cannot_take_is_a_503_and_opens_nothing(tmp_path: Path) -> None:
    """Fail closed with a retryable answer (red before: the raw sqlite3.Error made a 500)."""
    path = tmp_path / "x.db.sessions"
    path.write_bytes(b"not a database, " * 512)
    glass = BreakGlass(10, board=SqliteSessionBoard(path, KEY))
    with pytest.raises(ServiceUnavailable) as raised:
        await glass.open(_caller(), [P1], now=100.0)
    assert raised.value.retry_after
    assert await glass.active(_caller(), 101.0, [P1]) == frozenset()  # unreadable: nothing honoured
    assert glass.open_count(101.0) == 0


# PostgreSQL's table: digests only, and a database it cannot reach fails closed.


@pytest.mark.integration
async def test_the_table_never_names_the_patient_or_the_caller() -> None:
    backend = await PostgresBackend.create()
    schema = backend.schema

    async def named() -> str:
        return schema

    board = PostgresSessionBoard(backend.dsn, KEY, schema=named)
    try:
        assert await board.claim("iss\x00dr-lee\x00", "Patient/ada-4711", ends=700.0, now=100.0)
        # A lapsed row (its replica was killed) is deleted by the next claim, anywhere.
        assert await board.claim("iss\x00x\x00", "Patient/p9", ends=1700.0, now=800.0)
        conn = await asyncpg.connect(backend.dsn, server_settings={"search_path": schema})
        try:
            rows = await conn.fetch(
                "SELECT id, claim_ends AS ends FROM consentry_breakglass_sessions"
            )
        finally:
            await conn.close()
        assert [(len(r["id"]), r["ends"]) for r in rows] == [(32, 1700.0)]
        assert all(b"p9" not in bytes(r["id"]) for r in rows)
    finally:
        await board.aclose()
        await backend.cleanup()


async def test_a_database_it_cannot_reach_is_a_503_and_honours_nothing() -> None:
    """Fail closed: the claim is refused with a retryable answer, a check finds nothing."""

    async def named() -> str:
        return "public"

    dead = PostgresSessionBoard("postgresql://127.0.0.1:1/none", KEY, schema=named)
    glass = BreakGlass(10, board=dead)
    with pytest.raises(ServiceUnavailable) as raised:
        await glass.open(_caller(), [P1], now=100.0)
    assert raised.value.retry_after
    assert await glass.active(_caller(), 101.0, [P1]) == frozenset()
    await glass.aclose()
