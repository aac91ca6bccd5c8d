"""A transaction answer's entries carry no upstream free text (docs/mapping.md, security.md).

The attack: HAPI answers every transaction entry with an OperationOutcome worded
``Successfully updated resource "Observation/o-1/_history/2"``. Released as it is, that text
hands the client the upstream's own id of the record (which the id mapping exists to hide)
and, for entries of another patient's records, what the upstream found there. Each entry's
``response.outcome`` keeps only its structured part, with and without a resource.
"""

from __future__ import annotations

from typing import Any

import httpx
import respx

from tests.app.test_ids import FHIR, observation
from tests.app.test_ids_entries import answer, client

__all__ = ["client"]

_SAID = 'Successfully updated resource "Observation/o-1/_history/2".'


def _outcome() -> dict[str, Any]:
    issue = {"severity": "information", "code": "informational", "diagnostics": _SAID}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


async def test_a_transaction_entrys_upstream_outcome_loses_its_free_text(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/Observation").respond(200, json=answer("p-1", "o-1"), headers=FHIR)
    found = (await client.get("/fhir/Observation?status=final")).json()
    resource = found["entry"][0]["resource"]
    oid = resource["id"]
    router.get("/Observation/o-1").respond(200, json=observation("o-1", "p-1"), headers=FHIR)
    updated = {**observation("o-1", "p-1"), "status": "amended"}
    location = "Observation/o-1/_history/2"
    router.post("").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {
                    "resource": updated,
                    "response": {"status": "200 OK", "location": location, "outcome": _outcome()},
                },
                {"response": {"status": "204 No Content", "outcome": _outcome()}},
            ],
        },
        headers=FHIR,
    )
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**resource, "status": "amended"},
                "request": {"method": "PUT", "url": f"Observation/{oid}"},
            },
            {"request": {"method": "GET", "url": f"Observation/{oid}"}},
        ],
    }
    got = await client.post("/fhir", json=transaction, headers=FHIR)
    assert got.status_code == 200, got.text
    assert "o-1" not in got.text, got.text
    assert "Successfully" not in got.text
    entries = got.json()["entry"]
    structured = {"severity": "information", "code": "informational"}
    assert entries[0]["response"]["outcome"]["issue"] == [structured]
    assert entries[0]["response"]["location"].startswith(f"Observation/{oid}/")
    assert entries[1]["response"]["outcome"]["issue"] == [structured]
