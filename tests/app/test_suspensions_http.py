"""``Patient/<id>/$accounting`` honours a 45 CFR 164.528(a)(2) suspension recorded on the
ledger (the admin entry ``consentry audit suspend`` appends): while it is in force the
agency's disclosures are not listed; once it has expired they are, including those made
while it lasted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.audit.suspensions import suspension_evidence
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, auth_settings

AUDITOR_ROLE = "ledger-auditor"
DAY_S = 86_400


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


async def _listed(client: httpx.AsyncClient, tokens: Tokens) -> set[str]:
    """The recipients the CSV accounting of p1 lists."""
    who = tokens.bearer(
        "officer", "user/AuditEvent.rs", fhir_user="Practitioner/officer", roles=[AUDITOR_ROLE]
    )
    got = await client.get("/fhir/Patient/p1/$accounting", headers=who, params={"_format": "csv"})
    assert got.status_code == 200
    return {name for name in ("dr-police", "dr-research") if name in got.text}


async def test_a_suspension_in_force_hides_the_agency_until_it_expires(
    client: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    signer: SigningKey,
    wall: WallClock,
) -> None:
    for sub in ("dr-police", "dr-research"):
        who = tokens.bearer(
            sub, "user/Patient.rs", fhir_user=f"Practitioner/{sub}", purpose_of_use=["HRESCH"]
        )
        assert (await client.get("/fhir/Patient/p1", headers=who)).status_code == 200
    assert await _listed(client, tokens) == {"dr-police", "dr-research"}
    now_us = int(wall.now * 1_000_000)
    evidence = suspension_evidence(
        agency="Practitioner/dr-police",
        end_us=now_us + 10 * DAY_S * 1_000_000,
        oral=False,
        reason="investigation",
        operator="officer",
    )
    entry = NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=now_us)
    await store.append([entry], sign=checkpoint_signer(signer, signer.name))
    assert await _listed(client, tokens) == {"dr-research"}
    wall.now += 11 * DAY_S  # expired: listed again, made while it lasted or not
    assert await _listed(client, tokens) == {"dr-police", "dr-research"}
