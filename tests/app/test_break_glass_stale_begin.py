"""A start append that outlasts its session (review R7c-1), through the request path.

R1 gives the reason and its start append is still in flight when its session's time is over
(or the clock steps). R2 gives the reason too. Was: R2 opened a second session S2 (the first,
still pending, was closed as expired); R1's ``begin`` (keyed by caller and patient) marked S2
started; S2's own start then failed and ``abandon`` skipped it (no longer pending): S2 was
honoured without the header with no 110127 start of its own. Now a pending session, expired or
not, refuses a second claim (503, retry) and ``begin``/``abandon`` act on the very sessions
``open`` returned.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from middleware.audit.recorder import AuditRecorder
from middleware.errors import ServiceUnavailable
from middleware.ledger.signing import SigningKey
from middleware.pipeline.breakglass import BreakGlass
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, ledger_entries
from tests.app.test_break_glass import deny_dr, doctor, gateway, tokens  # noqa: F401
from tests.unit.proxy.test_glass_stops import _caller

DENIED = (403, 404)
P1 = "Patient/p1"


async def test_a_start_outlasting_its_session_starts_no_other(
    gateway: httpx.AsyncClient,  # noqa: F811
    tokens: Tokens,  # noqa: F811
    store: MemoryLogStore,
    signer: SigningKey,
    wall: WallClock,
    monkeypatch: Any,
) -> None:
    await deny_dr(gateway, tokens, "p1")
    plain = doctor(tokens, glass=True)
    real = AuditRecorder.record_break_glass
    gate, waiting, starts = asyncio.Event(), asyncio.Event(), []

    async def held(self: AuditRecorder, event: Any, **kw: Any) -> list[int]:
        if event == "started":
            starts.append(kw)
            if len(starts) == 1:  # R1's start: in flight until released
                waiting.set()
                await gate.wait()
            else:  # any later start the ledger refuses (S2's, in the repro)
                raise ServiceUnavailable("ledger refused the second start")
        return await real(self, event, **kw)

    monkeypatch.setattr(AuditRecorder, "record_break_glass", held)
    url = "/fhir/Observation/o-p1"
    r1 = asyncio.create_task(gateway.get(url, headers={**plain, "x-break-glass-reason": "one"}))
    await asyncio.wait_for(waiting.wait(), 5)
    wall.now += 10 * 60 + 1  # R1's start append outlives its session (or the clock steps)
    r2 = await gateway.get(url, headers={**plain, "x-break-glass-reason": "two"})
    assert r2.status_code == 503  # was: S2 opened, then begun by R1
    gate.set()
    assert (await r1).status_code == 200
    during = await gateway.get(url, headers=plain)
    assert during.status_code in DENIED  # was 200: S2 honoured with no start of its own
    wall.now += 5 * 60
    assert (await gateway.get(url, headers=plain)).status_code in DENIED  # was 200
    assert len(starts) == 1  # R2 recorded no start: it opened nothing
    ledger = await ledger_entries(store, signer)
    assert sum(b"110127" in e.text for e in ledger) == 1


async def test_begin_and_abandon_act_on_the_sessions_open_returned() -> None:
    """A stale ``begin``/``abandon`` (its sessions no longer the current ones) changes nothing:
    the session opened since for the same caller and patient stays pending, then is dropped
    by its own ``abandon`` only."""
    glass = BreakGlass(10)
    dr = _caller()
    first = await glass.open(dr, [P1], 100.0)
    glass.abandon(first)
    second = await glass.open(dr, [P1], 101.0)
    await glass.begin(first)  # stale: not the current session
    assert await glass.active(dr, 102.0, [P1]) == frozenset()  # still pending
    glass.abandon(first)  # stale: the second stays
    assert glass.holding()
    glass.abandon(second)
    assert not glass.holding()
    third = await glass.open(dr, [P1], 103.0)
    await glass.begin(third)
    assert await glass.active(dr, 104.0, [P1]) == {P1}
