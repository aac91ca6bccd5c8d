"""Writes through the gateway reach the upstream unchanged: create (plain and conditional),
update, JSON Patch, delete, instance history, batch and transaction.

Each write goes through the gateway; once it has settled, the result is read both ways and
must be equal (a write's own ids, versions and timestamps cannot be compared with a second
write made directly). Every test makes its own resources.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.humanname import HumanName
from fhirclient.models.patient import Patient
from fhirpy import AsyncFHIRClient, SyncFHIRClient

from tests.integration.sides import Sides, entries

pytestmark = pytest.mark.integration

_FHIR_JSON = "application/fhir+json"


def _patient(family: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}], **more}


def _location_ref(sides: Sides, location: str) -> str:
    """``Type/id`` from a gateway Location (which must be on the gateway base)."""
    assert location.startswith(sides.gateway_base + "/"), location
    return "/".join(location[len(sides.gateway_base) + 1 :].split("/")[:2])


# --- create, update, patch, delete ------------------------------------------------------


def test_create_answers_gateway_location_and_reads_agree(sides: Sides) -> None:
    created = sides.gateway.post(
        f"{sides.gateway_base}/Patient",
        json=_patient("Create"),
        headers={"content-type": _FHIR_JSON},
    )
    sides.check_gateway_answer(created)
    assert created.status_code == 201
    reference = _location_ref(sides, created.headers["location"])
    assert reference == f"Patient/{created.json()['id']}"
    assert sides.same("GET", reference) == created.json()


async def test_fhirpy_async_create_update_delete(sides: Sides) -> None:
    client = AsyncFHIRClient(sides.gateway_base)
    patient: Any = client.resource("Patient", name=[{"family": "Fhirpy"}])
    await patient.save()
    first = sides.same("GET", f"Patient/{patient.id}")
    patient["gender"] = "unknown"
    await patient.save()
    second = sides.same("GET", f"Patient/{patient.id}")
    assert second["gender"] == "unknown"
    assert second["meta"]["versionId"] != first["meta"]["versionId"]
    await patient.delete()
    via, direct = sides.both("GET", f"Patient/{patient.id}")
    assert via.status_code == direct.status_code == 404


def test_fhirclient_create_update_delete(sides: Sides) -> None:
    server = fhirclient_client.FHIRClient(
        settings={"app_id": "consentry-it", "api_base": sides.gateway_base}
    ).server
    patient = Patient({"name": [{"family": "Fhirclient"}]})
    patient_id = patient.create(server)["id"]
    patient = Patient.read(patient_id, server)
    patient.name.append(HumanName({"family": "Updated"}))
    patient.update(server)
    resource = sides.same("GET", f"Patient/{patient_id}")
    assert [name["family"] for name in resource["name"]] == ["Fhirclient", "Updated"]
    patient.delete(server)
    via, direct = sides.both("GET", f"Patient/{patient_id}")
    assert via.status_code == direct.status_code == 404
    assert via.json()["resourceType"] == "OperationOutcome"


def test_conditional_create_finds_the_existing_resource(sides: Sides) -> None:
    identifier = {"system": "urn:consentry:it", "value": uuid.uuid4().hex}
    condition = {"if-none-exist": f"identifier=urn:consentry:it|{identifier['value']}"}

    def create() -> Any:
        response = sides.gateway.post(
            f"{sides.gateway_base}/Patient",
            json=_patient("Conditional", identifier=[identifier]),
            headers={"content-type": _FHIR_JSON, **condition},
        )
        sides.check_gateway_answer(response)
        return response

    first, second = create(), create()
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    direct = sides.direct.post(  # the upstream sees the same resource as existing
        f"{sides.upstream_base}/Patient",
        json=_patient("Conditional", identifier=[identifier]),
        headers={"content-type": _FHIR_JSON, **condition},
    )
    assert direct.status_code == 200
    assert direct.json() == second.json()
    bundle = sides.same("GET", f"Patient?identifier=urn:consentry:it|{identifier['value']}")
    assert bundle["total"] == 1


def test_json_patch_applies_and_reads_agree(sides: Sides) -> None:
    created = SyncFHIRClient(sides.gateway_base).resource("Patient", **_patient("Patch"))
    created.save()
    patched = sides.gateway.patch(
        f"{sides.gateway_base}/Patient/{created.id}",
        content=b'[{"op": "add", "path": "/gender", "value": "other"},'
        b' {"op": "replace", "path": "/name/0/family", "value": "Patched"}]',
        headers={"content-type": "application/json-patch+json"},
    )
    sides.check_gateway_answer(patched)
    assert patched.status_code == 200, patched.text
    resource = sides.same("GET", f"Patient/{created.id}")
    assert resource == patched.json()
    assert (resource["gender"], resource["name"][0]["family"]) == ("other", "Patched")


def test_delete_through_gateway_removes_it_upstream(sides: Sides) -> None:
    created = sides.gateway.post(
        f"{sides.gateway_base}/Patient",
        json=_patient("Delete"),
        headers={"content-type": _FHIR_JSON},
    ).json()
    deleted = sides.gateway.delete(f"{sides.gateway_base}/Patient/{created['id']}")
    assert deleted.status_code in (200, 204)
    via, direct = sides.both("GET", f"Patient/{created['id']}")
    assert via.status_code == direct.status_code == 404
    assert via.json() == direct.json()


# --- history ----------------------------------------------------------------------------


def test_instance_history_and_every_vread_equal_direct(sides: Sides) -> None:
    patient = SyncFHIRClient(sides.gateway_base).resource("Patient", **_patient("History"))
    patient.save()
    for gender in ("male", "female"):
        patient["gender"] = gender
        patient.save()
    history = sides.same("GET", f"Patient/{patient.id}/_history")
    versions = [resource["meta"]["versionId"] for resource in entries(history)]
    assert len(set(versions)) == 3
    for version in versions:
        sides.same("GET", f"Patient/{patient.id}/_history/{version}")


# --- batch and transaction --------------------------------------------------------------


def test_read_only_batch_equals_direct(sides: Sides, patient_id: str) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "GET", "url": f"Encounter?patient=Patient/{patient_id}"}},
            {"request": {"method": "GET", "url": f"Patient/{patient_id}/_history"}},
        ],
    }
    answer = sides.same("POST", "", json=batch, headers={"content-type": _FHIR_JSON})
    assert answer["type"] == "batch-response"
    assert [entry["response"]["status"][:3] for entry in answer["entry"]] == [
        "200",
        "404",
        "200",
        "200",
    ]


def test_batch_with_writes(sides: Sides) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": _patient("Batch"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": "Patient/does-not-exist"}},
        ],
    }
    answer = sides.gateway.post(
        sides.gateway_base, json=batch, headers={"content-type": _FHIR_JSON}
    )
    sides.check_gateway_answer(answer)
    assert answer.status_code == 200, answer.text
    created, missing = answer.json()["entry"]
    assert created["response"]["status"].startswith("201")
    assert missing["response"]["status"].startswith("404")
    reference = f"Patient/{created['resource']['id']}"
    assert sides.same("GET", reference) == created["resource"]


def test_transaction_resolves_references_and_reads_agree(sides: Sides) -> None:
    patient_urn, observation_urn = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": _patient("Transaction"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": observation_urn,
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "transaction test"},
                    "subject": {"reference": patient_urn},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    answer = sides.gateway.post(
        sides.gateway_base, json=transaction, headers={"content-type": _FHIR_JSON}
    )
    sides.check_gateway_answer(answer)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["type"] == "transaction-response"
    patient, observation = (entry["resource"] for entry in bundle["entry"])
    assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
    assert sides.same("GET", f"Patient/{patient['id']}") == patient
    assert sides.same("GET", f"Observation?subject=Patient/{patient['id']}")["total"] == 1


def test_failed_transaction_changes_nothing(sides: Sides) -> None:
    family = f"Rollback{uuid.uuid4().hex[:8]}"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(family), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "birthDate": "not-a-date"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    answer = sides.gateway.post(
        sides.gateway_base, json=transaction, headers={"content-type": _FHIR_JSON}
    )
    sides.check_gateway_answer(answer)
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    assert sides.same("GET", f"Patient?family={family}")["total"] == 0
