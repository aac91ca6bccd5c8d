"""Two replicas on one PostgreSQL store are one system (ARCHITECTURE "Scale": nothing in a
replica's memory is needed to serve the next request correctly). Two gateways in this
process, each with its own pools on one fresh schema and the same ledger key, sharing a
wall clock and an upstream:

- a break-the-glass session opened through A is honoured by B without the reason being given
  again, and B records no second start (storage.breakglass_postgres; red without the board:
  B answered 404);
- a paging cursor A issued redeems on B (cursor keys derive from the shared ledger key);
- a consent change through A is enforced by B on its very next request (invariant 3: the
  registry reads the ledger's consent position before each decision);
- a token revoked through the shared store is refused by both (auth.revocation), and accepted
  by both again once the revocation is lifted; the same on one SQLite file (the embedded
  default's worker processes).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.auth.revocation import Revocation
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.revocations_open import lift, record
from tests.app.conftest import UPSTREAM, WallClock
from tests.app.consenting import (
    Tokens,
    auth_settings,
    ledger_entries,
    observation,
    r5_consent,
)
from tests.app.shared_schema import clients_of, gateways_on_one_schema
from tests.contract.backends import PostgresBackend

pytestmark = pytest.mark.integration

BTG_SCOPE = "consentry/break-glass"
DR = "Practitioner/dr"


@dataclass
class Replicas:
    """Two gateways on one schema, a client of each, and what they share."""

    apps: list[Gateway]
    clients: list[httpx.AsyncClient]
    backend: PostgresBackend
    log: PostgresLogStore


def _page(ids: list[tuple[str, str]], next_offset: int | None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{UPSTREAM}/Observation?code=x&_count=2"}],
        "entry": [
            {
                "fullUrl": f"{UPSTREAM}/Observation/{oid}",
                "resource": {**observation(f"Patient/{pid}"), "id": oid},
                "search": {"mode": "match"},
            }
            for oid, pid in ids
        ],
    }
    if next_offset is not None:
        url = f"{UPSTREAM}/Observation?code=x&_count=2&_offset={next_offset}"
        bundle["link"].append({"relation": "next", "url": url})
    return bundle


PAGES = {
    "0": _page([("o1", "p1"), ("o2", "p1")], 2),
    "2": _page([("o3", "p1"), ("o4", "p1")], None),
}


def _router() -> respx.Router:
    router = respx.Router(assert_all_called=False, base_url=UPSTREAM)
    router.get("/Observation/o-p1").respond(
        200,
        json={**observation("Patient/p1"), "id": "o-p1"},
        headers={"content-type": "application/fhir+json"},
    )

    def search(request: httpx.Request) -> httpx.Response:
        offset = parse_qs(request.url.query.decode()).get("_offset", ["0"])[0]
        return httpx.Response(200, json=PAGES[offset])

    router.get("/Observation").mock(side_effect=search)
    return router


@pytest.fixture
async def replicas(
    key_file: Path, make_settings: Callable[..., Settings], signer: SigningKey, wall: WallClock
) -> AsyncIterator[Replicas]:
    def settings(dsn: str) -> Settings:
        return make_settings(
            store=dsn,
            auth=auth_settings(key_file, break_glass_scope=BTG_SCOPE),
            consent_jurisdiction="opt-out",
            break_glass_minutes=10,
        )

    upstream = httpx.MockTransport(_router().async_handler)
    async with (
        gateways_on_one_schema(settings, signer, upstream, wall_clock=wall) as shared,
        clients_of(shared.apps, peer=("203.0.113.7", 50000)) as clients,
    ):
        yield Replicas(shared.apps, clients, shared.backend, shared.log)


async def _deny_dr(client: httpx.AsyncClient, tokens: Tokens) -> str:
    """Patient p1 refuses Practitioner/dr; the consent's id."""
    provision = {"actor": [{"reference": {"reference": DR}}]}
    body = r5_consent("Patient/p1", "permit", provision=[provision])
    answer = await client.post("/fhir/Consent", json=body, headers=tokens.patient("p1"))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _doctor(tokens: Tokens, *, glass: bool = False) -> dict[str, str]:
    scopes = "user/*.rs" + (f" {BTG_SCOPE}" if glass else "")
    return tokens.bearer("dr", scopes, fhir_user=DR)


async def test_a_session_opened_on_one_replica_is_honoured_by_the_other(
    replicas: Replicas, tokens: Tokens, signer: SigningKey
) -> None:
    a, b = replicas.clients
    await _deny_dr(a, tokens)
    plain = _doctor(tokens, glass=True)
    assert (await b.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404
    asked = {**plain, "x-break-glass-reason": "unconscious patient in ED"}
    assert (await a.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    # B has not seen the request that opened it: without the shared board it asked again.
    assert (await b.get("/fhir/Observation/o-p1", headers=plain)).status_code == 200
    # B opens no second, separately reviewed session (one start on the shared ledger).
    assert (await b.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    entries = await ledger_entries(replicas.log, signer)
    assert sum(b"110127" in e.text for e in entries) == 1
    # A caller whose token does not allow break-the-glass gets nothing from the board.
    assert (await b.get("/fhir/Observation/o-p1", headers=_doctor(tokens))).status_code == 404


async def test_a_session_ends_on_every_replica(
    replicas: Replicas, tokens: Tokens, wall: WallClock
) -> None:
    a, b = replicas.clients
    await _deny_dr(a, tokens)
    plain = _doctor(tokens, glass=True)
    asked = {**plain, "x-break-glass-reason": "unconscious patient in ED"}
    assert (await a.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    wall.now += 11 * 60
    assert (await b.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404
    assert (await a.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404


async def test_a_cursor_one_replica_issued_redeems_on_the_other(
    replicas: Replicas, tokens: Tokens
) -> None:
    a, b = replicas.clients
    first = await a.get("/fhir/Observation?code=x&_count=2", headers=_doctor(tokens))
    assert first.status_code == 200
    nxt = next(link["url"] for link in first.json()["link"] if link["relation"] == "next")
    assert "_cursor=" in nxt
    second = await b.get(nxt, headers=_doctor(tokens))
    assert second.status_code == 200, second.text
    assert [e["resource"]["id"] for e in second.json()["entry"]] == ["o3", "o4"]


async def test_a_consent_change_through_one_replica_binds_the_other_at_once(
    replicas: Replicas, tokens: Tokens
) -> None:
    a, b = replicas.clients
    dr = _doctor(tokens)
    assert (await b.get("/fhir/Observation/o-p1", headers=dr)).status_code == 200
    cid = await _deny_dr(a, tokens)
    assert (await b.get("/fhir/Observation/o-p1", headers=dr)).status_code == 404
    revoked = await a.post(f"/fhir/Consent/{cid}/$revoke", headers=tokens.patient("p1"))
    assert revoked.status_code == 200
    assert (await b.get("/fhir/Observation/o-p1", headers=dr)).status_code == 200


def _jti(headers: dict[str, str]) -> str:
    payload = headers["authorization"].removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


async def test_a_token_revoked_in_the_shared_store_is_refused_by_every_replica(
    replicas: Replicas, tokens: Tokens
) -> None:
    """Both replicas have the token cached (verified once each); the revocation is recorded
    once, as ``consentry auth revoke`` does, and both refuse it, told by NOTIFY (red without
    the revocation list: the cached token stays accepted until it expires)."""
    a, b = replicas.clients
    stolen, kept = _doctor(tokens), _doctor(tokens)
    for client in (a, b):
        for headers in (stolen, kept):
            assert (await client.get("/fhir/Observation/o-p1", headers=headers)).status_code == 200
    revocation = Revocation("jti", _jti(stolen))
    await record(
        replicas.backend.dsn, revocation, reason="stolen", at=1.0, schema=replicas.backend.schema
    )
    for client in (a, b):
        for _ in range(250):  # pushed within milliseconds; 5 s at most here
            answer = await client.get("/fhir/Observation/o-p1", headers=stolen)
            if answer.status_code != 200:
                break
            await asyncio.sleep(0.02)
        assert answer.status_code == 401
        assert "revoked" in answer.headers["www-authenticate"]
        assert (await client.get("/fhir/Observation/o-p1", headers=kept)).status_code == 200
    # lifted (as `consentry auth revoke --lift` does, after its ledger entry): both accept it
    # again, told by the same NOTIFY (red before: there was no lift)
    await lift(
        replicas.backend.dsn,
        "jti",
        revocation.value,
        entry=1,
        at=2.0,
        schema=replicas.backend.schema,
    )
    for client in (a, b):
        for _ in range(250):
            answer = await client.get("/fhir/Observation/o-p1", headers=stolen)
            if answer.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert answer.status_code == 200


async def test_a_revocation_binds_every_gateway_on_one_sqlite_file(
    tmp_path: Path,
    key_file: Path,
    make_settings: Callable[..., Settings],
    signer: SigningKey,
    tokens: Tokens,
) -> None:
    """The embedded default: two gateways (as two workers) on one SQLite store see a revocation
    recorded in ``<store>.revocations`` on their very next request (red without the list)."""
    store = f"sqlite:{tmp_path / 'shared.db'}"
    settings = make_settings(
        store=store, auth=auth_settings(key_file), consent_jurisdiction="opt-out"
    )
    upstream = httpx.MockTransport(_router().async_handler)
    apps = [create_app(settings, upstream=upstream, signer=signer) for _ in range(2)]
    try:
        async with clients_of(apps) as clients:
            stolen, kept = _doctor(tokens), _doctor(tokens)
            for client in clients:
                answer = await client.get("/fhir/Observation/o-p1", headers=stolen)
                assert answer.status_code == 200
            await record(store, Revocation("jti", _jti(stolen)), reason="stolen", at=1.0)
            for client in clients:
                answer = await client.get("/fhir/Observation/o-p1", headers=stolen)
                assert answer.status_code == 401
                answer = await client.get("/fhir/Observation/o-p1", headers=kept)
                assert answer.status_code == 200
            await lift(store, "jti", _jti(stolen), entry=1, at=2.0)  # and lifted: accepted again
            for client in clients:
                answer = await client.get("/fhir/Observation/o-p1", headers=stolen)
                assert answer.status_code == 200
    finally:
        for app in apps:
            await app.aclose()
