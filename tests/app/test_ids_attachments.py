"""An Attachment's ``url`` naming an upstream Binary reaches the client with the client's id,
and a client's uri that names nothing the gateway issued reaches the upstream as written
(docs/mapping.md).

The attack: ``DocumentReference.content.attachment.url = Binary/<upstream id>`` (or the same
under the upstream's base), the most common upstream URL inside a resource, was released as
the upstream wrote it: the upstream's own id, which the id mapping exists to hide.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import respx

from tests.app.conftest import UPSTREAM
from tests.app.test_ids import FHIR, observation
from tests.app.test_ids_entries import answer as answer_bundle
from tests.app.test_ids_entries import client

__all__ = ["client"]


def _with_attachments(oid: str) -> dict[str, Any]:
    resource = observation(oid, "p-1")
    resource["extension"] = [
        {"url": "http://x/a", "valueAttachment": {"url": "Binary/b-upstream-9"}},
        {"url": "http://x/b", "valueAttachment": {"url": f"{UPSTREAM}/Binary/b-upstream-9"}},
    ]
    return resource


async def test_an_attachment_url_naming_an_upstream_binary_has_the_clients_id(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": _with_attachments("o-1")}],
    }
    router.get("/Observation").respond(200, json=searchset, headers=FHIR)
    got = await client.get("/fhir/Observation?status=final")
    assert got.status_code == 200, got.text
    assert "b-upstream-9" not in got.text, got.text
    urls = [e["valueAttachment"]["url"] for e in got.json()["entry"][0]["resource"]["extension"]]
    assert urls[0].startswith("Binary/")
    assert urls[1].split("/")[-1] == urls[0].split("/")[-1]  # the same Binary, one client id


async def test_a_client_uri_naming_no_issued_id_reaches_the_upstream_as_written(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """A QuestionnaireResponse answer's ``valueUri`` is not a reference: it was a 422."""
    router.get("/Observation").respond(200, json=answer_bundle("p-1", "o-1"), headers=FHIR)
    found = (await client.get("/fhir/Observation?status=final")).json()
    subject = found["entry"][0]["resource"]["subject"]  # Patient/<the client's id of p-1>
    created = router.post("/QuestionnaireResponse").respond(
        201, json={"resourceType": "QuestionnaireResponse", "id": "q-1", "status": "completed"}
    )
    answer = {"valueUri": "Questionnaire/phq9"}
    body = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": subject,
        "item": [{"linkId": "1", "answer": [answer]}],
    }
    got = await client.post("/fhir/QuestionnaireResponse", json=body, headers=FHIR)
    assert got.status_code == 201, got.text
    assert created.call_count == 1
    sent = json.loads(created.calls[0].request.content)
    assert sent["item"][0]["answer"][0] == answer
    assert sent["subject"] == {"reference": "Patient/p-1"}
