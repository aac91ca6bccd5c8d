"""Emergency access only once its start is durable, through the request path (review R7b):
a request claiming several patients whose later claim fails keeps none of them; a request
without the reason header never opens (renews) a session; a session whose start is in flight
or was refused is honoured by no other replica, even when the release of its claim is lost.
Red before: each test's assertion marked "was".
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.audit.recorder import AuditRecorder
from middleware.errors import ServiceUnavailable
from middleware.ledger.signing import SigningKey
from middleware.pipeline.breakglass import PENDING, BreakGlass
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, auth_settings, ledger_entries, observation
from tests.app.test_break_glass import BTG_SCOPE, deny_dr, doctor, gateway, tokens  # noqa: F401
from tests.app.test_break_glass_stops import (  # noqa: F401
    Replicas,
    _open_session,
    replicas,
)

DENIED = (403, 404)


def _starts(entries: list[Any]) -> int:
    return sum(b"110127" in e.text for e in entries)


async def test_a_failed_second_claim_keeps_no_session(
    make_app: Any,
    dev_key_file: Path,
    router: respx.Router,
    tokens: Tokens,  # noqa: F811
    tmp_path: Path,
    store: MemoryLogStore,
    signer: SigningKey,
) -> None:
    """One request overrides p1 and p2; the board takes p1's claim and fails on p2's: nothing
    is released and p1 is honoured nowhere (was: p1 kept, in memory and on the board, with no
    start on the ledger; the next request without the header got 200)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"http://upstream.test/Observation/o-{p}",
                "resource": {**observation(f"Patient/{p}"), "id": f"o-{p}"},
                "search": {"mode": "match"},
            }
            for p in ("p1", "p2")
        ],
    }
    router.get("/Observation").respond(200, json=bundle)
    router.get("/Observation/o-p1").respond(
        200,
        json={**observation("Patient/p1"), "id": "o-p1"},
        headers={"content-type": "application/fhir+json"},
    )
    app = make_app(
        auth=auth_settings(dev_key_file, break_glass_scope=BTG_SCOPE),
        consent_jurisdiction="opt-out",
        break_glass_minutes=10,
        store=f"sqlite:{tmp_path / 'x.db'}",
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        await deny_dr(client, tokens, "p1")
        await deny_dr(client, tokens, "p2")
        stops = app.proxy.enforcement.glass_stops
        board = stops.sessions._board
        real, calls = board.claim, list[str]()

        async def flaky(*args: Any) -> bool:
            calls.append(args[1])
            if len(calls) == 2:
                raise ServiceUnavailable("board busy")
            return bool(await real(*args))

        board.claim = flaky
        plain = doctor(tokens, glass=True)
        first = await client.get(
            "/fhir/Observation?subject=Patient/p1,Patient/p2",
            headers={**plain, "x-break-glass-reason": "r"},
        )
        assert calls == ["Patient/p1", "Patient/p2"]
        assert first.status_code == 503
        assert not stops.sessions.holding()
        second = await client.get("/fhir/Observation/o-p1", headers=plain)
        assert second.status_code in DENIED  # was 200: p1 honoured, no start anywhere
        assert _starts(await ledger_entries(store, signer)) == 0
        board.claim = real
        third = await client.get(
            "/fhir/Observation/o-p1", headers={**plain, "x-break-glass-reason": "again"}
        )
        assert third.status_code == 200
        assert _starts(await ledger_entries(store, signer)) == 1  # was 0: no start recorded
    await app.aclose()


async def test_a_request_without_the_reason_never_renews_a_session(
    gateway: httpx.AsyncClient,  # noqa: F811
    tokens: Tokens,  # noqa: F811
    store: MemoryLogStore,
    signer: SigningKey,
    wall: WallClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session ends between the override decision and the end of a request without the
    header: it is not renewed (was: a new ten-minute session opened, its start recorded with
    no reason, honoured five minutes after the first one's end)."""
    await deny_dr(gateway, tokens, "p1")
    plain = doctor(tokens, glass=True)
    asked = {**plain, "x-break-glass-reason": "unconscious"}
    assert (await gateway.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    wall.now += 10 * 60 - 1  # one second left
    real = BreakGlass.active

    async def decided_then_time_passes(
        self: BreakGlass, caller: Any, now: float, among: Any
    ) -> frozenset[str]:
        got = await real(self, caller, now, among)
        if got:
            wall.now += 2  # past the end before open() runs
        return got

    monkeypatch.setattr(BreakGlass, "active", decided_then_time_passes)
    inside = await gateway.get("/fhir/Observation/o-p1", headers=plain)
    monkeypatch.setattr(BreakGlass, "active", real)
    assert inside.status_code == 200  # decided inside the session
    wall.now += 5 * 60
    later = await gateway.get("/fhir/Observation/o-p1", headers=plain)
    assert later.status_code in DENIED  # was 200: renewed without the reason
    assert _starts(await ledger_entries(store, signer)) == 1  # was 2


def _gate_starts(
    monkeypatch: pytest.MonkeyPatch, *, fail: bool
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every start append until the first event is set (the second is set once one is
    held); then refuse it (``fail``) or record it."""
    real, gate, waiting = AuditRecorder.record_break_glass, asyncio.Event(), asyncio.Event()

    async def held(self: AuditRecorder, event: Any, **kw: Any) -> list[int]:
        if event == "started":
            waiting.set()
            await gate.wait()
            if fail:
                raise ServiceUnavailable("ledger down for the start")
        return await real(self, event, **kw)

    monkeypatch.setattr(AuditRecorder, "record_break_glass", held)
    return gate, waiting


async def test_a_session_whose_start_is_in_flight_is_honoured_by_no_other_replica(
    replicas: Replicas,  # noqa: F811
    tokens: Tokens,  # noqa: F811
    wall: WallClock,
    signer: SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = await _open_session(replicas, tokens)
    a, b = replicas.clients
    wall.now += 10 * 60 + 1  # the first session is over; a second emergency, on A
    gate, waiting = _gate_starts(monkeypatch, fail=False)
    asked = {**plain, "x-break-glass-reason": "second emergency"}
    opening = asyncio.create_task(a.get("/fhir/Observation/o-p1", headers=asked))
    await asyncio.wait_for(waiting.wait(), 5)  # A's claim is on the board, its start held
    during = await b.get("/fhir/Observation/o-p1", headers=plain)
    assert during.status_code in DENIED  # was 200: honoured before its start was durable
    racing = await b.get("/fhir/Observation/o-p1", headers=asked)
    assert racing.status_code == 503  # was 200: released on A's undecided start
    gate.set()
    assert (await opening).status_code == 200
    after = await b.get("/fhir/Observation/o-p1", headers=plain)
    assert after.status_code == 200  # started: honoured everywhere
    assert _starts(await ledger_entries(replicas.log, signer)) == 2


async def test_a_session_whose_start_failed_is_honoured_nowhere(
    replicas: Replicas,  # noqa: F811
    tokens: Tokens,  # noqa: F811
    wall: WallClock,
    signer: SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger refuses A's start and A's release of the claim is lost: the pending row
    left on the board is honoured by no replica (was: honoured by B until the session's end,
    with no start anywhere), and after ``PENDING`` seconds a new emergency opens anew."""
    plain = await _open_session(replicas, tokens)
    a, b = replicas.clients
    wall.now += 10 * 60 + 1
    board = replicas.stops(0).sessions._board
    assert board is not None
    monkeypatch.setattr(board, "release", lambda *args: None)  # the release is lost
    gate, _ = _gate_starts(monkeypatch, fail=True)
    gate.set()
    asked = {**plain, "x-break-glass-reason": "second emergency"}
    assert (await a.get("/fhir/Observation/o-p1", headers=asked)).status_code == 503
    assert not replicas.stops(0).sessions._sessions
    for client in (a, b):
        answer = await client.get("/fhir/Observation/o-p1", headers=plain)
        assert answer.status_code in DENIED  # was 200 on B
    monkeypatch.undo()
    wall.now += PENDING
    assert (await b.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    assert _starts(await ledger_entries(replicas.log, signer)) == 2
