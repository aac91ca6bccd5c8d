"""/metadata, /healthz, /readyz, /metrics, and what the operational log may carry."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import respx

from middleware.logging import configure_logging
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import GATEWAY, UPSTREAM, FakeClock

CAPABILITY = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": ["json"],
    "software": {"name": "Upstream FHIR", "version": "9.9"},
    "implementation": {"description": "upstream", "url": UPSTREAM},
    "rest": [
        {"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]}
    ],
}


async def test_metadata_describes_the_gateway_and_keeps_the_upstream_capabilities(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/metadata").respond(
        200, json=CAPABILITY, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["software"]["name"] == "Consentry"
    assert body["implementation"]["url"] == GATEWAY
    assert "Upstream FHIR 9.9" in body["implementation"]["description"]
    patient = [r for r in body["rest"][0]["resource"] if r["type"] == "Patient"]
    # The upstream's Patient entry, plus the gateway's own Bulk Data export (pipeline.export)
    upstream_patient = CAPABILITY["rest"][0]["resource"][0]  # type: ignore[index]
    assert len(patient) == 1
    assert patient[0]["interaction"] == upstream_patient["interaction"]
    assert [op["name"] for op in patient[0].get("operation", [])] == ["export"]
    assert UPSTREAM not in response.text


async def test_metadata_names_smart_when_tokens_are_verified(
    make_client: Any, router: respx.Router, tmp_path: Any
) -> None:
    router.get("/metadata").respond(
        200, json=CAPABILITY, headers={"content-type": "application/fhir+json"}
    )
    auth = {
        "audiences": [GATEWAY],
        "issuers": [{"issuer": "https://idp.example", "jwks_file": str(tmp_path / "jwks.json")}],
    }
    async with make_client(auth=auth) as c:
        body = (await c.get("/fhir/metadata")).json()
    service = body["rest"][0]["security"]["service"][0]["coding"][0]
    assert service["code"] == "SMART-on-FHIR"


async def test_metadata_is_cached_for_its_ttl(
    make_client: Any, router: respx.Router, clock: FakeClock
) -> None:
    route = router.get("/metadata").respond(
        200, json=CAPABILITY, headers={"content-type": "application/fhir+json"}
    )
    async with make_client(metadata_ttl=60) as c:
        await c.get("/fhir/metadata")
        clock.now += 59
        await c.get("/fhir/metadata")
        assert route.call_count == 1
        clock.now += 2
        await c.get("/fhir/metadata")
        assert route.call_count == 2


async def test_metadata_from_a_broken_upstream_is_502(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/metadata").respond(200, json={"resourceType": "Patient"})
    response = await client.get("/fhir/metadata")
    assert response.status_code == 502


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_checks_store_and_upstream(
    client: httpx.AsyncClient, router: respx.Router, store: MemoryLogStore
) -> None:
    route = router.get("/metadata").respond(200, json=CAPABILITY)
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "audit_outbox": "ok", "upstream": "ok"}

    route.side_effect = httpx.ConnectError("refused")
    down = await client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["upstream"] == "unavailable"

    route.side_effect = None
    store.available = False
    no_store = await client.get("/readyz")
    assert no_store.status_code == 503
    assert no_store.json()["checks"]["store"] == "unavailable"


async def test_readyz_answers_many_callers_with_one_check(
    make_client: Any, router: respx.Router
) -> None:
    """Attack: /readyz is public and each call asked the upstream for its metadata, pinged the
    stores and could write a ledger probe: a flood of anonymous /readyz calls became upstream
    traffic and warning lines at the caller's rate. Now one check runs at a time and its
    answer serves every caller for ``ready_cache_seconds``."""
    route = router.get("/metadata").respond(200, json=CAPABILITY)
    async with make_client(ready_cache_seconds=30) as client:
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        assert route.call_count == 1
        route.side_effect = httpx.ConnectError("refused")
        assert (await client.get("/readyz")).status_code == 200  # the cached answer
        assert route.call_count == 1


async def test_metrics_count_requests_by_interaction_and_status(
    make_client: Any, router: respx.Router
) -> None:
    router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    async with make_client(metrics_clients="203.0.113.0/24") as client:  # the test client's
        await client.get("/fhir/Patient/p1")
        await client.get("/fhir/patient/p1")
        text = (await client.get("/metrics")).text
    assert 'consentry_requests_total{interaction="read",status="200"} 1' in text
    assert 'consentry_requests_total{interaction="invalid",status="404"} 1' in text
    assert 'consentry_upstream_duration_seconds_count{interaction="read"} 1' in text
    assert "consentry_requests_in_flight 0" in text


async def test_access_log_is_one_json_line_per_request_and_holds_no_phi(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """Query values, resource ids and bodies are PHI: none may reach the operational log."""
    stream = io.StringIO()
    configure_logging("info", stream)
    router.get("/Patient").respond(200, json={"resourceType": "Bundle", "type": "searchset"})
    router.put("/Patient/secret-id-4711").respond(200, json={"resourceType": "Patient"})
    router.get("/Patient/secret-id-4711").respond(404)  # not there yet: update-as-create
    await client.get(
        "/fhir/Patient?name=Smithson&birthdate=1970-05-06", headers={"x-request-id": "rid-1"}
    )
    await client.put(
        "/fhir/Patient/secret-id-4711",
        json={"resourceType": "Patient", "id": "secret-id-4711", "name": [{"family": "Smithson"}]},
        headers={"content-type": "application/fhir+json"},
    )
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["interaction"] for line in lines] == ["search-type", "update"]
    assert lines[0]["request_id"] == "rid-1"
    assert lines[0]["status"] == 200
    assert lines[0]["resource_type"] == "Patient"
    text = stream.getvalue()
    for phi in ("Smithson", "1970-05-06", "secret-id-4711", "birthdate"):
        assert phi not in text, phi
