"""Break-the-glass sessions shared by the worker processes of one SQLite store
(storage.breakglass_sqlite, pipeline.breakglass): a session one process opened is honoured by
another, which never starts a second one; it ends when its opener closes it or lapses."""

from __future__ import annotations

from pathlib import Path

from middleware.auth.identity import Identity
from middleware.pipeline.breakglass import BreakGlass
from middleware.pipeline.caller import Caller
from middleware.storage.breakglass_sqlite import SqliteSessionBoard, session_board

P1, P2 = "Patient/p1", "Patient/p2"


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
        BreakGlass(10, board=SqliteSessionBoard(path)),
        BreakGlass(10, board=SqliteSessionBoard(path)),
    )


def test_a_session_opened_by_one_worker_is_honoured_by_the_other(tmp_path: Path) -> None:
    a, b = _workers(tmp_path)
    dr = _caller()
    assert a.open(dr, [P1], now=100.0) == [P1]
    assert b.active(dr, now=101.0) == {P1}
    # The other worker does not start a second, separately recorded session.
    assert b.open(dr, [P1], now=101.0) == []
    assert b.expire(now=10_000.0) == []  # not its session to close
    # Another caller, or the same subject's token without the permission, gets nothing.
    assert b.active(_caller(subject="other"), now=101.0) == frozenset()
    assert b.active(_caller(glass=False), now=101.0) == frozenset()


def test_the_session_ends_for_every_worker_when_it_is_over(tmp_path: Path) -> None:
    a, b = _workers(tmp_path)
    dr = _caller()
    a.open(dr, [P1, P2], now=100.0)
    end = 100.0 + 600
    assert b.active(dr, now=end - 1) == {P1, P2}
    assert b.active(dr, now=end) == frozenset()  # lapsed, even before its stop is recorded
    stopped = a.expire(now=end)
    assert sorted(s.patient for s in stopped) == [P1, P2]
    # A new request may open a new session anywhere, recorded by the worker that opens it.
    assert b.open(dr, [P1], now=end + 1) == [P1]
    assert a.active(dr, now=end + 2) == {P1}


def test_a_late_close_does_not_end_a_newer_session(tmp_path: Path) -> None:
    board = SqliteSessionBoard(tmp_path / "x.sessions")
    assert board.claim("dr", P1, ends=700.0, now=100.0)
    assert not board.claim("dr", P1, ends=800.0, now=200.0)  # open: refused
    assert board.claim("dr", P1, ends=1400.0, now=800.0)  # lapsed: replaced
    board.release("dr", P1, ends=700.0)  # the first session's stop, recorded late
    assert board.active("dr", now=900.0) == {P1}
    board.release("dr", P1, ends=1400.0)
    assert board.active("dr", now=900.0) == frozenset()
    board.close()


def test_only_a_sqlite_store_has_a_board(tmp_path: Path) -> None:
    board = session_board(f"sqlite:{tmp_path / 'x.db'}")
    assert board is not None
    assert board.path == tmp_path / "x.db.sessions"
    assert session_board("memory:") is None
    assert session_board("postgresql://db/consentry") is None
