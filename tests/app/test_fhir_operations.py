"""FHIR operations by the operations table: ``$lastn``, ``$everything``, ``$document`` and
``$stats`` filtered, terminology and ``$validate`` forwarded with audit, the rest refused.

The setting: Patient/p1 denies Practitioner/dr, p2 has no consent (opt-out: permit). The
upstream (respx) answers each operation with p1's data where it can; every test says the
attack and what the gateway must not release."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.consent.summary import INLINE_LABEL_URL
from middleware.fhir.request import Level
from middleware.pipeline.operation_table import Mode, Row, parse_operations
from middleware.settings import Settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, r5_consent

DR = "Practitioner/dr"
PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
SECRET = "SECRET-P1"
JSON = {"content-type": "application/fhir+json"}


def obs(rid: str, patient: str, code: str = "718-7") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": patient},
        "note": [{"text": SECRET if patient == "Patient/p1" else "fine"}],
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def document(patient: str, *more: dict[str, Any]) -> dict[str, Any]:
    composition = {
        "resourceType": "Composition",
        "id": "c1",
        "status": "final",
        "type": {"text": "summary"},
        "subject": {"reference": patient},
        "date": "2026-01-01",
        "title": "Summary",
        "author": [{"reference": DR}],
    }
    entries = [
        {"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate((composition, *more))
    ]
    return {"resourceType": "Bundle", "type": "document", "entry": entries}


STATS = {
    "resourceType": "Parameters",
    "parameter": [{"name": "statistic", "valueQuantity": {"value": 13.2, "unit": "g/dL"}}],
}


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
def make_gateway(
    make_app: Callable[..., Gateway], dev_key_file: Path, tokens: Tokens
) -> Callable[..., Any]:
    """A gateway (settings ``overrides``) where p1 denies the doctor; closed by the caller."""

    async def make(**overrides: Any) -> tuple[Gateway, httpx.AsyncClient]:
        settings = {"consent_jurisdiction": "opt-out", **overrides}
        app = make_app(auth=auth_settings(dev_key_file), **settings)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway.test")
        provision: dict[str, Any] = {"actor": [{"reference": {"reference": DR}}]}
        body = r5_consent("Patient/p1", "permit", provision=[provision])
        created = await client.post("/fhir/Consent", json=body, headers=tokens.patient("p1"))
        assert created.status_code == 201, created.text
        return app, client

    return make


@pytest.fixture
async def gateway(make_gateway: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    app, client = await make_gateway()
    yield client
    await client.aclose()
    await app.aclose()


@pytest.fixture
def dr(tokens: Tokens) -> dict[str, str]:
    return tokens.bearer("dr", "user/*.rs", fhir_user=DR)


@pytest.fixture
def p2(tokens: Tokens) -> dict[str, str]:
    return tokens.patient("p2", "patient/*.rs")


def ids(answer: httpx.Response) -> set[str]:
    bundle = answer.json()
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
    }


def sent(router: respx.Router, fragment: str) -> list[httpx.Request]:
    return [c.request for c in router.calls if fragment in c.request.url.path]


# --- $lastn: filtered like a search ----------------------------------------------------------


async def test_lastn_releases_nothing_of_a_denying_patient(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """The doctor asks for the last results of everyone: p1's are withheld, p2's released
    (was: every operation but $everything refused; an unfiltered $lastn would answer all)."""
    router.get("/Observation/$lastn").respond(
        200, json=searchset(obs("o-p1", "Patient/p1"), obs("o-p2", "Patient/p2")), headers=JSON
    )
    answer = await gateway.get("/fhir/Observation/$lastn?code=718-7", headers=dr)
    assert answer.status_code == 200
    assert ids(answer) == {"Observation/o-p2"}
    assert SECRET not in answer.text
    assert "total" not in answer.json()


async def test_lastn_of_only_a_denying_patient_is_an_empty_page_not_a_404(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """A 404 for p1's withheld results and a 200 for a patient without any would tell the
    doctor that p1 has matching results: both are empty searchsets."""
    router.get("/Observation/$lastn", params={"patient": "Patient/p1"}).respond(
        200, json=searchset(obs("o-p1", "Patient/p1")), headers=JSON
    )
    router.get("/Observation/$lastn", params={"patient": "Patient/p9"}).respond(
        200, json=searchset(), headers=JSON
    )
    denied = await gateway.get("/fhir/Observation/$lastn?patient=Patient/p1", headers=dr)
    missing = await gateway.get("/fhir/Observation/$lastn?patient=Patient/p9", headers=dr)
    assert denied.status_code == missing.status_code == 200
    assert "entry" not in denied.json()
    assert SECRET not in denied.text


async def test_lastn_elements_are_applied_after_judging_whole_resources(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """``_elements=code`` sent upstream would strip ``subject``: the judge would find no
    patient and withhold p2's result (or, with unknown patients allowed, release p1's)."""
    route = router.get("/Observation/$lastn").respond(
        200, json=searchset(obs("o-p1", "Patient/p1"), obs("o-p2", "Patient/p2")), headers=JSON
    )
    answer = await gateway.get("/fhir/Observation/$lastn?_elements=code", headers=dr)
    assert answer.status_code == 200
    assert ids(answer) == {"Observation/o-p2"}
    (resource,) = [e["resource"] for e in answer.json()["entry"]]
    assert "note" not in resource
    assert "code" in resource
    assert "_elements" not in dict(route.calls.last.request.url.params.multi_items())


async def test_lastn_of_a_patient_context_caller_is_pinned_to_its_compartment(
    gateway: httpx.AsyncClient, router: respx.Router, p2: dict[str, str]
) -> None:
    route = router.get("/Observation/$lastn").respond(200, json=searchset(), headers=JSON)
    answer = await gateway.get("/fhir/Observation/$lastn?code=718-7", headers=p2)
    assert answer.status_code == 200
    (call,) = route.calls
    assert ("patient", "Patient/p2") in call.request.url.params.multi_items()


async def test_a_patient_context_caller_cannot_reach_another_patient_by_operation(
    gateway: httpx.AsyncClient, router: respx.Router, p2: dict[str, str]
) -> None:
    """p2's app names p1 in $lastn, $everything (both levels), $stats: nothing is forwarded."""
    router.route().respond(200, json=searchset(obs("o-p1", "Patient/p1")), headers=JSON)
    lastn = await gateway.get("/fhir/Observation/$lastn?patient=Patient/p1", headers=p2)
    everything = await gateway.get("/fhir/Patient/p1/$everything", headers=p2)
    all_everything = await gateway.get("/fhir/Patient/$everything", headers=p2)
    stats = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p1&code=718-7&statistic=average", headers=p2
    )
    assert lastn.status_code == 403
    assert everything.status_code == 404
    assert all_everything.status_code == 403
    assert stats.status_code == 404
    assert not router.calls
    for answer in (lastn, everything, all_everything, stats):
        assert SECRET not in answer.text


async def test_type_level_everything_is_filtered(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    router.get("/Patient/$everything").respond(
        200, json=searchset(obs("o-p1", "Patient/p1"), obs("o-p2", "Patient/p2")), headers=JSON
    )
    answer = await gateway.get("/fhir/Patient/$everything", headers=dr)
    assert answer.status_code == 200
    assert ids(answer) == {"Observation/o-p2"}


# --- $document: whole or nothing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "status"),
    [
        (document("Patient/p1", obs("o-p1", "Patient/p1")), 404),
        (document("Patient/p2", obs("o-p2", "Patient/p2"), obs("o-p1", "Patient/p1")), 404),
        (document("Patient/p2", obs("o-p2", "Patient/p2")), 200),
    ],
    ids=["composition-withheld", "one-entry-withheld", "all-permitted"],
)
async def test_document_is_released_whole_or_not_at_all(
    gateway: httpx.AsyncClient,
    router: respx.Router,
    dr: dict[str, str],
    doc: dict[str, Any],
    status: int,
) -> None:
    """A document of p1, or of p2 carrying one of p1's results, is the generic 404: a
    document with an entry cut out misrepresents the record."""
    router.get("/Composition/c1/$document").respond(200, json=doc, headers=JSON)
    answer = await gateway.get("/fhir/Composition/c1/$document", headers=dr)
    assert answer.status_code == status
    assert SECRET not in answer.text
    if status == 200:
        assert len(answer.json()["entry"]) == len(doc["entry"])


async def test_document_that_would_be_stored_is_refused(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    answer = await gateway.get("/fhir/Composition/c1/$document?persist=true", headers=dr)
    assert answer.status_code == 403
    assert not router.calls


# --- $stats: only when every input may be seen ----------------------------------------------


async def test_stats_of_a_denying_patient_is_the_generic_404_and_not_computed(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """An average of p1's hemoglobin discloses it: the statistics are never asked for."""
    router.get("/Observation").respond(200, json=searchset(obs("o-p1", "Patient/p1")), headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    router.get("/Observation/missing").respond(404)
    answer = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p1&code=718-7&system=http://loinc.org"
        "&statistic=average",
        headers=dr,
    )
    missing = await gateway.get("/fhir/Observation/missing", headers=dr)
    assert answer.status_code == 404
    assert answer.content == missing.content
    assert not stats.calls


async def test_stats_of_a_denying_patient_without_results_is_the_same_404(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """p1 has no such result: a 200 counting nothing would tell the doctor so (and a 404 that
    p1 has some); the consent alone answers."""
    router.get("/Observation").respond(200, json=searchset(), headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answer = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p1&code=718-7&statistic=count", headers=dr
    )
    assert answer.status_code == 404
    assert not stats.calls


async def test_stats_of_a_permitting_patient_are_released(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    search = router.get("/Observation").respond(
        200, json=searchset(obs("o-p2", "Patient/p2")), headers=JSON
    )
    router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answer = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p2&code=718-7&system=http://loinc.org"
        "&statistic=average",
        headers=dr,
    )
    assert answer.status_code == 200
    assert answer.json() == STATS
    (call,) = search.calls
    params = call.request.url.params
    assert params["patient"] == "Patient/p2"
    assert params["code"] == "http://loinc.org|718-7"


async def test_stats_are_withheld_when_the_upstream_mixes_in_a_denying_patient(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """An upstream that ignores ``patient`` answers p1's result too: fail closed."""
    router.get("/Observation").respond(
        200, json=searchset(obs("o-p2", "Patient/p2"), obs("o-p1", "Patient/p1")), headers=JSON
    )
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answer = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p2&code=718-7&statistic=average", headers=dr
    )
    assert answer.status_code == 404
    assert not stats.calls


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("code=718-7&statistic=average", 400),
        ("subject=Patient/p2&subject=Patient/p1&code=718-7", 400),
        ("subject=Patient/p2,Patient/p1&code=718-7", 400),
        ("subject=Patient/p2&statistic=average", 400),
        ("subject=Patient/p2&code=718-7&subject.name=x", 400),
        ("subject=Patient/p2&code=718-7&include=true", 403),
    ],
    ids=["no-subject", "two-subjects", "comma-subjects", "no-code", "unknown-param", "include"],
)
async def test_stats_that_cannot_be_vouched_for_are_refused(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], query: str, status: int
) -> None:
    answer = await gateway.get(f"/fhir/Observation/$stats?{query}", headers=dr)
    assert answer.status_code == status
    assert not router.calls


# --- forwarded with audit ----------------------------------------------------------------------


async def test_terminology_is_forwarded_and_audited(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], store: MemoryLogStore
) -> None:
    expansion = {
        "resourceType": "ValueSet",
        "status": "active",
        "url": "http://upstream.test:8103/fhir/ValueSet/vs1",
        "expansion": {"timestamp": "2026-01-01", "contains": [{"code": "a"}]},
    }
    route = router.get("/ValueSet/$expand").respond(200, json=expansion, headers=JSON)
    before = await store.size()
    answer = await gateway.get("/fhir/ValueSet/$expand?url=http://x/vs", headers=dr)
    assert answer.status_code == 200
    assert answer.json()["expansion"] == expansion["expansion"]
    assert route.calls.last.request.url.params["url"] == "http://x/vs"
    assert await store.size() == before + 1


async def test_validate_posts_its_body_and_returns_the_outcome(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational"}],
    }
    route = router.post("/Observation/$validate").respond(200, json=outcome, headers=JSON)
    body = obs("new", "Patient/p2")
    answer = await gateway.post("/fhir/Observation/$validate", json=body, headers={**dr, **JSON})
    assert answer.status_code == 200
    assert answer.json() == outcome
    # The client's own resource is what is validated, as sent: not a stored record.
    assert json.loads(route.calls.last.request.content) == body


async def test_a_forwarded_answer_carrying_patient_data_is_withheld(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """An upstream that answers a terminology call with a patient's resource (a
    misconfiguration, or an attack through the operation's parameters)."""
    leaky = {
        "resourceType": "Parameters",
        "parameter": [{"name": "x", "resource": obs("o-p1", "Patient/p1")}],
    }
    router.get("/CodeSystem/$lookup").respond(200, json=leaky, headers=JSON)
    answer = await gateway.get("/fhir/CodeSystem/$lookup?code=a&system=http://s", headers=dr)
    assert answer.status_code == 404
    assert SECRET not in answer.text


# --- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Patient/p1/$summary"),
        ("POST", "/fhir/Patient/$match"),
        ("GET", "/fhir/Patient/p1/$validate"),
        ("GET", "/fhir/$meta"),
        ("GET", "/fhir/Observation/o-p1/$meta"),
    ],
    ids=["instance-summary", "type-match", "instance-validate", "system-meta", "instance-meta"],
)
async def test_an_operation_not_in_the_table_is_refused_and_not_forwarded(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], method: str, path: str
) -> None:
    router.route().respond(200, json=searchset(obs("o-p1", "Patient/p1")), headers=JSON)
    body = {"resourceType": "Parameters"} if method == "POST" else None
    answer = await gateway.request(method, path, json=body, headers=dr)
    assert answer.status_code == 403
    assert not router.calls


# --- the table is configuration --------------------------------------------------------------


async def test_a_configured_row_changes_what_passes(
    make_gateway: Callable[..., Any], router: respx.Router, dr: dict[str, str]
) -> None:
    """Rows over the defaults: $lastn refused, Patient/$match filtered like a search."""
    router.get("/Patient/$match").respond(
        200, json=searchset(obs("o-p1", "Patient/p1"), obs("o-p2", "Patient/p2")), headers=JSON
    )
    app, client = await make_gateway(
        operations={"Observation/$lastn": "refuse", "Patient/$match": "filter"}
    )
    lastn = await client.get("/fhir/Observation/$lastn", headers=dr)
    match = await client.get("/fhir/Patient/$match", headers=dr)
    await client.aclose()
    await app.aclose()
    assert lastn.status_code == 403
    assert match.status_code == 200
    assert ids(match) == {"Observation/o-p2"}


async def test_replacing_the_defaults_refuses_what_the_table_does_not_name(
    make_gateway: Callable[..., Any], router: respx.Router, dr: dict[str, str]
) -> None:
    app, client = await make_gateway(
        operations={"CodeSystem/$lookup": "forward"}, operations_replace_defaults=True
    )
    everything = await client.get("/fhir/Patient/p2/$everything", headers=dr)
    await client.aclose()
    await app.aclose()
    assert everything.status_code == 403
    assert not router.calls


async def test_document_with_a_redacted_entry_is_withheld(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """Uncovered labels redacted: the entry would be released with its labelled note cut out,
    a document that no longer says what its author attested. The whole document is the 404,
    while the same Observation read alone is released redacted."""
    labelled = {
        **obs("o-p2", "Patient/p2"),
        "note": [
            {"text": "routine"},
            {
                "text": "psychiatric history",
                "extension": [{"url": INLINE_LABEL_URL, "valueCoding": PSY}],
            },
        ],
    }
    router.get("/Composition/c1/$document").respond(
        200, json=document("Patient/p2", labelled), headers=JSON
    )
    router.get("/Observation/o-p2").respond(200, json=labelled, headers=JSON)
    async with make_client(consent_uncovered_labels="redact") as client:
        doc = await client.get("/fhir/Composition/c1/$document")
        alone = await client.get("/fhir/Observation/o-p2")
    assert alone.status_code == 200
    assert alone.json()["note"] == [{"text": "routine"}]
    assert doc.status_code == 404
    assert "psychiatric" not in doc.text


# --- $everything: nothing of a patient the caller may not see ---------------------------------

LOINC = "http://loinc.org"
MED = {"resourceType": "Medication", "id": "methadone", "code": {"text": "Methadone 10mg"}}
ORG = {"resourceType": "Organization", "id": "sud-clinic", "name": "Opioid Treatment Program"}
ASPIRIN = {"resourceType": "Medication", "id": "aspirin", "code": {"text": "Aspirin"}}


def patient(pid: str) -> dict[str, Any]:
    family = SECRET if pid == "p1" else "Fine"
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def prescription(rid: str, patient: str, medication: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": patient},
        "medicationReference": {"reference": medication},
    }


async def test_everything_of_a_denying_patient_is_the_missing_404_not_its_linked_resources(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """p1 denies the doctor; p1's $everything carries the methadone and the opioid treatment
    clinic its records name. Judged on scopes alone they were released (200): p1's treatment
    by association, and a 200 where a missing patient gets a 404. p1's consent answers for
    the whole record: nothing is asked of the upstream."""
    p1_route = router.get("/Patient/p1/$everything").respond(
        200,
        json=searchset(
            patient("p1"), prescription("mr-p1", "Patient/p1", "Medication/methadone"), MED, ORG
        ),
        headers=JSON,
    )
    router.get("/Patient/nope/$everything").respond(
        404, json={"resourceType": "OperationOutcome", "issue": []}, headers=JSON
    )
    denied = await gateway.get("/fhir/Patient/p1/$everything", headers=dr)
    missing = await gateway.get("/fhir/Patient/nope/$everything", headers=dr)
    assert denied.status_code == missing.status_code == 404
    assert denied.content == missing.content
    assert not p1_route.calls
    for word in (SECRET, "Methadone", "Opioid"):
        assert word not in denied.text


async def test_everything_releases_a_linked_resource_only_beside_a_record_naming_it(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """Type level, p1's and p2's records together: p2's prescription brings its aspirin; the
    methadone and the clinic only p1's withheld records name are dropped."""
    p1_obs = obs("o-p1", "Patient/p1") | {"performer": [{"reference": "Organization/sud-clinic"}]}
    router.get("/Patient/$everything").respond(
        200,
        json=searchset(
            patient("p1"),
            patient("p2"),
            p1_obs,
            prescription("mr-p1", "Patient/p1", "Medication/methadone"),
            prescription("mr-p2", "Patient/p2", "Medication/aspirin"),
            MED,
            ORG,
            ASPIRIN,
        ),
        headers=JSON,
    )
    answer = await gateway.get("/fhir/Patient/$everything", headers=dr)
    assert answer.status_code == 200
    assert ids(answer) == {"Patient/p2", "MedicationRequest/mr-p2", "Medication/aspirin"}


async def test_everything_of_a_patient_drops_resources_none_of_its_records_name(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    router.get("/Patient/p2/$everything").respond(
        200,
        json=searchset(
            patient("p2"), prescription("mr-p2", "Patient/p2", "Medication/aspirin"), ASPIRIN, ORG
        ),
        headers=JSON,
    )
    answer = await gateway.get("/fhir/Patient/p2/$everything", headers=dr)
    assert answer.status_code == 200
    assert ids(answer) == {"Patient/p2", "MedicationRequest/mr-p2", "Medication/aspirin"}


async def test_everything_whose_first_page_does_not_release_the_patient_is_the_404(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """The Patient's own record carries what its consent says of it (labels): a first page
    without it released is not the record of a patient the caller may see."""
    labelled = patient("p2") | {"meta": {"security": [PSY]}}
    router.get("/Patient/p2/$everything").respond(
        200, json=searchset(labelled, obs("o-p2", "Patient/p2")), headers=JSON
    )
    answer = await gateway.get("/fhir/Patient/p2/$everything", headers=dr)
    assert answer.status_code == 404
    assert "o-p2" not in answer.text


# --- subsets and guards on every filtered operation ----------------------------------------


async def _deny_code_for_dr(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """p3 permits, except the doctor's hemoglobin results (LOINC 718-7)."""
    provision = {
        "actor": [{"reference": {"reference": DR}}],
        "code": [{"coding": [{"system": LOINC, "code": "718-7"}]}],
    }
    body = r5_consent("Patient/p3", "permit", provision=[provision])
    created = await client.post("/fhir/Consent", json=body, headers=tokens.patient("p3"))
    assert created.status_code == 201, created.text


async def test_everything_elements_are_applied_after_judging_whole_resources(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], tokens: Tokens
) -> None:
    """``_elements=subject,valueQuantity`` sent upstream strips ``code``: the denied
    hemoglobin result would be judged without the code its consent denies, and released."""
    await _deny_code_for_dr(gateway, tokens)
    full = obs("o-p3", "Patient/p3") | {"valueQuantity": {"value": 6.1, "unit": "g/dL"}}
    cut = {k: full[k] for k in ("resourceType", "id", "status", "subject", "valueQuantity")}

    def everything(request: httpx.Request) -> httpx.Response:
        sent_elements = "_elements" in request.url.params
        return httpx.Response(
            200, json=searchset(patient("p3"), cut if sent_elements else full), headers=JSON
        )

    route = router.get("/Patient/p3/$everything").mock(side_effect=everything)
    answer = await gateway.get(
        "/fhir/Patient/p3/$everything?_elements=subject,valueQuantity", headers=dr
    )
    assert answer.status_code == 200
    assert "6.1" not in answer.text
    assert ids(answer) == {"Patient/p3"}
    assert "_elements" not in route.calls.last.request.url.params


@pytest.mark.parametrize("query", ["_elements=subject", "_summary=true", "_summary=count"], ids=str)
async def test_document_subset_is_refused(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], query: str
) -> None:
    """A document cut upstream would be judged cut (and is no longer the document)."""
    answer = await gateway.get(f"/fhir/Composition/c1/$document?{query}", headers=dr)
    assert answer.status_code == 400
    assert not router.calls


@pytest.mark.parametrize("query", ["_summary=count", "_count=0", "_total=accurate"], ids=str)
async def test_everything_count_is_refused(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], query: str
) -> None:
    """The upstream's count of $everything counts what is withheld."""
    answer = await gateway.get(f"/fhir/Patient/$everything?{query}", headers=dr)
    assert answer.status_code in (400, 403)
    assert not router.calls


@pytest.mark.parametrize(
    "query",
    ["_has:Observation:patient:code=x", "_type=Consent", "_include=Consent:patient"],
    ids=str,
)
async def test_everything_parameters_pass_the_search_guards(
    gateway: httpx.AsyncClient, router: respx.Router, p2: dict[str, str], query: str
) -> None:
    """The patient's own $everything with a reverse chain (an oracle on other patients'
    records) or the gateway's own types: refused as the same search is, never forwarded."""
    router.route().respond(200, json=searchset(patient("p2")), headers=JSON)
    everything = await gateway.get(f"/fhir/Patient/p2/$everything?{query}", headers=p2)
    search = await gateway.get(f"/fhir/Observation?{query}", headers=p2)
    assert everything.status_code == search.status_code == 403
    assert not sent(router, "$everything")


# --- $stats: only under an unconditional grant --------------------------------------------


@pytest.mark.parametrize("has_results", [True, False], ids=["results", "none"])
async def test_stats_under_a_code_denying_consent_is_the_404_whatever_the_data(
    gateway: httpx.AsyncClient,
    router: respx.Router,
    dr: dict[str, str],
    tokens: Tokens,
    has_results: bool,
) -> None:
    """p3's consent denies the doctor LOINC 718-7; the doctor asks ``code=718-7`` without
    the system. The probe with that code matched no denial and the search found nothing to
    withhold when p3 has no result (200), while a result (its code has a system) is withheld
    (404): the answer told whether p3 has hemoglobin results. Now both are the 404."""
    await _deny_code_for_dr(gateway, tokens)
    results = searchset(obs("o-p3", "Patient/p3")) if has_results else searchset()
    router.get("/Observation").respond(200, json=results, headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answer = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p3&code=718-7&statistic=count", headers=dr
    )
    assert answer.status_code == 404
    assert not stats.calls


async def test_stats_under_a_label_denying_consent_is_the_404(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], tokens: Tokens
) -> None:
    """A deny on a security label: no query names labels, so no probe could ask about it."""
    provision = {"actor": [{"reference": {"reference": DR}}], "securityLabel": [PSY]}
    body = r5_consent("Patient/p3", "permit", provision=[provision])
    created = await gateway.post("/fhir/Consent", json=body, headers=tokens.patient("p3"))
    assert created.status_code == 201, created.text
    router.get("/Observation").respond(200, json=searchset(), headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answer = await gateway.get(
        "/fhir/Observation/$stats?subject=Patient/p3&code=718-7&statistic=count", headers=dr
    )
    assert answer.status_code == 404
    assert not stats.calls


async def test_stats_under_opt_in_are_the_same_404_for_denying_unknown_and_silent_patients(
    make_gateway: Callable[..., Any], router: respx.Router, dr: dict[str, str]
) -> None:
    """Opt-in: p1 denies, p2 has no consent, nobody does not exist; a plain search releases
    nothing of any of them, and $stats answers each with the same 404."""
    app, client = await make_gateway(consent_jurisdiction="opt-in")
    router.get("/Observation").respond(200, json=searchset(), headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answers = [
        await client.get(
            f"/fhir/Observation/$stats?subject=Patient/{pid}&code=718-7&statistic=count",
            headers=dr,
        )
        for pid in ("p1", "p2", "nobody")
    ]
    await client.aclose()
    await app.aclose()
    assert {a.status_code for a in answers} == {404}
    assert len({a.content for a in answers}) == 1
    assert not stats.calls


async def test_stats_of_a_denying_patient_and_of_nobody_are_the_same_404(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """Opt-out: a patient without consent or data (here: one that does not exist) was
    summarised as nothing (200), p1 whose consent refuses was the 404: the answer told that
    p1 exists. Nothing to summarise is now the same 404."""
    router.get("/Observation").respond(200, json=searchset(), headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    denied, nobody = [
        await gateway.get(
            f"/fhir/Observation/$stats?subject=Patient/{pid}&code=718-7&statistic=count",
            headers=dr,
        )
        for pid in ("p1", "nobody")
    ]
    assert denied.status_code == nobody.status_code == 404
    assert denied.content == nobody.content
    assert not stats.calls


async def test_stats_forward_a_query_rebuilt_from_the_checked_values(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str]
) -> None:
    """The client's query string is not forwarded: its patient is sent as checked."""
    router.get("/Observation").respond(200, json=searchset(obs("o-p2", "Patient/p2")), headers=JSON)
    stats = router.get("/Observation/$stats").respond(200, json=STATS, headers=JSON)
    answer = await gateway.get(
        "/fhir/Observation/$stats?patient=p2&code=718-7&coding=http://loinc.org|2345-7"
        "&statistic=average",
        headers=dr,
    )
    assert answer.status_code == 200
    assert stats.calls.last.request.url.params.multi_items() == [
        ("subject", "Patient/p2"),
        ("code", "718-7"),
        ("coding", "http://loinc.org|2345-7"),
        ("statistic", "average"),
    ]


# --- forwarded answers: expected types, no patient data, no free text ---------------------


@pytest.mark.parametrize(
    "document",
    [
        searchset({"resourceType": "Practitioner", "id": "x", "name": [{"family": SECRET}]}),
        {"resourceType": "Practitioner", "id": "x", "name": [{"family": SECRET}]},
        {
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "x",
                    "resource": {
                        "resourceType": "Device",
                        "id": "d1",
                        "patient": {"reference": "Patient/p1"},
                        "note": [{"text": SECRET}],
                    },
                }
            ],
        },
    ],
    ids=["bundle", "other-type", "device-of-a-patient"],
)
async def test_a_forwarded_answer_that_is_not_terminology_is_withheld(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], document: Any
) -> None:
    """A terminology call answered with a Bundle, a resource of another type, or a Device
    naming p1 (patient data by the judge's rule, though not in the compartment table)."""
    router.get("/CodeSystem/$lookup").respond(200, json=document, headers=JSON)
    answer = await gateway.get("/fhir/CodeSystem/$lookup?code=a&system=http://s", headers=dr)
    assert answer.status_code == 404
    assert SECRET not in answer.text


@pytest.mark.parametrize("status", [200, 400])
async def test_a_forwarded_outcome_keeps_no_free_text(
    gateway: httpx.AsyncClient, router: respx.Router, dr: dict[str, str], status: int
) -> None:
    """$validate of a new Observation: the upstream resolved its reference and wrote what it
    found in ``diagnostics``; only the structured part of the outcome is released."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "warning",
                "code": "informational",
                "diagnostics": f"Reference Patient/p1 resolved: {SECRET}",
                "details": {"text": SECRET},
            }
        ],
    }
    router.post("/Observation/$validate").respond(status, json=outcome, headers=JSON)
    answer = await gateway.post(
        "/fhir/Observation/$validate", json=obs("n", "Patient/p1"), headers={**dr, **JSON}
    )
    assert answer.status_code == status
    assert SECRET not in answer.text
    assert answer.json()["issue"] == [{"severity": "warning", "code": "informational"}]


# --- $export is the gateway's own ----------------------------------------------------------


async def test_export_inside_a_batch_never_reaches_the_upstream(
    make_gateway: Callable[..., Any],
    router: respx.Router,
    dr: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table that forwards ``Patient/$export`` (start-up now refuses such a row; here it is
    forced in) must still not pass a batch entry ``GET Patient/$export`` upstream: bulk export
    is the gateway's own, never a Bundle entry."""
    table = parse_operations({})
    table.rows[Row("Patient", Level.TYPE, "$export")] = Mode.FORWARD
    monkeypatch.setattr(Settings, "operation_table", property(lambda _: table))
    router.route().respond(200, json={"resourceType": "Parameters"}, headers=JSON)
    app, client = await make_gateway()
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": url}}
            for url in ("Patient/$export", "$export", "Group/g1/$export")
        ],
    }
    answer = await client.post("/fhir", json=batch, headers={**dr, **JSON})
    await client.aclose()
    await app.aclose()
    assert answer.status_code == 200
    statuses = [e["response"]["status"].split()[0] for e in answer.json()["entry"]]
    assert statuses == ["403", "403", "403"]
    assert not sent(router, "$export")
