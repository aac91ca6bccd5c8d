"""Under the default opt-in jurisdiction an EHR records a new patient; nothing else opens.

``consent_collect_default = "permit"`` (the default): the record holder's callers (user and
system contexts) may write *new* data when no consent applies; access and correction still need
a grant, a consent that denies ``collect`` still refuses, and a patient-context caller never
writes into another patient's record on this default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import respx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.conftest import GATEWAY, UPSTREAM
from tests.app.consenting import AUDIENCE, DEV_ISSUER, FHIR_JSON, Tokens, observation

CONSENT_ACTION: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
NEW_PATIENT: Final = {"resourceType": "Patient", "name": [{"family": "Demo", "given": ["Ada"]}]}


def transaction() -> dict[str, Any]:
    """An EHR registering a new patient and a first result, linked by ``urn:uuid``."""
    patient_url = "urn:uuid:5b1f0d1e-3c5a-4f5e-9d43-3c0c1e0b7a01"
    result = observation(patient_url)
    del result["id"]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": NEW_PATIENT,
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": result, "request": {"method": "POST", "url": "Observation"}},
        ],
    }


def transaction_response() -> dict[str, Any]:
    """What Medplum answers: each entry with the created resource and an informational
    OperationOutcome beside its status and location."""
    created = {"resourceType": "OperationOutcome", "issue": [{"severity": "information"}]}
    patient = {**NEW_PATIENT, "id": "new1", "meta": {"versionId": "1"}}
    result = {**observation("Patient/new1"), "id": "o9", "meta": {"versionId": "1"}}
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "resource": patient,
                "response": {
                    "status": "201 Created",
                    "location": "Patient/new1/_history/1",
                    "etag": 'W/"1"',
                    "outcome": created,
                },
            },
            {
                "resource": result,
                "response": {
                    "status": "201 Created",
                    "location": f"{UPSTREAM}/Observation/o9/_history/1",
                    "outcome": created,
                },
            },
        ],
    }


def opt_in_client(
    make_client: Callable[..., httpx.AsyncClient], **settings: Any
) -> httpx.AsyncClient:
    """A gateway on the defaults (opt-in, collect default permit), an EHR's system token."""
    return make_client(consent_jurisdiction="opt-in", **settings)


async def test_an_ehr_registers_a_new_patient_under_the_default_jurisdiction(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """The one-minute demo's step: a transaction creating a patient and its records is
    forwarded (it was 403: collect was denied when no consent existed)."""
    forwarded = router.post("").respond(200, json=transaction_response())
    async with opt_in_client(make_client) as client:
        answer = await client.post("/fhir", json=transaction(), headers=FHIR_JSON)
    assert answer.status_code == 200
    assert forwarded.called
    # The EHR learns the ids it created (not a 404 per entry), and nothing it may not read.
    assert answer.json() == {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": "Patient/new1/_history/1",
                    "etag": 'W/"1"',
                }
            },
            {
                "response": {
                    "status": "201 Created",
                    "location": f"{GATEWAY}/Observation/o9/_history/1",
                }
            },
        ],
    }


async def test_a_caller_who_may_read_what_it_wrote_gets_the_resources(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """Under opt-out the EHR may read what it wrote: the answer keeps the resources."""
    router.post("").respond(200, json=transaction_response())
    async with make_client() as client:  # opt-out
        answer = await client.post("/fhir", json=transaction(), headers=FHIR_JSON)
    entries = answer.json()["entry"]
    assert [e["resource"]["id"] for e in entries] == ["new1", "o9"]


async def test_the_jurisdiction_setting_keeps_the_old_refusal(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """``consent_collect_default = "jurisdiction"``: under opt-in, no consent, no collection."""
    forwarded = router.post("").respond(200, json=transaction_response())
    async with opt_in_client(make_client, consent_collect_default="jurisdiction") as client:
        answer = await client.post("/fhir", json=transaction(), headers=FHIR_JSON)
    assert answer.status_code == 403
    assert not forwarded.called


async def test_reading_the_new_record_still_needs_a_grant(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """The EHR may collect; disclosure still follows opt-in: the new patient and its
    result are the generic 404 to a reader without a grant (the EHR's own token included)."""
    router.get("/Patient/new1").respond(
        200, json={**NEW_PATIENT, "id": "new1", "meta": {"versionId": "1"}}
    )
    router.get("/Observation/o9").respond(
        200, json={**observation("Patient/new1"), "id": "o9", "meta": {"versionId": "1"}}
    )
    async with opt_in_client(make_client) as client:
        patient = await client.get("/fhir/Patient/new1")
        result = await client.get("/fhir/Observation/o9")
    assert (patient.status_code, result.status_code) == (404, 404)
    assert b"Ada" not in patient.content


async def test_a_create_answers_without_the_body_it_may_not_disclose(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """``Prefer: return=representation`` does not turn collection into access."""
    router.post("/Patient").respond(
        201,
        json={**NEW_PATIENT, "id": "new1", "meta": {"versionId": "1"}},
        headers={"location": "http://upstream.test:8103/fhir/Patient/new1/_history/1"},
    )
    async with opt_in_client(make_client) as client:
        answer = await client.post(
            "/fhir/Patient",
            json=NEW_PATIENT,
            headers={**FHIR_JSON, "prefer": "return=representation"},
        )
    assert answer.status_code == 201
    assert answer.content == b""


async def test_a_consent_that_denies_collection_still_refuses(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, dev_key_file: Path
) -> None:
    """p1 permits everything but collection: the EHR's new result for p1 is refused and not
    forwarded, while a new result for p2 (no consent) goes through."""
    created = router.post("/Observation").respond(
        201, headers={"location": "http://upstream.test:8103/fhir/Observation/o9/_history/1"}
    )
    tokens = Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))
    no_collect = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "decision": "permit",
        "provision": [{"action": [{"coding": [{"system": CONSENT_ACTION, "code": "collect"}]}]}],
    }
    new_result = {k: v for k, v in observation("Patient/p1").items() if k != "id"}
    async with opt_in_client(make_client) as client:
        recorded = await client.post("/fhir/Consent", json=no_collect, headers=tokens.patient("p1"))
        assert recorded.status_code == 201
        refused = await client.post("/fhir/Observation", json=new_result, headers=FHIR_JSON)
        assert refused.status_code == 403
        assert not created.called
        other = {**new_result, "subject": {"reference": "Patient/p2"}}
        allowed = await client.post("/fhir/Observation", json=other, headers=FHIR_JSON)
    assert allowed.status_code == 201
    assert created.call_count == 1


async def test_a_patient_app_cannot_write_into_another_patients_record(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, dev_key_file: Path
) -> None:
    """The default is the record holder's: a patient-context caller creating data in p2's
    compartment is still decided by p2's (absent) consent under opt-in, and refused."""
    created = router.post("/Observation").respond(201)
    issuer = UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)
    token = issuer.issue(
        "p1-app", scopes="launch/patient patient/Observation.c", audience=AUDIENCE, patient="p1"
    )
    body = {
        **{k: v for k, v in observation("Patient/p1").items() if k != "id"},
        "performer": [{"reference": "Patient/p2"}],
    }
    async with opt_in_client(make_client) as client:
        answer = await client.post(
            "/fhir/Observation",
            json=body,
            headers={**FHIR_JSON, "authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 403
    assert not created.called
