"""A batch or transaction entry URL the gateway would judge other than it forwards is a 400.

The attack: ``PUT Observation/1#/../../PractitionerRole/2`` inside a transaction. The gateway
read the URL without its fragment (``urlsplit``) and judged an update of Observation/1 (its
consent, the directory guard), then forwarded the raw text; an upstream that resolves the dot
segments, or reads the fragment as part of the path, acts on PractitionerRole/2. Whitespace
and control characters are dropped by ``urlsplit`` the same way (``Obser\\tvation/1``), and a
non-ASCII query was a 500. Now each is the client's 400, and nothing of it reaches the
upstream.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

FHIR = {"content-type": "application/fhir+json"}
URLS = [
    "Observation/1#/../../PractitionerRole/2",
    "Observation/1#",
    "Observation?code=x#PractitionerRole",
    "Observ\tation/1",
    " Observation/1",
    "Observation/1\n",
    "Observation?name=\u00e9",
]
IDS = ["fragment", "empty-fragment", "query-fragment", "tab", "space", "newline", "non-ascii"]


def _entry(url: str) -> dict[str, Any]:
    body = {"resourceType": "Observation", "id": "1", "status": "final"}
    return {"resource": body, "request": {"method": "PUT", "url": url}}


@pytest.mark.parametrize("url", URLS, ids=IDS)
async def test_a_transaction_with_such_an_entry_url_is_400_and_never_forwarded(
    client: httpx.AsyncClient, router: respx.Router, url: str
) -> None:
    upstream = router.route().respond(200, json={"resourceType": "Bundle", "type": "x"})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(url)]}
    got = await client.post("/fhir", json=bundle, headers=FHIR)
    assert got.status_code == 400, got.text
    assert got.json()["resourceType"] == "OperationOutcome"
    assert upstream.call_count == 0


@pytest.mark.parametrize("url", URLS, ids=IDS)
async def test_a_batch_answers_such_an_entry_400_and_runs_the_rest(
    client: httpx.AsyncClient, router: respx.Router, url: str
) -> None:
    observation = {
        "resourceType": "Observation",
        "id": "2",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
    }
    read = router.get("/Observation/2").respond(200, json=observation, headers=FHIR)
    writes = router.route(method__in=["PUT", "POST", "DELETE"]).respond(200, json=observation)
    fine = {"request": {"method": "GET", "url": "Observation/2"}}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [_entry(url), fine]}
    got = await client.post("/fhir", json=bundle, headers=FHIR)
    assert got.status_code == 200, got.text
    entries = got.json()["entry"]
    assert entries[0]["response"]["status"] == "400"
    assert entries[1]["response"]["status"].startswith("200")
    assert writes.call_count == 0
    assert read.call_count == 1


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("DELETE", "Practitioner/x?_cascade=delete"),
        ("PUT", "Observation/1?_cascade=delete"),
        ("POST", "Observation?_cascade=delete"),
    ],
    ids=["delete-cascade", "put-param", "create-param"],
)
async def test_a_transaction_write_entry_with_parameters_is_refused_and_never_forwarded(
    client: httpx.AsyncClient, router: respx.Router, method: str, url: str
) -> None:
    """The attack: ``DELETE Practitioner/x?_cascade=delete`` in a transaction. The entry was
    judged as the delete of Practitioner/x, then the Bundle went upstream as sent, and an
    upstream that honours ``_cascade`` (HAPI) deletes every resource referencing it: other
    patients' records nobody checked. Now any parameter on a write entry refuses the
    transaction before anything is forwarded."""
    practitioner = {"resourceType": "Practitioner", "id": "x", "meta": {"versionId": "1"}}
    observation = {
        "resourceType": "Observation",
        "id": "1",
        "status": "final",
        "meta": {"versionId": "1"},
    }
    router.get("/Practitioner/x").respond(200, json=practitioner, headers=FHIR)
    router.get("/Observation/1").respond(200, json=observation, headers=FHIR)
    forwarded = router.post("/").respond(200, json={"resourceType": "Bundle", "type": "x"})
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if method != "DELETE":
        entry["resource"] = {k: v for k, v in observation.items() if k != "meta"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    got = await client.post("/fhir", json=bundle, headers=FHIR)
    assert 400 <= got.status_code < 500, got.text
    assert got.json()["resourceType"] == "OperationOutcome"
    assert forwarded.call_count == 0
