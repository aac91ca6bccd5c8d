"""Opaque ids in every element of a Bundle entry, through the app: an upstream answer naming
its own ids in entry links, entry extensions (a Reference, a uri/url), modifier extensions and
search extensions reaches the client with the gateway's ids only (docs/mapping.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.app.conftest import UPSTREAM
from tests.app.test_ids import FHIR, observation


def _extensions(named: str) -> list[dict[str, Any]]:
    return [
        {"url": "http://x/ref", "valueReference": {"reference": named}},
        {"url": "http://x/uri", "valueUri": f"{UPSTREAM}/{named}"},
        {"url": "http://x/url", "valueUrl": named},
    ]


def answer(patient: str, obs: str) -> dict[str, Any]:
    """A searchset whose one entry names ``Patient/<patient>`` in each element around it."""
    named = f"Patient/{patient}"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"{UPSTREAM}/Observation/{obs}",
                "link": [
                    {"relation": "related", "url": f"{UPSTREAM}/{named}"},
                    {"relation": "alternate", "url": f"{named}/_history/1"},
                ],
                "extension": _extensions(named),
                "search": {"mode": "match", "extension": _extensions(named)},
                "resource": observation(obs, patient),
            }
        ],
    }


@pytest.fixture
async def client(make_client: Any, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    profiles = tmp_path / "mappings" / "profiles"
    profiles.mkdir(parents=True)
    profile = profiles / "ids-only.json"
    profile.write_text(
        json.dumps(
            {
                "id": "ids-only",
                "upstream": "hospital",
                "fhir": {"client": "R4", "upstream": "R4"},
                "patients": {"resolver": "opaque"},
            }
        )
    )
    async with make_client(mapping_profile=str(profile)) as c:
        yield c


async def test_no_upstream_id_leaves_in_any_element_of_an_entry(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/Observation").respond(200, json=answer("p-1", "o-1"), headers=FHIR)
    got = await client.get("/fhir/Observation?status=final")
    assert got.status_code == 200, got.text
    assert "p-1" not in got.text, got.text
    assert "o-1" not in got.text
    entry = got.json()["entry"][0]
    patient = entry["resource"]["subject"]["reference"]  # Patient/<the client's id>
    assert patient != "Patient/p-1"
    client_id = patient.split("/")[1]
    assert entry == {
        **answer(client_id, entry["resource"]["id"])["entry"][0],
        "fullUrl": entry["fullUrl"],  # on the gateway's base
        "resource": entry["resource"],
        "link": [
            {"relation": "related", "url": entry["link"][0]["url"]},
            {"relation": "alternate", "url": f"{patient}/_history/1"},
        ],
    }
    assert entry["link"][0]["url"].endswith(f"/{patient}")
    assert entry["extension"][1]["valueUri"].endswith(f"/{patient}")


async def test_an_untranslatable_id_in_an_entry_extension_refuses_the_answer(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """An upstream id that has no client id (not a FHIR id), only in an entry's extension: the
    answer is refused, never released with it."""
    bad = answer("p-1", "o-1")
    bad["entry"][0]["extension"][0]["valueReference"]["reference"] = "Patient/no_such*id"
    router.get("/Observation").respond(200, json=bad, headers=FHIR)
    got = await client.get("/fhir/Observation?status=final")
    assert got.status_code >= 400
    assert "no_such" not in got.text
    assert "p-1" not in got.text


async def test_a_transaction_reaches_the_upstream_with_its_own_ids_in_every_element_of_an_entry(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """Writes, symmetric: the client's ids in an entry's extensions and links become the
    upstream's before the transaction is forwarded (whole, as it is one unit)."""
    router.get("/Observation").respond(200, json=answer("p-1", "o-1"), headers=FHIR)
    got = (await client.get("/fhir/Observation?status=final")).json()
    resource = got["entry"][0]["resource"]
    patient, oid = resource["subject"]["reference"], resource["id"]
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"http://gateway.test/fhir/Observation/{oid}",
                "extension": _extensions(patient),
                "link": [{"relation": "related", "url": patient}],
                "resource": {**resource, "status": "amended"},
                "request": {"method": "PUT", "url": f"Observation/{oid}"},
            }
        ],
    }
    # the gateway reads what an update replaces (consent is decided on what the upstream holds)
    router.get("/Observation/o-1").respond(200, json=observation("o-1", "p-1"), headers=FHIR)
    route = router.post("").respond(
        200,
        json={"resourceType": "Bundle", "type": "transaction-response", "entry": []},
        headers=FHIR,
    )
    answered = await client.post("/fhir", json=transaction, headers=FHIR)
    assert route.called, answered.text
    sent = json.loads(route.calls.last.request.content)["entry"][0]
    assert sent["extension"] == _extensions("Patient/p-1")
    assert sent["link"] == [{"relation": "related", "url": "Patient/p-1"}]
    assert sent["request"]["url"] == "Observation/o-1"
