"""What a patient reader of the AuditEvent API is shown of "its own" events: a clinician's
search over two patients is recorded once per patient, each entry holding the whole raw
request (BALP entity[query]) and the clinician's network address; patient p1 reading its
events back must see neither (the request names p2 and the search criteria), while an
auditor is served the full event. The expected values come from the request the test sent."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from tests.app.consenting import Tokens, auth_settings, observation
from tests.app.test_audit_http import auditor, events, patients, restful

CLINIC = "198.51.100.23"  # the clinician's workstation (the ASGI client address)
QUERY = "subject=Patient/p1,Patient/p2&code=secret-code"


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"http://upstream.test/Observation/o-{pid}",
                "resource": {**observation(f"Patient/{pid}"), "id": f"o-{pid}"},
                "search": {"mode": "match"},
            }
            for pid in ("p1", "p2")
        ],
    }
    router.get("/Observation").respond(200, json=bundle)
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=(CLINIC, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def restful_about(found: list[dict[str, Any]], patient: str) -> list[dict[str, Any]]:
    """The RESTful search-type events of the clinician's search about ``patient``."""
    return [
        e
        for e in restful(found)
        if e["subtype"][0]["code"] == "search-type" and patients(e) == {patient}
    ]


async def two_patient_search(client: httpx.AsyncClient, tokens: Tokens) -> None:
    dr_a = tokens.bearer(
        "dr-a", "user/Observation.rs", fhir_user="Practitioner/dr-a", purpose_of_use=["TREAT"]
    )
    got = await client.get(f"/fhir/Observation?{QUERY}", headers=dr_a)
    assert got.status_code == 200, got.text


def leaks(event: dict[str, Any]) -> list[str]:
    """What of the clinician's request or workstation ``event`` shows, decoded."""
    text = json.dumps(event)
    queries = [
        base64.b64decode(e["query"]).decode() for e in event.get("entity", []) if "query" in e
    ]
    found = [q for q in queries if "Patient/p2" in q or "secret-code" in q]
    return found + ([CLINIC] if CLINIC in text else [])


async def test_a_patient_reader_sees_no_other_patient_nor_staff_address(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await two_patient_search(client, tokens)
    p1 = tokens.patient("p1", "patient/AuditEvent.rs")
    got = await client.get("/fhir/AuditEvent", headers=p1)
    assert got.status_code == 200, got.text
    mine = restful_about(events(got.json()), "Patient/p1")
    assert len(mine) == 1  # p1's entry of the two-patient search
    assert leaks(mine[0]) == []
    assert "Practitioner/dr-a" in json.dumps(mine[0])  # who looked stays
    assert not any(leaks(e) for e in events(got.json()))
    read = await client.get(f"/fhir/AuditEvent/{mine[0]['id']}", headers=p1)
    assert read.status_code == 200
    assert leaks(read.json()) == []
    assert read.json() == mine[0]


async def test_an_auditor_is_served_the_full_event(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await two_patient_search(client, tokens)
    got = await client.get("/fhir/AuditEvent", params={"patient": "p1"}, headers=auditor(tokens))
    (full,) = restful_about(events(got.json()), "Patient/p1")
    assert len(leaks(full)) == 2  # the raw request naming p2, and the workstation
    read = await client.get(f"/fhir/AuditEvent/{full['id']}", headers=auditor(tokens))
    assert read.json() == full
