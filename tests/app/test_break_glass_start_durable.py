"""Emergency access only once its start (DICOM 110127) is on the ledger (review R7): an
expired session is never continued by a new request with the reason header, even when the
board could not close it (a new session starts, recorded); a session whose start the ledger
refused is honoured by no later request without the header. Red before: the first test got
its 200 with no start recorded, the second a 200 without the header and no start ever."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from middleware.audit.recorder import AuditRecorder
from middleware.errors import ServiceUnavailable
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, ledger_entries
from tests.app.test_break_glass import deny_dr, doctor, gateway, tokens  # noqa: F401
from tests.app.test_break_glass_stops import (  # noqa: F401
    SESSION,
    Replicas,
    _open_session,
    replicas,
)


async def test_a_new_emergency_after_a_failed_close_starts_a_session(
    replicas: Replicas,  # noqa: F811
    tokens: Tokens,  # noqa: F811
    wall: WallClock,
    signer: SigningKey,
) -> None:
    plain = await _open_session(replicas, tokens)
    a = replicas.clients[0]
    stops = replicas.apps[0].proxy.enforcement.glass_stops
    assert stops is not None
    board = stops.sessions._board
    assert board is not None
    real, failed = board.take, list[int]()

    async def flaky(*args: Any) -> Any:  # one transient board error, at the close
        if not failed:
            failed.append(1)
            raise ServiceUnavailable("board busy")
        return await real(*args)

    board.take = flaky  # type: ignore[method-assign,assignment]
    wall.now += SESSION + 1
    n = len(await ledger_entries(replicas.log, signer))
    asked = {**plain, "x-break-glass-reason": "second emergency"}
    answer = await a.get("/fhir/Observation/o-p1", headers=asked)
    assert failed
    new = (await ledger_entries(replicas.log, signer))[n:]
    assert answer.status_code == 200
    starts = [e for e in new if b"110127" in e.text]
    assert len(starts) == 1  # was 0: the expired session was continued
    assert b"second emergency" in starts[0].text


async def test_a_refused_start_leaves_no_emergency_access(
    gateway: httpx.AsyncClient,  # noqa: F811
    tokens: Tokens,  # noqa: F811
    store: MemoryLogStore,
    signer: SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await deny_dr(gateway, tokens, "p1")
    plain = doctor(tokens, glass=True)
    real, failed = AuditRecorder.record_break_glass, list[int]()

    async def flaky(self: AuditRecorder, event: Any, **kw: Any) -> list[int]:
        if event == "started" and not failed:
            failed.append(1)
            raise ServiceUnavailable("ledger down for the start")
        return await real(self, event, **kw)

    monkeypatch.setattr(AuditRecorder, "record_break_glass", flaky)
    asked = {**plain, "x-break-glass-reason": "r"}
    first = await gateway.get("/fhir/Observation/o-p1", headers=asked)
    second = await gateway.get("/fhir/Observation/o-p1", headers=plain)
    assert first.status_code == 503
    assert second.status_code in (403, 404)  # was 200: the session honoured, no start
    entries = await ledger_entries(store, signer)
    assert not any(b"110127" in e.text for e in entries)
    third = await gateway.get("/fhir/Observation/o-p1", headers=asked)
    assert third.status_code == 200
    entries = await ledger_entries(store, signer)
    assert sum(b"110127" in e.text for e in entries) == 1
