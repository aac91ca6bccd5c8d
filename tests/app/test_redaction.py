"""Sensitive data through the gateway (DS4P security labels): a permit that does not name a
sensitivity label does not release what carries it, as a whole resource or as an element."""

from __future__ import annotations

from typing import Any

import pytest
import respx

from middleware.consent.summary import INLINE_LABEL_URL

FHIR = {"content-type": "application/fhir+json"}
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PSY = {"system": ACT_CODE, "code": "PSY"}


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o-1",
        "status": "final",
        "code": {"text": "assessment"},
        "subject": {"reference": "Patient/p-1"},
        **extra,
    }


LABELLED_NOTE = observation(
    note=[
        {"text": "routine"},
        {
            "text": "psychiatric history",
            "extension": [{"url": INLINE_LABEL_URL, "valueCoding": PSY}],
        },
    ]
)


@pytest.mark.parametrize("mode", ["deny", "redact"])
async def test_a_resource_labelled_sensitive_is_withheld(
    make_client: Any, router: respx.Router, mode: str
) -> None:
    """No consent names PSY (opt-out default permit): the labelled resource is not released,
    whether uncovered labels deny or redact (redacting a resource-level label is the whole
    resource)."""
    router.get("/Observation/o-1").respond(
        200, json=observation(meta={"security": [PSY]}), headers=FHIR
    )
    async with make_client(consent_uncovered_labels=mode) as client:
        answer = await client.get("/fhir/Observation/o-1")
    assert answer.status_code == 404


async def test_redact_removes_the_labelled_element_and_marks_the_resource(
    make_client: Any, router: respx.Router
) -> None:
    router.get("/Observation/o-1").respond(200, json=LABELLED_NOTE, headers=FHIR)
    async with make_client(consent_uncovered_labels="redact") as client:
        answer = await client.get("/fhir/Observation/o-1")
    assert answer.status_code == 200
    body = answer.json()
    assert body["note"] == [{"text": "routine"}]
    assert "psychiatric" not in answer.text
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "REDACTED",
    } in body["meta"]["security"]


async def test_deny_withholds_a_resource_with_a_labelled_element(
    make_client: Any, router: respx.Router
) -> None:
    """An element labelled inline makes its resource as sensitive as the label: without the
    redact mode the whole resource is withheld, never released with the element in it."""
    router.get("/Observation/o-1").respond(200, json=LABELLED_NOTE, headers=FHIR)
    async with make_client() as client:
        answer = await client.get("/fhir/Observation/o-1")
    assert answer.status_code == 404
    assert "psychiatric" not in answer.text


@pytest.mark.parametrize(
    "spelling",
    [
        INLINE_LABEL_URL.replace("/", "\\/"),
        INLINE_LABEL_URL.replace("label", "lab\\u0065l"),
    ],
    ids=["escaped-slashes", "unicode-escape"],
)
async def test_an_escaped_inline_label_is_still_seen(
    make_client: Any, router: respx.Router, spelling: str
) -> None:
    """The gateway skips its element walk when an answer's bytes cannot hold an inline label:
    an upstream (or an attacker who can write to it) spelling the label URL with JSON escapes
    must not make the walk skip and the labelled element pass."""
    raw = (
        '{"resourceType":"Observation","id":"o-1","status":"final","code":{"text":"a"},'
        '"subject":{"reference":"Patient/p-1"},"note":[{"text":"psychiatric history",'
        '"extension":[{"url":"' + spelling + '","valueCoding":{"system":"' + ACT_CODE + '",'
        '"code":"PSY"}}]}]}'
    )
    router.get("/Observation/o-1").respond(200, content=raw.encode(), headers=FHIR)
    async with make_client() as client:
        answer = await client.get("/fhir/Observation/o-1")
    assert answer.status_code == 404
    assert "psychiatric" not in answer.text


async def test_redact_removes_the_labelled_element_from_a_search_page(
    make_client: Any, router: respx.Router
) -> None:
    """A search page: the labelled element goes from its resource (redacted in place), and
    the resources beside it are released as they were."""
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": observation(id="o-0"), "search": {"mode": "match"}},
            {"resource": LABELLED_NOTE, "search": {"mode": "match"}},
        ],
    }
    router.get("/Observation").respond(200, json=page, headers=FHIR)
    async with make_client(consent_uncovered_labels="redact") as client:
        answer = await client.get("/fhir/Observation", params={"subject": "Patient/p-1"})
    assert answer.status_code == 200
    assert "psychiatric" not in answer.text
    released = [entry["resource"] for entry in answer.json()["entry"]]
    assert [r["id"] for r in released] == ["o-0", "o-1"]
    assert released[0] == observation(id="o-0")
    assert released[1]["note"] == [{"text": "routine"}]
