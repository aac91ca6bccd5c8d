"""A break-the-glass session's stop is recorded exactly once, even when its opener dies
(proxy.glass_stops, pipeline.breakglass, storage.breakglass_sqlite/_postgres): processes are
BreakGlass keepers, each on its own connection to one board (one SQLite file, or one
PostgreSQL schema), each with its own recorder on one shared ledger. Red before: an opener
killed with a session open left its start without a stop (nobody else could record it)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import pytest

from middleware.audit.facts import AuditFacts
from middleware.auth.identity import Identity
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.pipeline.breakglass import GRACE, HELD_RETRY, BreakGlass, SessionBoard
from middleware.pipeline.caller import Caller
from middleware.proxy.glass_stops import GlassStops
from middleware.storage.breakglass_postgres import PostgresSessionBoard
from middleware.storage.breakglass_rows import KEEP, RECORDED
from middleware.storage.breakglass_sqlite import LEASE, SqliteSessionBoard
from tests.contract.backends import POSTGRES, PostgresBackend
from tests.unit.audit.test_recorder import FakeLedger, Pseudonyms, opened, recorder

P1 = "Patient/ada-4711"
KEY = bytes(range(32))
START, ENDS = 100.0, 700.0  # a ten-minute session

Boards: TypeAlias = Callable[[], SessionBoard]


def _caller() -> Caller:
    identity = Identity(
        subject="dr-lee", issuer="iss", expires_at=9e9, break_the_glass=True, token_id="jti-1"
    )
    return Caller(
        identity=identity,
        principal=None,  # type: ignore[arg-type]  # not read here
        purposes=frozenset(),
        context="user",
        patient=None,
        binding="iss\x00dr-lee\x00",
    )


class Ledger(FakeLedger):
    """The shared ledger; refuses appends while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.gate: asyncio.Event | None = None  # set: appends wait for it
        self.waiting = asyncio.Event()

    async def append(self, entry: NewEntry) -> int:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        if self.down:
            raise OSError("ledger down")
        return await super().append(entry)


@dataclass
class Gateway:
    """Everything one process shares: the ledger, the pseudonym store, the clock."""

    boards: Boards
    ledger: Ledger = field(default_factory=Ledger)
    pseudonyms: Pseudonyms = field(default_factory=Pseudonyms)
    now: float = START

    def process(self) -> GlassStops:
        """One more process: its own session keeper, board connection and recorder."""
        rec, _ = recorder(self.ledger, self.pseudonyms)
        return GlassStops(rec, BreakGlass(10, board=self.boards()), lambda: self.now)

    def facts(self, event: str) -> list[AuditFacts]:
        found = [opened(e.pseudonym, e.salt, e.evidence) for e in self.ledger.entries]
        return [f for f in found if f.event == event]


@pytest.fixture(params=["sqlite", POSTGRES])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    opened_boards: list[SessionBoard] = []
    backend: PostgresBackend | None = None
    if request.param == "sqlite":

        def make() -> SessionBoard:
            opened_boards.append(SqliteSessionBoard(tmp_path / "x.db.sessions", KEY))
            return opened_boards[-1]

    else:
        backend = await PostgresBackend.create()
        schema = backend.schema

        async def named() -> str:
            return schema

        def make() -> SessionBoard:
            assert backend is not None
            opened_boards.append(PostgresSessionBoard(backend.dsn, KEY, schema=named))
            return opened_boards[-1]

    yield Gateway(make)
    for board in opened_boards:
        await board.aclose()
    if backend is not None:
        await backend.cleanup()


async def _open(stops: GlassStops, now: float = START) -> int:
    """Open a session for P1 as the enforcement does: claim, record the start, begin it (honoured
    from then on), leave the stop on the board. The start's ledger index."""
    dr = _caller()
    opened = await stops.sessions.open(dr, [P1], now)
    assert [s.patient for s in opened] == [P1]
    (index,) = await stops.recorder.record_break_glass(
        "started", identity=dr.identity, patients=[P1], request_id="rid-1", client_address=None
    )
    await stops.sessions.begin(opened)
    await stops.started(dr, opened, [index])
    return index


async def test_a_killed_openers_stop_is_recorded_once_by_another_process(
    gateway: Gateway,
) -> None:
    opener, other, third = gateway.process(), gateway.process(), gateway.process()
    start = await _open(opener)
    del opener  # killed: never heard from again
    gateway.now = ENDS
    assert await other.sweep() == 0  # over, but its opener may still record it
    gateway.now = ENDS + GRACE
    assert await other.sweep() == 1
    (stop,) = gateway.facts("break-glass-stopped")
    assert stop.patient == P1
    assert stop.caller is not None
    assert (stop.caller.subject, stop.caller.token_id) == ("dr-lee", "jti-1")
    assert stop.reason == (f"opener gone; stopped by another process (start: ledger index {start})")
    assert stop.client_address is None
    assert stop.request_id != "rid-1"
    # Recorded once: no other process, nor the same one again, records it a second time.
    gateway.now += LEASE + 1
    assert await third.sweep() == 0
    assert await other.sweep() == 0
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_a_live_opener_records_its_stop_and_nobody_else(gateway: Gateway) -> None:
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS
    assert await opener.close_expired("rid-2", "192.0.2.1") == 1
    gateway.now = ENDS + GRACE + LEASE + 1
    assert await other.sweep() == 0
    assert await opener.sweep() == 0
    (stop,) = gateway.facts("break-glass-stopped")
    assert (stop.request_id, stop.client_address, stop.reason) == ("rid-2", "192.0.2.1", None)


async def test_an_opener_late_after_another_recorded_its_stop_records_none(
    gateway: Gateway,
) -> None:
    """The opener was alive but idle (no request, no sweep) past the grace: the first to take
    the row records the stop, the other drops it."""
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS + GRACE
    assert await other.sweep() == 1
    assert await opener.close_expired("rid-3", None) == 0
    assert opener.sessions.open_count(gateway.now) == 0
    assert not opener.sessions.holding()
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_processes_sweeping_at_once_record_one_stop(gateway: Gateway) -> None:
    opener = gateway.process()
    await _open(opener)
    sweepers = [gateway.process() for _ in range(4)]
    gateway.now = ENDS + GRACE
    recorded = await asyncio.gather(*(s.sweep() for s in [opener, *sweepers]))
    assert sum(recorded) == 1
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_a_stop_being_recorded_is_not_taken_again(gateway: Gateway) -> None:
    """While one process records a stop (its append in flight), the others' sweeps and the
    opener leave it alone; the opener keeps it until the board shows it recorded."""
    opener, first, second = gateway.process(), gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS + GRACE
    gate = gateway.ledger.gate = asyncio.Event()
    recording = asyncio.create_task(first.sweep())
    await asyncio.wait_for(gateway.ledger.waiting.wait(), 5)
    gateway.ledger.gate = None  # the others' appends would go through at once
    assert await second.sweep() == 0
    assert await opener.close_expired("rid-6", None) == 0
    assert opener.sessions.holding()  # held by another's live lease: no proof yet
    gate.set()
    assert await asyncio.wait_for(recording, 5) == 1
    assert await opener.close_expired("rid-7", None) == 0  # held a moment ago: not asked
    assert opener.sessions.holding()
    gateway.now += HELD_RETRY
    assert await opener.close_expired("rid-8", None) == 0  # the row is marked recorded
    assert not opener.sessions.holding()
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_a_take_whose_taker_died_lapses_and_is_taken_again(gateway: Gateway) -> None:
    """A process killed while recording a stop (taken, not recorded) holds it for the lease
    only; then another records it."""
    opener, dying, other = gateway.process(), gateway.process(), gateway.process()
    await _open(opener)
    del opener
    gateway.now = ENDS + GRACE
    assert len(await dying.sessions.overdue(gateway.now)) == 1  # taken, then killed
    del dying
    assert await other.sweep() == 0
    gateway.now += LEASE
    assert await other.sweep() == 1
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_a_stop_the_ledger_refuses_stays_owed(gateway: Gateway) -> None:
    """Fail closed: a sweep whose append fails gives the row back at once (not only after the
    lease), and the next sweep records the stop; none is lost."""
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    del opener
    gateway.now = ENDS + GRACE
    gateway.ledger.down = True
    assert await other.sweep() == 0
    gateway.ledger.down = False
    gateway.now += 1  # well within the lease: given back, not lapsed
    assert await other.sweep() == 1
    assert len(gateway.facts("break-glass-stopped")) == 1


async def test_an_openers_stop_the_ledger_refuses_is_kept_and_recorded_later(
    gateway: Gateway,
) -> None:
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    gateway.now = ENDS
    gateway.ledger.down = True
    with pytest.raises(ServiceUnavailable):
        await opener.close_expired("rid-4", None)
    assert opener.sessions.holding()  # kept, and its row given back
    gateway.ledger.down = False
    gateway.now += 1
    assert await opener.close_expired("rid-5", None) == 1
    gateway.now = ENDS + GRACE + LEASE
    assert await other.sweep() == 0
    (stop,) = gateway.facts("break-glass-stopped")
    assert stop.request_id == "rid-5"


async def test_an_opener_whose_board_took_no_stop_records_its_own(gateway: Gateway) -> None:
    """A process opened on a board that could not keep the stop (or without any board)
    records it alone, as before boards kept stops: never zero, never twice."""
    rec, _ = recorder(gateway.ledger, gateway.pseudonyms)
    alone = GlassStops(rec, BreakGlass(10), lambda: gateway.now)
    await _open(alone)
    gateway.now = ENDS + GRACE
    assert await gateway.process().sweep() == 0
    assert await alone.sweep() == 1
    assert len(gateway.facts("break-glass-stopped")) == 1


def _leaks(path: Path) -> list[str]:
    found = []
    for p in sorted(path.parent.glob(path.name + "*")):
        data = p.read_bytes()
        found += [f"{p.name}: {w!r}" for w in (b"ada-4711", b"dr-lee", b"jti-1") if w in data]
    return found


async def test_the_owed_stop_is_sealed_in_the_file_and_gone_a_day_after_recorded(
    tmp_path: Path,
) -> None:
    """Recorded, the row keeps only the mark (the opener's proof) and goes KEEP seconds
    after its end, at the next mark."""
    path = tmp_path / "x.db.sessions"
    gateway = Gateway(lambda: SqliteSessionBoard(path, KEY))
    opener, other = gateway.process(), gateway.process()
    await _open(opener)
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM owed_stop").fetchone()
    assert rows == (1,)
    assert _leaks(path) == []
    gateway.now = ENDS + GRACE
    assert await other.sweep() == 1
    rows = sqlite3.connect(path).execute("SELECT ends, taken_until FROM owed_stop").fetchall()
    assert rows == [(ENDS, RECORDED)]
    assert (tmp_path / "x.db.sessions-wal").stat().st_size == 0  # truncated after the mark
    later = ENDS + KEEP
    await _open(other, later - 600)
    gateway.now = later
    assert await other.close_expired("rid-8", None) == 1
    rows = sqlite3.connect(path).execute("SELECT ends, taken_until FROM owed_stop").fetchall()
    assert rows == [(later, RECORDED)]  # the first row forgotten
    for stops in (opener, other):
        await stops.sessions.aclose()


async def test_the_sweep_runs_at_start_and_stops_on_close(gateway: Gateway) -> None:
    """A process starting sweeps at once what a previous incarnation left."""
    await _open(gateway.process())
    gateway.now = ENDS + GRACE
    successor = gateway.process()
    successor.every = 3600.0
    successor.start()
    for _ in range(200):
        if gateway.facts("break-glass-stopped"):
            break
        await asyncio.sleep(0.01)
    await successor.aclose()
    await successor.aclose()  # idempotent
    assert len(gateway.facts("break-glass-stopped")) == 1
