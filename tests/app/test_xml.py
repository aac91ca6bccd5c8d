"""FHIR XML clients through the gateway: converted at the edge both ways, while the pipeline
and the upstream only ever see FHIR JSON (the upstream is respx; every request it receives is
checked to be JSON)."""

from __future__ import annotations

import json

import httpx
import respx
from lxml import etree

from tests.app.conftest import UPSTREAM

FHIR = "{http://hl7.org/fhir}"
XML = {"accept": "application/fhir+xml"}
OBSERVATION = (
    b'{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"hr"},'
    b'"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":72.50,"unit":"/min"}}'
)
PATIENT_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<Patient xmlns="http://hl7.org/fhir"><name><family value="Smoketest"/>'
    b'<given value="Conformance"/><given value="Second"/></name>'
    b'<gender value="female"/><birthDate value="1971-02-03"/>'
    b'<multipleBirthInteger value="2"/></Patient>'
)


def _json_only(route: respx.Route) -> None:
    """Every request the upstream got asked for JSON and sent JSON (never ``_format=xml``)."""
    assert route.calls
    for call in route.calls:
        assert "xml" not in call.request.headers.get("accept", "")
        assert "xml" not in call.request.headers.get("content-type", "")
        assert "_format" not in call.request.url.params


def _xml(response: httpx.Response) -> etree._Element:
    assert response.headers["content-type"] == "application/fhir+xml;charset=utf-8"
    return etree.fromstring(response.content)


async def test_read_in_xml_by_accept(client: httpx.AsyncClient, router: respx.Router) -> None:
    route = router.get("/Observation/o1").respond(
        200, content=OBSERVATION, headers={"content-type": "application/fhir+json", "etag": 'W/"1"'}
    )
    response = await client.get("/fhir/Observation/o1", headers=XML)
    assert response.status_code == 200
    root = _xml(response)
    assert root.tag == FHIR + "Observation"
    assert root.find(f"{FHIR}valueQuantity/{FHIR}value").get("value") == "72.50"
    assert response.headers["etag"] == 'W/"1"'
    _json_only(route)


async def test_read_in_xml_by_format_the_query_sent_on_without_it(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """``_format=xml`` is answered at the edge: the upstream never sees it (it would answer
    XML the gateway cannot judge) and the rest of the query is sent as written."""
    route = router.get("/Observation").respond(
        200,
        json={"resourceType": "Bundle", "type": "searchset", "entry": []},
        headers={"content-type": "application/fhir+json"},
    )
    response = await client.get(
        "/fhir/Observation?_format=application/fhir%2Bxml&code=8867-4&_format=xml",
        headers={"accept": "application/fhir+json"},
    )
    assert response.status_code == 200
    assert _xml(response).tag == FHIR + "Bundle"
    _json_only(route)
    assert route.calls.last.request.url.params["code"] == "8867-4"


async def test_search_in_xml_keeps_entry_order(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    entries = [
        {
            "fullUrl": f"{UPSTREAM}/Observation/o{i}",
            "resource": {**json.loads(OBSERVATION), "id": f"o{i}"},
            "search": {"mode": "match"},
        }
        for i in (3, 1, 2)
    ]
    route = router.get("/Observation").respond(
        200,
        json={"resourceType": "Bundle", "type": "searchset", "entry": entries},
        headers={"content-type": "application/fhir+json"},
    )
    response = await client.get("/fhir/Observation?subject=Patient/p1", headers=XML)
    assert response.status_code == 200
    root = _xml(response)
    ids = [e.get("value") for e in root.iterfind(f"{FHIR}entry/{FHIR}resource/*/{FHIR}id")]
    assert ids == ["o3", "o1", "o2"]
    _json_only(route)


async def test_create_from_xml_reaches_the_upstream_as_json(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    created = {"resourceType": "Patient", "id": "new1", "meta": {"versionId": "1"}}
    route = router.post("/Patient").respond(
        201,
        json={**created, "gender": "female"},
        headers={"content-type": "application/fhir+json", "location": f"{UPSTREAM}/Patient/new1"},
    )
    response = await client.post(
        "/fhir/Patient",
        content=PATIENT_XML,
        headers={"content-type": "application/fhir+xml", **XML},
    )
    assert response.status_code == 201, response.text
    assert _xml(response).find(f"{FHIR}id").get("value") == "new1"
    _json_only(route)
    sent = route.calls.last.request
    assert sent.headers["content-type"].startswith("application/fhir+json")
    body = json.loads(sent.content)
    assert body["name"] == [{"family": "Smoketest", "given": ["Conformance", "Second"]}]
    assert body["multipleBirthInteger"] == 2
    assert b'"multipleBirthInteger":2' in sent.content


async def test_xml_body_with_a_json_answer(client: httpx.AsyncClient, router: respx.Router) -> None:
    """An XML body says nothing of the answer's format: no Accept, a JSON answer."""
    route = router.post("/Patient").respond(
        201,
        json={"resourceType": "Patient", "id": "n2"},
        headers={"content-type": "application/fhir+json"},
    )
    response = await client.post(
        "/fhir/Patient", content=PATIENT_XML, headers={"content-type": "application/fhir+xml"}
    )
    assert response.status_code == 201
    assert response.json()["id"] == "n2"
    _json_only(route)


async def test_malformed_xml_body_is_an_xml_400_never_forwarded(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    catch_all = router.route().respond(201)
    response = await client.post(
        "/fhir/Patient",
        content=b'<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><Patient/>',
        headers={"content-type": "application/fhir+xml", **XML},
    )
    assert response.status_code == 400
    root = _xml(response)
    assert root.tag == FHIR + "OperationOutcome"
    assert b"passwd" not in response.content
    assert not catch_all.called


async def test_errors_are_xml_when_xml_was_asked(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/Observation/gone").respond(
        404,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-found"}],
        },
    )
    for url, headers in (
        ("/fhir/Observation/gone", XML),
        ("/fhir/Observation/gone?_format=xml", {}),
        ("/fhir/NotAType/1", XML),
    ):
        response = await client.get(url, headers=headers)
        assert 400 <= response.status_code < 500
        assert _xml(response).tag == FHIR + "OperationOutcome"


async def test_json_wins_when_both_are_acceptable(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """The JSON path stays byte for byte: an Accept naming both gets the upstream's bytes."""
    router.get("/Observation/o1").respond(
        200, content=OBSERVATION, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get(
        "/fhir/Observation/o1", headers={"accept": "application/fhir+xml, application/fhir+json"}
    )
    assert response.content == OBSERVATION


async def test_metadata_in_xml(client: httpx.AsyncClient, router: respx.Router) -> None:
    router.get("/metadata").respond(
        200,
        json={
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "date": "2026-01-01",
            "rest": [{"mode": "server"}],
        },
        headers={"content-type": "application/fhir+json"},
    )
    response = await client.get("/fhir/metadata?_format=xml")
    assert response.status_code == 200
    formats = [f.get("value") for f in _xml(response).iterfind(f"{FHIR}format")]
    assert "xml" in formats
    assert "json" in formats
