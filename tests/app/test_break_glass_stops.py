"""A break-the-glass session's stop (DICOM 110138, tagged for review) is on the ledger once,
even when the replica that opened the session dies: two gateways on one PostgreSQL schema
(tests/app/shared_schema.py), one opening a session through a request, the other sweeping
(proxy.glass_stops). A dead replica is one that never acts again (no request, no sweep; a
closed gateway records no stop). Red before: nobody but the opener could record the stop, so
its death left a start without a stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.ledger.signing import SigningKey
from middleware.pipeline.breakglass import GRACE
from middleware.proxy.glass_stops import GlassStops
from middleware.settings import Settings
from middleware.storage.ledger_postgres import PostgresLogStore
from tests.app.conftest import UPSTREAM, WallClock
from tests.app.consenting import Tokens, auth_settings, ledger_entries, observation, r5_consent
from tests.app.shared_schema import clients_of, gateways_on_one_schema
from tests.app.test_operations import Lifespan

pytestmark = pytest.mark.integration

BTG_SCOPE = "consentry/break-glass"
DR = "Practitioner/dr"
SESSION = 10 * 60


@dataclass
class Replicas:
    apps: list[Gateway]
    clients: list[httpx.AsyncClient]
    log: PostgresLogStore

    def stops(self, replica: int) -> GlassStops:
        stops = self.apps[replica].proxy.enforcement.glass_stops
        assert stops is not None
        return stops


@pytest.fixture
async def replicas(
    key_file: Path, make_settings: Callable[..., Settings], signer: SigningKey, wall: WallClock
) -> AsyncIterator[Replicas]:
    def settings(dsn: str) -> Settings:
        return make_settings(
            store=dsn,
            auth=auth_settings(key_file, break_glass_scope=BTG_SCOPE),
            consent_jurisdiction="opt-out",
            break_glass_minutes=SESSION // 60,
        )

    router = respx.Router(assert_all_called=False, base_url=UPSTREAM)
    router.get("/Observation/o-p1").respond(
        200,
        json={**observation("Patient/p1"), "id": "o-p1"},
        headers={"content-type": "application/fhir+json"},
    )
    upstream = httpx.MockTransport(router.async_handler)
    async with (
        gateways_on_one_schema(settings, signer, upstream, wall_clock=wall) as shared,
        clients_of(shared.apps, peer=("203.0.113.7", 50000)) as clients,
    ):
        yield Replicas(shared.apps, clients, shared.log)


async def _open_session(replicas: Replicas, tokens: Tokens) -> dict[str, str]:
    """Patient p1 refuses Practitioner/dr, who breaks the glass through replica A; the
    doctor's headers without the reason."""
    a = replicas.clients[0]
    provision = {"actor": [{"reference": {"reference": DR}}]}
    body = r5_consent("Patient/p1", "permit", provision=[provision])
    answer = await a.post("/fhir/Consent", json=body, headers=tokens.patient("p1"))
    assert answer.status_code == 201, answer.text
    plain = tokens.bearer("dr", f"user/*.rs {BTG_SCOPE}", fhir_user=DR)
    asked = {**plain, "x-break-glass-reason": "unconscious patient in ED"}
    assert (await a.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    return plain


async def _stops(replicas: Replicas, signer: SigningKey) -> list[bytes]:
    entries = await ledger_entries(replicas.log, signer)
    assert sum(b"110127" in e.text for e in entries) == 1
    return [e.text for e in entries if b"110138" in e.text]


async def test_a_dead_openers_stop_is_recorded_once_by_another_replica(
    replicas: Replicas, tokens: Tokens, wall: WallClock, signer: SigningKey
) -> None:
    plain = await _open_session(replicas, tokens)
    # Replica A dies with the session open; B honours it until it ends, then not.
    b = replicas.clients[1]
    assert (await b.get("/fhir/Observation/o-p1", headers=plain)).status_code == 200
    wall.now += SESSION
    assert (await b.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404
    assert await replicas.stops(1).sweep() == 0  # A may still be alive: it has GRACE
    assert await _stops(replicas, signer) == []
    wall.now += GRACE
    assert await replicas.stops(1).sweep() == 1
    (stop,) = await _stops(replicas, signer)
    assert b"opener gone" in stop
    assert b"review" in stop.lower()  # tagged for review like the opener's own stop
    assert await replicas.stops(1).sweep() == 0
    assert len(await _stops(replicas, signer)) == 1


async def test_a_live_openers_stop_is_its_own_and_the_only_one(
    replicas: Replicas, tokens: Tokens, wall: WallClock, signer: SigningKey
) -> None:
    plain = await _open_session(replicas, tokens)
    a, b = replicas.clients
    wall.now += SESSION
    assert (await a.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404
    (stop,) = await _stops(replicas, signer)
    assert b"opener gone" not in stop
    wall.now += GRACE
    assert await replicas.stops(1).sweep() == 0
    assert await replicas.stops(0).sweep() == 0
    assert (await b.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404
    assert len(await _stops(replicas, signer)) == 1


async def test_a_replica_starting_records_the_stops_a_dead_one_left(
    replicas: Replicas, tokens: Tokens, wall: WallClock, signer: SigningKey
) -> None:
    """The sweep runs at start-up (red without it: nothing was recorded until 30 s later)."""
    await _open_session(replicas, tokens)
    wall.now += SESSION + GRACE  # A died; B (re)starts after the session's end
    lifespan = Lifespan(replicas.apps[1])
    assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
    try:
        for _ in range(250):
            if await _stops(replicas, signer):
                break
            await asyncio.sleep(0.02)
        (stop,) = await _stops(replicas, signer)
        assert b"opener gone" in stop
    finally:
        await lifespan.shutdown()
