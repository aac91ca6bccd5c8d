"""Writes through the gateway reach the upstream unchanged: create (plain and conditional),
update, JSON Patch, delete, instance history, batch and transaction.

Each write goes through the gateway with a ``system/*.cruds`` token (opt-out, no consent on
file: every write is allowed); once it has settled, the result is read both ways and must be
equal (a write's own ids, versions and timestamps cannot be compared with a second write made
directly). Every test makes its own resources.

Under enforcement the gateway answers upstream errors with its own generic OperationOutcome
(only a plain create/update/patch keeps the upstream's 400/422 outcome about the caller's own
body), and it answers each batch entry itself, through the whole pipeline.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.humanname import HumanName
from fhirclient.models.patient import Patient
from fhirpy import AsyncFHIRClient, SyncFHIRClient

from tests.integration.enforcing import GENERIC_NOT_FOUND
from tests.integration.sides import Sides, comparable, entries

pytestmark = pytest.mark.integration

_FHIR_JSON = "application/fhir+json"
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3])"
    r":[0-5][0-9]|14:00))"
)  # FHIR R4 datatypes.html#instant


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
    client = AsyncFHIRClient(sides.gateway_base, authorization=sides.authorization)
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
    server.session.headers["Authorization"] = sides.authorization
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
    created = SyncFHIRClient(sides.gateway_base, authorization=sides.authorization).resource(
        "Patient", **_patient("Patch")
    )
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
    """A delete through the gateway reaches the upstream: both sides answer 404 afterwards.
    Under enforcement the gateway's 404 is its generic one (the same for a deleted, a missing
    and a hidden record), not the upstream's OperationOutcome."""
    created = sides.gateway.post(
        f"{sides.gateway_base}/Patient",
        json=_patient("Delete"),
        headers={"content-type": _FHIR_JSON},
    ).json()
    deleted = sides.gateway.delete(f"{sides.gateway_base}/Patient/{created['id']}")
    assert deleted.status_code in (200, 204)
    via, direct = sides.both("GET", f"Patient/{created['id']}")
    assert via.status_code == direct.status_code == 404
    assert via.json() == GENERIC_NOT_FOUND
    assert direct.json()["resourceType"] == "OperationOutcome"


# --- history ----------------------------------------------------------------------------


def test_instance_history_and_every_vread_equal_direct(sides: Sides) -> None:
    patient = SyncFHIRClient(sides.gateway_base, authorization=sides.authorization).resource(
        "Patient", **_patient("History")
    )
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


def _read_only_batch(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "GET", "url": f"Encounter?patient=Patient/{patient_id}"}},
            {"request": {"method": "GET", "url": f"Patient/{patient_id}/_history"}},
        ],
    }


def test_read_only_batch_equals_direct(sides: Sides, patient_id: str) -> None:
    """Each entry of a read-only batch has the status the upstream's batch gives it, and each
    search entry's Bundle equals what that search answers on its own.

    Under enforcement the gateway answers every entry itself, as if the client had sent it
    alone (each through the whole pipeline): an entry's ``response`` details are its own (no
    ``outcome`` on success, its generic 404 outcome), and its Bundles are those of a plain
    search (with ``fullUrl``, which Medplum leaves out of Bundles inside its own
    batch-response), compared as ``sides.comparable`` does. The read entry's resource is
    checked by the next test (a gateway bug)."""
    batch = _read_only_batch(patient_id)
    via, direct = sides.both("POST", "", json=batch, headers={"content-type": _FHIR_JSON})
    assert via.status_code == direct.status_code == 200, via.text
    via_entries, direct_entries = via.json()["entry"], direct.json()["entry"]
    assert via.json()["type"] == direct.json()["type"] == "batch-response"
    statuses = [entry["response"]["status"][:3] for entry in via_entries]
    assert statuses == [entry["response"]["status"][:3] for entry in direct_entries]
    assert statuses == ["200", "404", "200", "200"]
    assert "resource" not in via_entries[1]
    assert via_entries[1]["response"]["outcome"] == GENERIC_NOT_FOUND
    for index in (2, 3):
        alone = sides.direct.get(
            sides.url(sides.upstream_base, batch["entry"][index]["request"]["url"])
        )
        assert comparable(sides.normalise(via_entries[index]["resource"])) == comparable(
            alone.json()
        )


def test_read_only_batch_read_entry_carries_the_resource(sides: Sides, patient_id: str) -> None:
    """A read inside a batch answers the resource, as the same read does on its own."""
    via = sides.gateway.post(
        sides.gateway_base, json=_read_only_batch(patient_id), headers={"content-type": _FHIR_JSON}
    )
    assert via.status_code == 200, via.text
    alone = sides.direct.get(f"{sides.upstream_base}/Patient/{patient_id}").json()
    assert via.json()["entry"][0].get("resource") == alone


def test_batch_entry_last_modified_is_a_fhir_instant(sides: Sides, patient_id: str) -> None:
    """``Bundle.entry.response.lastModified`` is a FHIR ``instant`` (R4 bundle.html), not an
    HTTP date: a client parsing the batch-response with typed models rejects it otherwise."""
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Patient/{patient_id}"}}],
    }
    answer = sides.gateway.post(
        sides.gateway_base, json=batch, headers={"content-type": _FHIR_JSON}
    )
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["entry"]
    assert _INSTANT.fullmatch(entry["response"].get("lastModified", "2024-01-01T00:00:00Z"))


def test_batch_with_writes(sides: Sides) -> None:
    """A batch create answers 201 with the created resource, which reads the same both ways;
    a delete of a missing record answers 404 (the gateway's generic one)."""
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
    assert missing["response"]["outcome"] == GENERIC_NOT_FOUND
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
    """A transaction the upstream refuses (400) changes nothing. Under enforcement the
    gateway answers a failed transaction with its own generic OperationOutcome (the
    upstream's could describe other entries' data); a plain create of the same invalid
    resource still gets the upstream's outcome, which is about the caller's own body."""
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
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [issue["code"] for issue in outcome["issue"]] == ["invalid"]
    assert "expression" not in outcome["issue"][0]
    assert sides.same("GET", f"Patient?family={family}")["total"] == 0
    plain = sides.gateway.post(
        f"{sides.gateway_base}/Patient",
        json={"resourceType": "Patient", "birthDate": "not-a-date"},
        headers={"content-type": _FHIR_JSON},
    )
    assert plain.status_code == 400
    assert plain.json()["issue"][0]["expression"] == ["Patient.birthDate"]


def test_a_create_retried_under_its_idempotency_key_is_stored_once_upstream(sides: Sides) -> None:
    """The retry a client sends when its create's answer was lost (or was a 503) is answered
    by the real upstream with the record it stored the first time (200, same id): the
    gateway's tag and ``If-None-Exist`` on it are honoured by the upstream, so the upstream
    holds one record under that tag, not two."""
    family = f"Idem{uuid.uuid4().hex[:10]}"
    headers = {"content-type": _FHIR_JSON, "idempotency-key": str(uuid.uuid4())}
    url = f"{sides.gateway_base}/Patient"
    first = sides.gateway.post(url, json=_patient(family), headers=headers)
    retry = sides.gateway.post(url, json=_patient(family), headers=headers)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert _location_ref(sides, first.headers["location"]) == f"Patient/{retry.json()['id']}"
    found = sides.direct.get(f"{sides.upstream_base}/Patient", params={"family": family}).json()
    assert len(entries(found, "match")) == 1


def test_an_idempotency_key_reused_for_another_body_is_422_upstream_unchanged(
    sides: Sides,
) -> None:
    """A key reused for another patient's record was answered 200 with the first record (the
    real upstream matched the key's tag) and the second body was never stored. Against the
    real upstream the reuse is now 422, the second body is not stored, and a retry of the
    first body under its key is still answered with the first record (200)."""
    family = f"Idem{uuid.uuid4().hex[:10]}"
    headers = {"content-type": _FHIR_JSON, "idempotency-key": str(uuid.uuid4())}
    url = f"{sides.gateway_base}/Patient"
    first = sides.gateway.post(url, json=_patient(family), headers=headers)
    reused = sides.gateway.post(url, json=_patient(family + "b"), headers=headers)
    retry = sides.gateway.post(url, json=_patient(family), headers=headers)
    assert (first.status_code, reused.status_code, retry.status_code) == (201, 422, 200)
    assert family not in reused.text
    assert retry.json()["id"] == first.json()["id"]
    for name in (family, family + "b"):
        found = sides.direct.get(f"{sides.upstream_base}/Patient", params={"family:exact": name})
        assert len(entries(found.json(), "match")) == (name == family)
