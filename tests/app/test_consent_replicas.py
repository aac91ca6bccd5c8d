"""A consent change takes effect for the very next request on every replica (architecture
invariant 3): two gateways share one SQLite file; what one records the other enforces at once,
with no timer involved, and recompiles only when the ledger position moved."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.app import Gateway, create_app
from middleware.consent.rebuild import rebuild_from_ledger
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.settings import Settings
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.consent_sqlite import SqliteConsentStore
from tests.app.consenting import (
    ACT_REASON,
    Tokens,
    auth_settings,
    observation,
    r5_consent,
    treat_only,
)
from tests.app.shared_schema import clients_of, gateways_on_one_schema
from tests.contract.backends import POSTGRES

EXPLAIN = "/fhir/Consent/$explain"
ASK = {
    "principal": {"reference": "Practitioner/dr"},
    "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
    "resource": observation(),
}


@pytest.fixture(params=["sqlite", POSTGRES])
async def replicas(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    key_file: Path,
    make_settings: Callable[..., Settings],
    signer: SigningKey,
) -> AsyncIterator[list[Gateway]]:
    """Two gateways on one database: SQLite named by the ``store`` setting, or PostgreSQL
    (a fresh schema, dropped after) through stores injected into each."""
    auth = auth_settings(key_file)
    upstream = httpx.MockTransport(lambda _request: httpx.Response(599))
    if request.param == "sqlite":
        settings = make_settings(store=f"sqlite:{tmp_path / 'shared.db'}", auth=auth)
        yield [create_app(settings, upstream=upstream, signer=signer) for _ in range(2)]
        return
    async with gateways_on_one_schema(
        lambda dsn: make_settings(store=dsn, auth=auth), signer, upstream
    ) as shared:
        yield shared.apps


@pytest.fixture
async def clients(replicas: list[Gateway]) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with clients_of(replicas) as made:
        yield made
    for app in replicas:
        await app.aclose()


async def effect(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    answer = await client.post(EXPLAIN, json=ASK, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["effect"]


async def test_a_change_through_one_replica_is_enforced_by_the_other_at_once(
    clients: list[httpx.AsyncClient], replicas: list[Gateway], tokens: Tokens
) -> None:
    a, b = clients
    me = tokens.patient("p1")
    assert await effect(b, me) == "deny"  # opt-in, nothing recorded yet
    created = await a.post("/fhir/Consent", json=treat_only(), headers=me)
    assert created.status_code == 201
    cid = created.json()["id"]
    assert await effect(b, me) == "permit"
    assert replicas[1].consent is not None
    registry = await replicas[1].consent.service.registry()
    compiled = registry.compiled
    assert await effect(b, me) == "permit"
    assert registry.compiled == compiled  # unchanged ledger position: nothing recompiled

    revoked = await a.post(f"/fhir/Consent/{cid}/$revoke", headers=me)
    assert revoked.status_code == 200
    assert await effect(b, me) == "deny"
    # And back, through the other replica.
    back = await b.put(f"/fhir/Consent/{cid}", json=treat_only(id=cid), headers=me)
    assert back.status_code == 200
    assert back.json()["meta"]["versionId"] == "3"
    assert await effect(a, me) == "permit"


async def test_the_index_is_rebuilt_from_the_ledger(
    clients: list[httpx.AsyncClient], replicas: list[Gateway], tokens: Tokens
) -> None:
    a, _ = clients
    me = tokens.patient("p1")
    cid = (await a.post("/fhir/Consent", json=r5_consent(), headers=me)).json()["id"]
    await a.put(f"/fhir/Consent/{cid}", json=treat_only(id=cid), headers=me)
    await a.post(f"/fhir/Consent/{cid}/$revoke", headers=me)
    other = await a.post("/fhir/Consent", json=r5_consent("Patient/p2"), headers=tokens.admin())
    assert other.status_code == 201

    log = await replicas[0].ledger.store()
    assert replicas[0].consent is not None
    shared = await replicas[0].consent.service.store()
    fresh = MemoryConsentStore()
    report = await rebuild_from_ledger(log, fresh, start=0)
    assert report.consents == 4
    assert report.skipped == ()
    for consent_id in (cid, other.json()["id"]):
        assert await fresh.history(consent_id) == await shared.history(consent_id)
    for patient in ("Patient/p1", "Patient/p2"):
        assert await fresh.pseudonym(patient) == await shared.pseudonym(patient)
        assert await fresh.mark(patient) == await shared.mark(patient)
    assert await fresh.scanned() == await log.size()


async def test_the_gateway_keys_its_pseudonym_table_with_the_ledger_key(
    tmp_path: Path,
    key_file: Path,
    make_settings: Callable[..., Settings],
    signer: SigningKey,
    tokens: Tokens,
) -> None:
    """The store the gateway opens from its ``store`` setting finds pseudonyms under
    ``derive_box_key(ledger key, "pseudonyms")``: a store opened with that key on the same
    file finds the patient's, one opened with another key finds none, and the table's rows
    hold no reference."""
    path = tmp_path / "shared.db"
    settings = make_settings(store=f"sqlite:{path}", auth=auth_settings(key_file))
    upstream = httpx.MockTransport(lambda _request: httpx.Response(599))
    app = create_app(settings, upstream=upstream, signer=signer)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as client:
        created = await client.post(
            "/fhir/Consent", json=treat_only(), headers=tokens.patient("p1")
        )
        assert created.status_code == 201
    assert app.consent is not None
    stored = await (await app.consent.service.store()).pseudonym("Patient/p1")
    await app.aclose()
    assert stored is not None
    same = await SqliteConsentStore.open(path, lookup_key=derive_box_key(signer, LOOKUP_PURPOSE))
    other = await SqliteConsentStore.open(path, lookup_key=derive_box_key(signer, "other"))
    try:
        assert await same.pseudonym("Patient/p1") == stored
        assert await other.pseudonym("Patient/p1") is None
    finally:
        await same.close()
        await other.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT lookup, pseudonym FROM consentry_consent_chains").fetchall()
    db.close()
    assert [bytes(p) for _, p in rows] == [stored]
    assert [len(lookup) for lookup, _ in rows] == [32]  # a digest, not the reference
