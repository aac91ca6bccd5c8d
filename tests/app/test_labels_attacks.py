"""Labels on data through the gateway, the ways around them that are closed: label systems
spelled otherwise, labels on contained resources, labels a write would take off or a write
would probe, and the patient's own-record exemption claimed by others (consent.labels,
pipeline.judge, pipeline.targets)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import respx

from middleware.consent.labels import ACT_CODE
from middleware.pipeline.targets import DENIED_WRITE
from tests.app import test_labels as labels
from tests.app.consenting import FHIR_JSON, Tokens, r5_consent
from tests.app.test_labels import DR, PART2, dr, for_purposes, observation

# The fixtures of the label tests (tokens, a gateway opener with settings).
tokens = labels.tokens
gateway = labels.gateway


OLD_ACT_CODE = "http://hl7.org/fhir/v3/ActCode"
PATCH_JSON = {"content-type": "application/json-patch+json"}


async def _general_permit(client: httpx.AsyncClient, tokens: Tokens) -> None:
    created = await client.post(
        "/fhir/Consent", json=r5_consent("Patient/p1", "permit"), headers=tokens.patient("p1")
    )
    assert created.status_code == 201, created.text


# --- label systems and shapes


async def test_part2_with_the_retired_act_code_url_needs_its_explicit_consent(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: 42CFRPart2 under ``http://hl7.org/fhir/v3/ActCode`` was released under a
    general permit (the consent decision did not see it as Part 2)."""
    old = {"system": OLD_ACT_CODE, "code": "42CFRPart2"}
    router.get("/Observation/o1").respond(200, json=observation(security=[old]), headers=FHIR_JSON)
    async with gateway(consent_jurisdiction="opt-in") as client:
        await _general_permit(client, tokens)
        answer = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
    assert answer.status_code == 404
    assert "screening" not in answer.text


async def test_part2_with_no_system_needs_its_explicit_consent(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: ``{"code": "42CFRPart2"}`` with no system was released unmarked."""
    security = [{"code": "42CFRPart2"}]
    router.get("/Observation/o1").respond(
        200, json=observation(security=security), headers=FHIR_JSON
    )
    async with gateway(consent_jurisdiction="opt-in") as client:
        await _general_permit(client, tokens)
        answer = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
    assert answer.status_code == 404


async def test_a_purpose_label_under_the_oid_and_labels_that_are_no_list_withhold(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: a TREAT label under the HL7 OID of v3-ActReason, or a ``meta.security`` that
    is one object and not a list, released the record to a marketing caller."""
    oid = [{"system": "urn:oid:2.16.840.1.113883.5.8", "code": "TREAT"}]
    one = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
    router.get("/Observation/o1").respond(200, json=observation(security=oid), headers=FHIR_JSON)
    router.get("/Observation/o2").respond(
        200, json=observation("o2", security=one), headers=FHIR_JSON
    )
    async with gateway(consent_jurisdiction="opt-out") as client:
        first = await client.get("/fhir/Observation/o1", headers=dr(tokens, "HMARKT"))
        second = await client.get("/fhir/Observation/o2", headers=dr(tokens, "HMARKT"))
    assert (first.status_code, second.status_code) == (404, 404)


# --- contained resources


def _containing(security: list[dict[str, str]]) -> dict[str, Any]:
    container = observation()
    container["contained"] = [
        {
            "resourceType": "Condition",
            "id": "c1",
            "meta": {"security": security},
            "subject": {"reference": "Patient/p1"},
            "code": {"text": "opioid use disorder"},
        }
    ]
    container["hasMember"] = [{"reference": "#c1"}]
    return container


async def test_a_contained_resource_labelled_for_treatment_withholds_its_container(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: a TREAT-labelled Condition contained in an unlabelled Observation reached a
    marketing caller with it."""
    router.get("/Observation/o1").respond(
        200, json=_containing(for_purposes("TREAT")), headers=FHIR_JSON
    )
    async with gateway(consent_jurisdiction="opt-out") as client:
        refused = await client.get("/fhir/Observation/o1", headers=dr(tokens, "HMARKT"))
        treating = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
    assert refused.status_code == 404
    assert "opioid" not in refused.text
    assert treating.status_code == 200, treating.text


async def test_a_contained_part2_resource_makes_its_container_part2(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: Part 2 data contained in an unlabelled Observation was released under a
    general permit, without the notice. Now a general permit does not reach it, and a consent
    naming 42CFRPart2 releases it marked."""
    router.get("/Observation/o1").respond(200, json=_containing([PART2]), headers=FHIR_JSON)
    naming = r5_consent(
        "Patient/p1",
        "deny",
        provision=[{"actor": [{"reference": {"reference": DR}}], "securityLabel": [PART2]}],
    )
    async with gateway(consent_jurisdiction="opt-in") as client:
        await _general_permit(client, tokens)
        general = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
        created = await client.post("/fhir/Consent", json=naming, headers=tokens.patient("p1"))
        assert created.status_code == 201, created.text
        named = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
    assert general.status_code == 404
    assert "opioid" not in general.text
    assert named.status_code == 200, named.text
    codes = {(c.get("system"), c.get("code")) for c in named.json()["meta"]["security"]}
    assert (ACT_CODE, "NORDSCLCD") in codes


# --- the patient's own record


async def test_a_practitioner_launched_in_a_patient_context_is_not_the_patient(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: a practitioner's token with ``launch/patient`` and patient/ scopes read data
    labelled for treatment while asking for marketing (the exemption is the patient's)."""
    router.get("/Observation/o1").respond(
        200, json=observation(security=for_purposes("TREAT")), headers=FHIR_JSON
    )
    practitioner = tokens.bearer(
        "dr",
        "launch/patient patient/Observation.rs",
        fhir_user=DR,
        patient="p1",
        purpose_of_use=["HMARKT"],
    )
    as_the_patient = tokens.bearer(
        "user-p1", "launch/patient patient/Observation.rs", fhir_user="Patient/p1", patient="p1"
    )
    async with gateway(consent_jurisdiction="opt-out") as client:
        refused = await client.get("/fhir/Observation/o1", headers=practitioner)
        own = await client.get(
            "/fhir/Observation/o1", headers=tokens.patient("p1", "patient/Observation.rs")
        )
        patient_user = await client.get("/fhir/Observation/o1", headers=as_the_patient)
    assert refused.status_code == 404
    assert "screening" not in refused.text
    assert own.status_code == 200, own.text
    assert patient_user.status_code == 200, patient_user.text


async def test_data_also_about_another_patient_is_not_only_the_patients_own(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: p1's app read an Observation labelled for research that is in p2's
    compartment too (it names p2 as performer): the exemption covers p1's record alone."""
    shared = observation(security=for_purposes("HRESCH"))
    shared["performer"] = [{"reference": "Patient/p2"}]
    router.get("/Observation/o1").respond(200, json=shared, headers=FHIR_JSON)
    async with gateway(consent_jurisdiction="opt-out") as client:
        answer = await client.get(
            "/fhir/Observation/o1", headers=tokens.patient("p1", "patient/Observation.rs")
        )
    assert answer.status_code == 404
    assert "screening" not in answer.text


# --- writes


def _stored(*codes: str, extra: list[dict[str, str]] | None = None) -> dict[str, Any]:
    stored = observation(security=[*for_purposes(*codes), *(extra or [])])
    stored["meta"]["versionId"] = "1"
    return stored


def _writer(tokens: Tokens, *purposes: str) -> dict[str, str]:
    return tokens.bearer("dr", "user/Observation.rus", fhir_user=DR, purpose_of_use=list(purposes))


def _accept_puts(router: respx.Router, stored: dict[str, Any]) -> list[dict[str, Any]]:
    router.get("/Observation/o1").respond(200, json=stored, headers={**FHIR_JSON, "etag": 'W/"1"'})
    sent: list[dict[str, Any]] = []

    def put(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=sent[-1], headers=FHIR_JSON)

    router.put("/Observation/o1").mock(side_effect=put)
    return sent


async def test_a_patch_test_op_is_no_oracle_on_a_record_the_caller_may_not_read(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: a marketing caller's PATCH ``test`` ops told a TREAT-labelled record's
    content (a true test answered unlike a false one), and ``remove /meta/security`` took
    the label off. Every one now gets the read's generic 404, and nothing is written."""
    sent = _accept_puts(router, _stored("TREAT"))
    headers = {**_writer(tokens, "HMARKT"), **PATCH_JSON}
    patches = [
        [{"op": "test", "path": "/code/text", "value": "screening"}],
        [{"op": "test", "path": "/code/text", "value": "other"}],
        [{"op": "remove", "path": "/meta/security"}],
    ]
    async with gateway(consent_jurisdiction="opt-out") as client:
        answers = [
            await client.patch("/fhir/Observation/o1", content=json.dumps(p), headers=headers)
            for p in patches
        ]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert len({a.text for a in answers}) == 1
    assert sent == []


async def test_a_write_may_not_take_off_a_label_the_caller_is_not_entitled_to(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: a treating caller (who may read a record labelled TREAT and HRESCH) removed
    the research label with a PATCH, or wrote it back without it (or without Part 2) with a
    PUT, opening the record to callers the labels kept it from. 403, nothing written."""
    stored = _stored("TREAT", "HRESCH", extra=[PART2])
    sent = _accept_puts(router, stored)
    naming = r5_consent(
        "Patient/p1",
        "deny",
        provision=[{"actor": [{"reference": {"reference": DR}}], "securityLabel": [PART2]}],
    )
    headers = _writer(tokens, "TREAT")
    without_research = observation(security=[*for_purposes("TREAT"), PART2])
    without_part2 = observation(security=for_purposes("TREAT", "HRESCH"))
    remove = [{"op": "remove", "path": "/meta/security/1"}]  # HRESCH
    async with gateway(consent_jurisdiction="opt-out") as client:
        created = await client.post("/fhir/Consent", json=naming, headers=tokens.patient("p1"))
        assert created.status_code == 201, created.text
        patched = await client.patch(
            "/fhir/Observation/o1", content=json.dumps(remove), headers={**headers, **PATCH_JSON}
        )
        put_research = await client.put(
            "/fhir/Observation/o1", json=without_research, headers=headers
        )
        put_part2 = await client.put("/fhir/Observation/o1", json=without_part2, headers=headers)
        put_bare = await client.put("/fhir/Observation/o1", json=observation(), headers=headers)
    for answer in (patched, put_research, put_part2, put_bare):
        assert answer.status_code == 403, answer.text
        assert DENIED_WRITE in answer.text
    assert sent == []


async def test_a_caller_the_labels_admit_still_writes(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """A treating caller updates a TREAT-labelled record keeping its label (PUT and PATCH):
    forwarded, label and all."""
    sent = _accept_puts(router, _stored("TREAT"))
    headers = _writer(tokens, "TREAT")
    body = observation(security=for_purposes("TREAT"))
    body["code"] = {"text": "follow-up"}
    patch = [{"op": "replace", "path": "/code/text", "value": "reviewed"}]
    async with gateway(consent_jurisdiction="opt-out") as client:
        put = await client.put("/fhir/Observation/o1", json=body, headers=headers)
        patched = await client.patch(
            "/fhir/Observation/o1", content=json.dumps(patch), headers={**headers, **PATCH_JSON}
        )
    assert put.status_code == 200, put.text
    assert patched.status_code == 200, patched.text
    assert [s["meta"]["security"] for s in sent] == [for_purposes("TREAT")] * 2


# --- $explain


async def test_explain_uses_the_deployments_label_rules(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack on the explanation: a deployment that enforces HTEST labels (none ignored)
    withholds an HTEST-labelled record from a marketing caller; ``$explain`` said permit."""
    query = {
        "principal": {"reference": DR},
        "purpose": for_purposes("HMARKT"),
        "resource": observation(security=for_purposes("HTEST")),
    }
    async with gateway(consent_jurisdiction="opt-out", purpose_labels_ignored="") as client:
        answer = await client.post(
            "/fhir/Consent/$explain", json=query, headers=tokens.patient("p1")
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["effect"] == "deny"
    assert "purposes of use HTEST" in answer.json()["trace"][-1]["reason"]


async def test_a_transaction_may_not_take_off_a_label_either(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Attack: the same PUT without the research label, as an entry of a transaction."""
    sent = _accept_puts(router, _stored("TREAT", "HRESCH"))
    posted = router.post("/").respond(200, json={"resourceType": "Bundle"}, headers=FHIR_JSON)
    entry = {
        "fullUrl": "Observation/o1",
        "resource": observation(security=for_purposes("TREAT")),
        "request": {"method": "PUT", "url": "Observation/o1"},
    }
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    async with gateway(consent_jurisdiction="opt-out") as client:
        answer = await client.post("/fhir", json=bundle, headers=_writer(tokens, "TREAT"))
    assert answer.status_code == 403, answer.text
    assert sent == []
    assert not posted.called
