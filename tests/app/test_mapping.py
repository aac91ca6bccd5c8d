"""The mapping stage through the gateway, with the hospital-a profile shipped in ``mappings/``:
searches by LOINC reach the upstream as ORs with local codes, answers carry marked LOINC
codings beside the local ones, writes come back clean, consent is decided on what the
upstream holds, and the audit trail names the profile and the digest of its files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from middleware.ledger.signing import SigningKey
from middleware.mapping import MARKER_URL
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import ledger_entries

PROFILE = Path(__file__).resolve().parents[2] / "mappings" / "profiles" / "hospital-a.json"
LOCAL = "http://hospital-a.example/CodeSystem/lab"
LOINC = "http://loinc.org"
FHIR_JSON = {"content-type": "application/fhir+json"}


def potassium(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-k-1",
        "meta": {"versionId": "3"},
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": "K", "display": "Potassium, serum"}]},
        "subject": {
            "reference": "Patient/p-1",
            "identifier": {"system": "urn:oid:1.2.3.4.5", "value": "100234"},
        },
        **extra,
    }


POTASSIUM_RAW = json.dumps(potassium()).replace(
    '"status"', '"valueQuantity":{"value":5.40},"status"'
)


@pytest.fixture
async def client(make_client: Any, router: respx.Router) -> AsyncIterator[httpx.AsyncClient]:
    router.get("/Observation/obs-k-1").respond(
        200, content=POTASSIUM_RAW.encode(), headers={"content-type": "application/fhir+json"}
    )
    async with make_client(mapping_profile=str(PROFILE)) as c:
        yield c


async def test_a_search_by_loinc_reaches_the_upstream_with_the_local_code(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    route = router.get("/Observation").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": potassium(), "search": {"mode": "match"}}],
        },
    )
    answer = await client.get("/fhir/Observation?code=http://loinc.org|2823-3")
    assert answer.status_code == 200
    sent = dict(parse_qsl(route.calls.last.request.url.query.decode()))
    assert set(sent["code"].split(",")) == {f"{LOINC}|2823-3", f"{LOCAL}|K"}
    coding = answer.json()["entry"][0]["resource"]["code"]["coding"]
    assert [c["system"] for c in coding] == [LOCAL, LOINC]
    assert coding[1]["extension"][0]["url"] == MARKER_URL
    assert answer.headers["x-consentry-mapping"] == "hospital-a"


async def test_a_read_gets_marked_codings_and_client_identifier_systems(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/fhir/Observation/obs-k-1")
    body = answer.json()
    assert [c["code"] for c in body["code"]["coding"]] == ["K", "2823-3"]
    assert body["subject"]["identifier"]["system"] == "http://hospital-a.example/mrn"
    assert '"value":5.40' in answer.text  # decimals survive the mapping path


async def test_a_write_back_reaches_the_upstream_clean(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """The client writes back what it read: the added LOINC coding is stripped and the MRN
    system renamed back, so the upstream gets its own coding only."""
    read = (await client.get("/fhir/Observation/obs-k-1")).json()
    put = router.put("/Observation/obs-k-1").respond(
        200, json=potassium(), headers={"content-type": "application/fhir+json"}
    )
    answer = await client.put(
        "/fhir/Observation/obs-k-1",
        json={**read, "status": "amended"},
        headers={"content-type": "application/fhir+json"},
    )
    assert answer.status_code == 200
    sent = json.loads(put.calls.last.request.content)
    assert sent["code"]["coding"] == [{"system": LOCAL, "code": "K", "display": "Potassium, serum"}]
    assert sent["subject"]["identifier"]["system"] == "urn:oid:1.2.3.4.5"
    assert sent["status"] == "amended"


async def test_a_json_patch_on_the_clients_view_is_sent_as_a_pinned_update(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """The client patches what it sees (its coding list has the added LOINC at index 1); the
    gateway applies the patch to that view, maps it back and sends an update pinned to the
    version it read."""
    put = router.put("/Observation/obs-k-1").respond(
        200, json=potassium(), headers={"content-type": "application/fhir+json"}
    )
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    answer = await client.patch(
        "/fhir/Observation/obs-k-1",
        json=patch,
        headers={"content-type": "application/json-patch+json"},
    )
    assert answer.status_code == 200, answer.text
    request = put.calls.last.request
    assert request.headers["if-match"] == 'W/"3"'
    assert request.headers["content-type"] == "application/fhir+json"
    sent = json.loads(request.content)
    assert sent["status"] == "amended"
    assert [c["system"] for c in sent["code"]["coding"]] == [LOCAL]


async def test_the_audit_record_names_the_profile_and_its_digest(
    client: httpx.AsyncClient, store: MemoryLogStore, signer: SigningKey
) -> None:
    await client.get("/fhir/Observation/obs-k-1")
    events = (await ledger_entries(store, signer))[-1].events
    assert events is not None  # rendered from the entry's sealed facts
    entities = [e for event in events for e in event["entity"]]
    mapping = [
        e for e in entities if e.get("what", {}).get("identifier", {}).get("value") == "hospital-a"
    ]
    assert mapping
    assert mapping[0]["detail"][0]["valueString"].startswith("sha256:")


async def test_a_broken_profile_stops_the_gateway_at_start(
    make_client: Any, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    bad = profiles / "broken.json"
    bad.write_text('{"id": "broken", "conceptmaps": [{"canonical": "x"}]}')
    with pytest.raises(Exception, match="broken"):
        make_client(mapping_profile=str(bad))


async def test_gateway_without_a_profile_adds_nothing(
    make_client: Any, router: respx.Router
) -> None:
    router.get("/Observation/obs-k-1").respond(
        200, content=POTASSIUM_RAW.encode(), headers={"content-type": "application/fhir+json"}
    )
    app_client: httpx.AsyncClient
    async with make_client() as app_client:
        answer = await app_client.get("/fhir/Observation/obs-k-1")
    assert answer.content == POTASSIUM_RAW.encode()
    assert "x-consentry-mapping" not in answer.headers


# --- an R5 client in front of an R4 server ------------------------------------------------------

R5_PROFILE = PROFILE.parent / "r5-client-r4-server.json"
R4_ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "e-1",
    "meta": {"versionId": "1"},
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
    "subject": {"reference": "Patient/p-9"},
    "period": {"start": "2024-03-01T08:00:00Z"},
}


async def test_an_r5_client_reads_and_writes_an_r4_upstream(
    make_client: Any, router: respx.Router
) -> None:
    router.get("/Encounter/e-1").respond(200, json=R4_ENCOUNTER, headers=FHIR_JSON)
    put = router.put("/Encounter/e-1").respond(200, json=R4_ENCOUNTER, headers=FHIR_JSON)
    async with make_client(mapping_profile=str(R5_PROFILE)) as c:
        read = (await c.get("/fhir/Encounter/e-1")).json()
        # R5 shapes: class is a list of CodeableConcepts, period is actualPeriod.
        assert read["class"][0]["coding"][0]["code"] == "EMER"
        assert read["actualPeriod"] == {"start": "2024-03-01T08:00:00Z"}
        assert "period" not in read
        written = await c.put(
            "/fhir/Encounter/e-1", json={**read, "status": "completed"}, headers=FHIR_JSON
        )
    assert written.status_code == 200, written.text
    sent = json.loads(put.calls.last.request.content)
    assert sent["class"] == R4_ENCOUNTER["class"]  # back to an R4 Coding
    assert sent["period"] == {"start": "2024-03-01T08:00:00Z"}
    assert sent["status"] == "finished"  # R5 completed is R4 finished
    assert "actualPeriod" not in sent


async def test_an_r5_write_with_a_status_r4_cannot_hold_is_refused(
    make_client: Any, router: respx.Router
) -> None:
    put = router.put("/Encounter/e-1").respond(200, json=R4_ENCOUNTER, headers=FHIR_JSON)
    router.get("/Encounter/e-1").respond(200, json=R4_ENCOUNTER, headers=FHIR_JSON)
    body = {
        "resourceType": "Encounter",
        "id": "e-1",
        "status": "not-a-status",
        "subject": {"reference": "Patient/p-9"},
    }
    async with make_client(mapping_profile=str(R5_PROFILE)) as c:
        answer = await c.put("/fhir/Encounter/e-1", json=body, headers=FHIR_JSON)
    assert answer.status_code == 422
    assert not put.called
