"""Break-the-glass sessions shared by the worker processes of one SQLite store
(storage.breakglass_sqlite, pipeline.breakglass): a session one process opened is honoured by
another, which never starts a second one; it ends when its opener closes it or lapses."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from middleware.auth.identity import Identity
from middleware.errors import ServiceUnavailable
from middleware.pipeline.breakglass import BreakGlass
from middleware.pipeline.caller import Caller
from middleware.storage.breakglass_sqlite import SqliteSessionBoard, session_board

P1, P2 = "Patient/p1", "Patient/p2"
KEY = bytes(range(32))


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


def _workers(tmp_path: Path) -> tuple[BreakGlass, BreakGlass]:
    """Two processes' session keepers, each with its own connection to one board file."""
    path = tmp_path / "x.db.sessions"
    return (
        BreakGlass(10, board=SqliteSessionBoard(path, KEY)),
        BreakGlass(10, board=SqliteSessionBoard(path, KEY)),
    )


async def test_a_session_opened_by_one_worker_is_honoured_by_the_other(tmp_path: Path) -> None:
    a, b = _workers(tmp_path)
    dr = _caller()
    assert await a.open(dr, [P1], now=100.0) == [P1]
    assert b.active(dr, 101.0, [P1, P2]) == {P1}
    # The other worker does not start a second, separately recorded session.
    assert await b.open(dr, [P1], now=101.0) == []
    assert b.expire(now=10_000.0) == []  # not its session to close
    # Another caller, or the same subject's token without the permission, gets nothing.
    assert b.active(_caller(subject="other"), 101.0, [P1, P2]) == frozenset()
    assert b.active(_caller(glass=False), 101.0, [P1, P2]) == frozenset()


async def test_the_session_ends_for_every_worker_when_it_is_over(tmp_path: Path) -> None:
    a, b = _workers(tmp_path)
    dr = _caller()
    await a.open(dr, [P1, P2], now=100.0)
    end = 100.0 + 600
    assert b.active(dr, end - 1, [P1, P2]) == {P1, P2}
    assert b.active(dr, end, [P1, P2]) == frozenset()  # lapsed, even before its stop is recorded
    stopped = a.expire(now=end)
    assert sorted(s.patient for s in stopped) == [P1, P2]
    # A new request may open a new session anywhere, recorded by the worker that opens it.
    assert await b.open(dr, [P1], now=end + 1) == [P1]
    assert a.active(dr, end + 2, [P1, P2]) == {P1}


async def test_a_late_close_does_not_end_a_newer_session(tmp_path: Path) -> None:
    board = SqliteSessionBoard(tmp_path / "x.sessions", KEY)
    assert await board.claim("dr", P1, ends=700.0, now=100.0)
    assert not await board.claim("dr", P1, ends=800.0, now=200.0)  # open: refused
    assert await board.claim("dr", P1, ends=1400.0, now=800.0)  # lapsed: replaced
    board.release("dr", P1, ends=700.0).result(5)  # the first session's stop, recorded late
    assert board.active("dr", [P1], now=900.0) == {P1}
    board.release("dr", P1, ends=1400.0).result(5)
    assert board.active("dr", [P1], now=900.0) == frozenset()
    board.close()


def test_only_a_sqlite_store_has_a_board(tmp_path: Path) -> None:
    board = session_board(f"sqlite:{tmp_path / 'x.db'}", KEY)
    assert board is not None
    assert board.path == tmp_path / "x.db.sessions"
    assert session_board("memory:", KEY) is None
    assert session_board("postgresql://db/consentry", KEY) is None


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
    assert other.active("iss\x00dr-lee\x00", ["Patient/ada-4711"], 200.0) == {"Patient/ada-4711"}

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
    assert glass.active(_caller(), 101.0, [P1]) == frozenset()  # unreadable: nothing honoured
    assert glass.open_count(101.0) == 0
