"""What the AuditEvent API's own accesses leave on the ledger: an auditor's search about a
patient is on that patient's trail whether it named the patient by ``patient`` or by
``entity=Patient/<id>``; a bulk export's kick-off is recorded once, naming its criteria."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from tests.app.consenting import Tokens, auth_settings
from tests.app.test_audit_http import auditor, clinician, events, patients, subtype


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    router.get("/Patient/p2").respond(200, json={"resourceType": "Patient", "id": "p2"})
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def queries(event: dict[str, Any]) -> list[str]:
    """The raw requests (BALP entity[query]) ``event`` holds, decoded."""
    return [base64.b64decode(e["query"]).decode() for e in event.get("entity", []) if "query" in e]


NAMINGS = [
    ("patient", {"patient": "Patient/p2"}),
    ("patient bare id", {"patient": "p2"}),
    ("entity", {"entity": "Patient/p2"}),
]


@pytest.mark.parametrize("params", [n[1] for n in NAMINGS], ids=[n[0] for n in NAMINGS])
async def test_a_search_about_a_patient_is_on_its_trail(
    client: httpx.AsyncClient, tokens: Tokens, params: dict[str, str]
) -> None:
    officer = auditor(tokens, "officer-1")
    assert (await client.get("/fhir/AuditEvent", params=params, headers=officer)).is_success
    # p2 asks who looked at its record: the officer's search is among the answers
    p2 = tokens.patient("p2", "patient/AuditEvent.rs")
    found = events((await client.get("/fhir/AuditEvent", headers=p2)).json())
    searches = [e for e in found if subtype(e) == "search-type" and patients(e) == {"Patient/p2"}]
    assert any("Practitioner/officer-1" in str(e["agent"]) for e in searches)


async def test_a_search_about_another_entity_names_no_patient(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    officer = auditor(tokens, "officer-1")
    got = await client.get("/fhir/AuditEvent", params={"entity": "Observation/o1"}, headers=officer)
    assert got.is_success
    later = events((await client.get("/fhir/AuditEvent", headers=auditor(tokens))).json())
    (search,) = [e for e in later if any("entity=Observation" in q for q in queries(e))]
    assert patients(search) == set()


async def test_a_bulk_export_is_recorded_once_with_its_criteria(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    assert (await client.get("/fhir/Patient/p2", headers=clinician(tokens, "dr"))).is_success
    officer = {**auditor(tokens, "officer-1"), "prefer": "respond-async"}
    since = "2024-01-01T00:00:00Z"
    kick = await client.get("/fhir/AuditEvent/$export", params={"_since": since}, headers=officer)
    assert kick.status_code == 202
    for _ in range(500):
        done = await client.get(kick.headers["content-location"], headers=officer)
        if done.status_code != 202:
            break
        await asyncio.sleep(0.01)
    found = events((await client.get("/fhir/AuditEvent", headers=auditor(tokens))).json())
    rid = kick.headers["x-request-id"]
    recorded = [e for e in found if rid in str(e["entity"])]
    assert len(recorded) == 1  # the kick-off, once (its polls are entries of their own)
    (event,) = recorded
    assert subtype(event) == "operation"
    assert "Practitioner/officer-1" in str(event["agent"])
