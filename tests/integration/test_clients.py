"""The request forms common FHIR clients send, through the gateway in front of the real
upstream: Python's fhirclient and fhirpy driven as libraries, HAPI's generic client emulated
with httpx from its documented headers and URL shapes (HAPI is Java; see docs/clients.md).

The node clients (SMART's JS client, fhir.js) are driven by the scripts in
``tests/integration/node/``, run by ``test_node_clients.py``.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient

from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

#: HAPI FHIR ``Constants``: the Accept values its generic client sends (JSON encoding chosen,
#: and no encoding chosen: XML or JSON).
HAPI_ACCEPT_JSON = "application/fhir+json;q=1.0, application/json+fhir;q=0.9"
HAPI_ACCEPT_ANY = (
    "application/fhir+xml;q=1.0, application/fhir+json;q=1.0, "
    "application/xml+fhir;q=0.9, application/json+fhir;q=0.9"
)
HAPI_CONTENT_TYPE = "application/fhir+json; charset=UTF-8"


def _transaction(family: str) -> dict[str, Any]:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url,
                "resource": {"resourceType": "Patient", "name": [{"family": family}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": full_url},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def _statuses(bundle: dict[str, Any]) -> list[str]:
    return [entry["response"]["status"].split()[0] for entry in bundle["entry"]]


# --- fhirclient (Python, SMART) ----------------------------------------------------------------


def test_fhirclient_prepares_reads_writes_and_posts_a_transaction_to_base_slash(
    gateway: GatewayServer, sides: Sides
) -> None:
    """fhirclient keeps its base with a trailing slash: ``post_json("")`` posts a
    transaction to ``[base]/`` (refused with 400 before the gateway accepted that form)."""
    smart = fhirclient_client.FHIRClient(
        settings={"app_id": "consentry-it", "api_base": gateway.base_url}
    )
    smart.server.session.headers["Authorization"] = sides.authorization
    smart.prepare()  # GET [base]/metadata, read as a CapabilityStatement
    assert smart.ready
    created = Patient({"name": [{"family": "Fhirclient"}]}).create(smart.server)
    assert created is not None
    patient = Patient.read(created["id"], smart.server)
    patient.gender = "female"
    patient.update(smart.server)
    found = list(Patient.where(struct={"_id": patient.id}).perform_resources_iter(smart.server))
    assert [p.gender for p in found] == ["female"]
    answer = smart.server.post_json("", _transaction("FhirclientTx"))
    assert answer.url == f"{gateway.base_url}/"
    assert answer.status_code == 200
    assert _statuses(answer.json()) == ["201", "201"]
    patient.delete()


# --- fhirpy ------------------------------------------------------------------------------------


def test_fhirpy_transaction_batch_and_conditional_update(
    gateway: GatewayServer, sides: Sides
) -> None:
    """fhirpy's ``execute("")`` builds ``[base]/?``: transaction and batch go there."""
    client = SyncFHIRClient(gateway.base_url, authorization=sides.authorization)
    transaction = client.execute("", method="post", data=_transaction("FhirpyTx"))
    assert transaction["type"] == "transaction-response"
    patient_ref = transaction["entry"][0]["response"]["location"].split("/_history")[0]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": patient_ref.split("/fhir/")[-1]}}],
    }
    assert _statuses(client.execute("/", method="post", data=batch)) == ["200"]
    marker = f"urn:consentry-it|{uuid.uuid4()}"
    system, value = marker.split("|")
    wanted = client.resource(
        "Patient", identifier=[{"system": system, "value": value}], name=[{"family": "Cond"}]
    )
    # A conditional update (PUT [type]?criteria): created once, then updated in place.
    _, created = client.resources("Patient").search(identifier=marker).update(wanted)
    _, again = client.resources("Patient").search(identifier=marker).update(wanted)
    assert (created, again) == (True, False)
    assert len(client.resources("Patient").search(identifier=marker).fetch()) == 1


# --- HAPI's generic client, emulated -----------------------------------------------------------


def _hapi(sides: Sides, accept: str = HAPI_ACCEPT_JSON, **extra: str) -> dict[str, str]:
    return {
        "authorization": sides.authorization,
        "accept": accept,
        "accept-charset": "utf-8",
        "accept-encoding": "gzip",
        "user-agent": "HAPI-FHIR/7.0.0 (FHIR Client; FHIR 4.0.1/R4; apache)",
        **extra,
    }


@pytest.mark.parametrize(
    ("accept", "query"),
    [
        (HAPI_ACCEPT_JSON, ""),
        (HAPI_ACCEPT_ANY, ""),
        ("application/fhir+json;fhirVersion=4.0", ""),
        (HAPI_ACCEPT_JSON, "?_format=json"),
        (HAPI_ACCEPT_JSON, "?_format=json&_pretty=true"),
    ],
    ids=["json", "xml-or-json", "fhir-version-parameter", "format-json", "pretty"],
)
def test_hapi_capability_fetch(
    gateway: GatewayServer, sides: Sides, accept: str, query: str
) -> None:
    """HAPI fetches ``metadata`` once before its first request (server validation mode
    ONCE) and parses it by ``Content-Type``: JSON, R4, the gateway's own description."""
    with httpx.Client(timeout=30.0) as http:
        answer = http.get(f"{gateway.base_url}/metadata{query}", headers=_hapi(sides, accept))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    statement = answer.json()
    assert statement["fhirVersion"].startswith("4.0")
    assert statement["software"]["name"] == "Consentry"


def test_hapi_write_forms(gateway: GatewayServer, sides: Sides) -> None:
    """create with ``Prefer: return=representation`` and a charset in ``Content-Type``;
    conditional create (``If-None-Exist``); update with ``If-Match``; conditional update
    (``PUT [type]?criteria``); read with ``If-None-Match``; POST ``_search`` with a form body;
    a transaction posted to ``[base]`` (HAPI posts there without a slash); delete."""
    base = gateway.base_url
    marker = str(uuid.uuid4())
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:hapi-it", "value": marker}],
        "name": [{"family": "Hapi"}],
    }
    write = _hapi(sides, **{"content-type": HAPI_CONTENT_TYPE})
    with httpx.Client(timeout=30.0) as http:
        created = http.post(
            f"{base}/Patient",
            json=patient,
            headers={**write, "prefer": "return=representation"},
        )
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        assert created.headers["location"].startswith(f"{base}/Patient/{pid}")

        exists = http.post(
            f"{base}/Patient",
            json=patient,
            headers={**write, "if-none-exist": f"identifier=urn:hapi-it|{marker}"},
        )
        assert exists.status_code == 200, exists.text  # the match, not a second record

        etag = created.headers["etag"]
        updated = http.put(
            f"{base}/Patient/{pid}",
            json={**patient, "id": pid, "gender": "male"},
            headers={**write, "if-match": etag},
        )
        assert updated.status_code == 200, updated.text

        conditional = http.put(
            f"{base}/Patient?identifier=urn:hapi-it|{marker}",
            json={**patient, "id": pid, "gender": "female"},
            headers=write,
        )
        assert conditional.status_code == 200, conditional.text

        read = http.get(f"{base}/Patient/{pid}", headers={**_hapi(sides), "if-none-match": etag})
        assert read.status_code == 200  # never 304: conditional reads are not forwarded
        assert read.json()["gender"] == "female"

        searched = http.post(
            f"{base}/Patient/_search",
            content=f"identifier=urn:hapi-it|{marker}".encode(),
            headers={**_hapi(sides), "content-type": "application/x-www-form-urlencoded"},
        )
        assert searched.status_code == 200, searched.text
        assert [e["resource"]["id"] for e in searched.json()["entry"]] == [pid]

        transaction = http.post(base, json=_transaction("HapiTx"), headers=write)
        assert transaction.status_code == 200, transaction.text
        assert _statuses(transaction.json()) == ["201", "201"]

        deleted = http.delete(f"{base}/Patient/{pid}", headers=_hapi(sides))
        assert deleted.status_code in (200, 204), deleted.text
