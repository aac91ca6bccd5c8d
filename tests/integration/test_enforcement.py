"""Consent enforced in front of the real upstream, with carebundle-10 (ten patients) loaded.

One patient (``denied``) has a consent, created through the gateway's consent API with the
patient's own token, that denies the practitioner ``Practitioner/dr`` (a user token with
``user/*.cruds``); the gateway runs under the opt-out jurisdiction, so everything else is
permitted. dr must get nothing of that patient through any route (read, vread, searches by
patient, ``POST _search``, ``_include``, ``_revinclude``, paging through every Observation,
history, ``$everything``, batch) and everything of the other nine, each answer compared with
what the upstream itself holds (:class:`~tests.integration.enforcing.Universe`). Then: another
practitioner is not affected; a consent made and revoked by a consent administrator takes
effect on the very next request; a patient-context token sees its own record only; fhirpy and
fhirclient work through the gateway with a bearer token. Last, every request this module sent
is on the ledger (each proxied one found by its request id in the evidence) and
``consentry ledger verify`` passes on the gateway's store.

Each gateway bug found is pinned by a strict xfail naming the file and the symptom.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException
from fhirpy import AsyncFHIRClient

from middleware.audit.evidence import EvidenceReader
from middleware.ledger.keyfile import read_ledger_key
from middleware.ledger.signing import derive_box_key
from middleware.storage.ledger_open import open_log_store
from tests.integration.enforcing import (
    FHIR_JSON,
    GENERIC_NOT_FOUND,
    Caller,
    Calls,
    Universe,
    deny_actor,
    direct_found,
    refs,
)
from tests.integration.sides import Sides, comparable
from tests.support import GatewayServer, UpstreamServer

pytestmark = pytest.mark.integration

DR: Final = "Practitioner/dr"
USER_SCOPES: Final = "user/*.cruds"
PATIENT_SCOPES: Final = "launch/patient patient/*.rs"
#: The types every carebundle patient has several of.
SEARCHED: Final = (
    ("Observation", "subject"),
    ("Encounter", "patient"),
    ("DiagnosticReport", "subject"),
)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def ledger_before(gateway: GatewayServer) -> int:
    """The ledger's size before this module sent anything."""
    return gateway.ledger_size()


@pytest.fixture(scope="module")
def calls(gateway: GatewayServer) -> Calls:
    return Calls(gateway.base_url)


@pytest.fixture(scope="module")
def http(calls: Calls) -> Iterator[httpx.Client]:
    """The module's client of the gateway: every request numbered and tagged (``calls``)."""
    with httpx.Client(
        headers={"accept": "application/fhir+json"},
        timeout=60.0,
        event_hooks={"request": [calls.hook]},
    ) as client:
        yield client


@pytest.fixture(scope="module")
def patients(carebundle: dict[str, list[str]]) -> list[str]:
    assert len(carebundle) == 10
    return list(carebundle)


@pytest.fixture(scope="module")
def denied(gateway: GatewayServer, http: httpx.Client, patients: list[str]) -> str:
    """The second carebundle patient, whose own consent denies dr (made with its own token)."""
    patient = patients[1]
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient)
    created = http.post(
        f"{gateway.base_url}/Consent", json=deny_actor(patient, DR), headers={**FHIR_JSON, **own}
    )
    assert created.status_code == 201, created.text
    return patient


@pytest.fixture(scope="module")
def others(patients: list[str], denied: str) -> list[str]:
    """The nine patients without a consent."""
    return [patient for patient in patients if patient != denied]


@pytest.fixture(scope="module")
def dr(gateway: GatewayServer, http: httpx.Client, denied: str) -> Caller:
    return Caller(http, gateway.base_url, gateway.bearer("dr", USER_SCOPES, fhir_user=DR))


@pytest.fixture(scope="module")
def universe(sides: Sides, carebundle: dict[str, list[str]]) -> Universe:
    return Universe.read(sides.direct, sides.upstream_base)


def _direct(sides: Sides, path: str) -> httpx.Response:
    return sides.direct.get(sides.url(sides.upstream_base, path))


# --- reads ------------------------------------------------------------------------------


def test_dr_reads_nothing_of_the_denied_patient(
    dr: Caller, sides: Sides, universe: Universe, denied: str, carebundle: dict[str, list[str]]
) -> None:
    """Every record of the denied patient found directly upstream (and every one its
    transaction created) reads as the generic 404, byte for byte the answer for a record that
    does not exist; so does a vread of its Patient."""
    missing = dr.get("Patient/no-such-patient")
    assert (missing.status_code, missing.json()) == (404, GENERIC_NOT_FOUND)
    created = {ref for ref in carebundle[denied] if not ref.startswith("Practitioner/")}
    hidden = universe.of(denied) | created
    assert {ref.split("/")[0] for ref in hidden} >= {"Patient", *(t for t, _ in SEARCHED)}
    for ref in sorted(hidden):
        answer = dr.get(ref)
        assert answer.status_code == 404, ref
        assert answer.content == missing.content, ref
    version = _direct(sides, f"Patient/{denied}").json()["meta"]["versionId"]
    assert dr.get(f"Patient/{denied}/_history/{version}").content == missing.content


def test_dr_reads_every_record_of_the_other_patients(
    dr: Caller, sides: Sides, others: list[str], carebundle: dict[str, list[str]]
) -> None:
    """Every record the other nine patients' transactions created (and the practitioners in
    the denied patient's, which are not patient data) reads as the upstream's own bytes."""
    readable = [ref for patient in others for ref in carebundle[patient]]
    readable += [ref for ref in carebundle[next(iter(carebundle))] if ref.startswith("Pract")]
    assert len(readable) > 400
    for ref in readable:
        via, direct = dr.get(ref), _direct(sides, ref)
        assert via.status_code == 200, ref
        assert via.content == direct.content, ref


def test_a_practitioner_the_consent_does_not_name_reads_the_patient(
    gateway: GatewayServer, http: httpx.Client, sides: Sides, denied: str
) -> None:
    """The consent denies dr, not everyone: another practitioner reads the record."""
    nurse = Caller(
        http,
        gateway.base_url,
        gateway.bearer("nurse", USER_SCOPES, fhir_user="Practitioner/nurse"),
    )
    via = nurse.get(f"Patient/{denied}")
    assert via.status_code == 200, via.text
    assert via.content == _direct(sides, f"Patient/{denied}").content


# --- searches ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rtype", "param"), SEARCHED, ids=[t for t, _ in SEARCHED])
def test_searches_by_patient_find_only_permitted_records(
    dr: Caller,
    universe: Universe,
    denied: str,
    others: list[str],
    rtype: str,
    param: str,
) -> None:
    """A search naming the denied patient finds nothing (and says nothing: a total of 0 at
    most, no error); the same search for each other patient finds exactly what the upstream
    holds."""
    assert universe.of(denied, rtype)
    assert dr.found(f"{rtype}?{param}=Patient/{denied}&_count=10") == []
    for patient in others:
        found = refs(dr.found(f"{rtype}?{param}=Patient/{patient}&_count=10"))
        assert found == universe.of(patient, rtype), patient


def test_search_by_post_finds_nothing_of_the_denied_patient(
    dr: Caller, universe: Universe, denied: str, others: list[str]
) -> None:
    hidden = dr.post("Observation/_search", data={"subject": f"Patient/{denied}"})
    assert hidden.status_code == 200, hidden.text
    assert "entry" not in hidden.json()
    assert hidden.json().get("total", 0) == 0  # never the upstream's; the caller's own when exact
    shown = dr.post("Observation/_search", data={"subject": f"Patient/{others[0]}"})
    assert shown.status_code == 200, shown.text
    assert shown.json()["entry"]


def test_include_releases_nothing_of_the_denied_patient(
    dr: Caller, sides: Sides, universe: Universe, denied: str
) -> None:
    """``Encounter?_include=Encounter:patient`` over every page: the upstream's matches and
    includes, minus the denied patient's."""
    query = "Encounter?_include=Encounter:patient&_count=10"
    direct = direct_found(sides.direct, sides.upstream_base, query)
    via = dr.found(query)
    hidden = universe.of(denied)
    assert refs(direct) & hidden  # the upstream does answer them
    for mode in ("match", "include"):
        assert refs(via, mode) == refs(direct, mode) - hidden, mode
    assert f"Patient/{denied}" in refs(direct, "include")


def test_revinclude_releases_nothing_of_the_denied_patient(
    dr: Caller, sides: Sides, universe: Universe, denied: str, others: list[str]
) -> None:
    """``Patient?_id=<denied>,<a>,<b>&_revinclude=...``: the denied patient neither matches nor
    drags in its Encounters and Observations; the other two bring all of theirs."""
    ids = ",".join([denied, *others[:2]])
    query = f"Patient?_id={ids}&_revinclude=Encounter:patient&_revinclude=Observation:subject"
    direct = direct_found(sides.direct, sides.upstream_base, query)
    via = dr.found(query)
    hidden = universe.of(denied)
    assert refs(direct) & hidden
    assert refs(via, "match") == {f"Patient/{patient}" for patient in others[:2]}
    assert refs(via, "include") == refs(direct, "include") - hidden
    expected = set().union(
        *(universe.of(p, t) for p in others[:2] for t in ("Encounter", "Observation"))
    )
    assert refs(via, "include") == expected


def test_paging_through_every_observation_skips_only_the_denied_patient(
    dr: Caller, sides: Sides, universe: Universe, denied: str, others: list[str]
) -> None:
    """Following the gateway's ``next`` cursors to the end: each Observation once, the
    upstream's set minus the denied patient's (and minus the few other tests made without a
    patient: a record whose patient cannot be determined is released to nobody by default)."""
    seen = [ref for _, ref in dr.found("Observation?_count=50")]
    assert len(seen) == len(set(seen))
    direct = refs(direct_found(sides.direct, sides.upstream_base, "Observation?_count=50"))
    hidden = universe.of(denied, "Observation")
    assert hidden
    assert hidden <= direct
    assert set(seen) == direct - hidden - universe.without_patient("Observation")
    for patient in others:
        assert universe.of(patient, "Observation") <= set(seen), patient


# --- history, $everything, batch --------------------------------------------------------


def test_history_of_a_denied_record_releases_no_version(
    dr: Caller, sides: Sides, universe: Universe, denied: str, others: list[str]
) -> None:
    """The instance history of the denied patient's records carries no version; another
    patient's history equals the upstream's (paging links and total aside, see ``sides``)."""
    observation = sorted(universe.of(denied, "Observation"))[0]
    for ref in (f"Patient/{denied}", observation):
        answer = dr.get(f"{ref}/_history")
        assert answer.status_code in (200, 404), ref
        assert "entry" not in answer.json(), ref
    shown = dr.get(f"Patient/{others[0]}/_history")
    assert shown.status_code == 200
    direct = _direct(sides, f"Patient/{others[0]}/_history").json()
    assert comparable(sides.normalise(shown.json())) == comparable(direct)


def test_history_of_a_denied_record_is_the_generic_404(
    dr: Caller, universe: Universe, denied: str
) -> None:
    """flow.py: "a denied record, a missing one and a deleted one all get the same generic
    404" for read, vread and history of an instance."""
    missing = dr.get("Patient/no-such-patient/_history")
    assert (missing.status_code, missing.json()) == (404, GENERIC_NOT_FOUND)
    observation = sorted(universe.of(denied, "Observation"))[0]
    for ref in (f"Patient/{denied}", observation):
        answer = dr.get(f"{ref}/_history")
        assert (answer.status_code, answer.content) == (404, missing.content), ref


def test_everything_of_the_denied_patient_answers_as_for_any_patient(
    dr: Caller, sides: Sides, denied: str, others: list[str]
) -> None:
    """Medplum's in-memory server has no ``$everything`` (peers README: it answers 404), so
    through the gateway the operation answers the generic 404 for every patient: the denied
    patient's answer is the same as a permitted one's, and carries nothing of it. (Filtering
    a real ``$everything`` Bundle is covered by the app tests against a mock upstream.)"""
    assert _direct(sides, f"Patient/{others[0]}/$everything").status_code == 404
    hidden = dr.get(f"Patient/{denied}/$everything")
    shown = dr.get(f"Patient/{others[0]}/$everything")
    assert (hidden.status_code, hidden.json()) == (404, GENERIC_NOT_FOUND)
    assert (shown.status_code, shown.content) == (hidden.status_code, hidden.content)


def test_batch_entries_release_nothing_of_the_denied_patient(
    dr: Caller, universe: Universe, denied: str, others: list[str]
) -> None:
    """Each batch entry is enforced on its own: a read of the denied patient is the generic
    404 entry, a search for its Observations finds none, while the same entries for another
    patient succeed. (A read entry's resource is missing for every patient: a gateway bug
    pinned in ``test_writes``.)"""
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{denied}"}},
            {"request": {"method": "GET", "url": f"Patient/{others[0]}"}},
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{denied}"}},
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{others[0]}"}},
        ],
    }
    answer = dr.post("", json=batch)
    assert answer.status_code == 200, answer.text
    hidden_read, shown_read, hidden_search, shown_search = answer.json()["entry"]
    assert hidden_read == {"response": {"status": "404", "outcome": GENERIC_NOT_FOUND}}
    assert shown_read["response"]["status"] == "200"
    assert "entry" not in hidden_search["resource"]
    shown = {f"Observation/{e['resource']['id']}" for e in shown_search["resource"]["entry"]}
    assert shown
    assert shown <= universe.of(others[0], "Observation")


# --- consent changes ------------------------------------------------------------------


def test_a_consent_and_its_revocation_take_effect_on_the_very_next_request(
    gateway: GatewayServer,
    http: httpx.Client,
    dr: Caller,
    sides: Sides,
    universe: Universe,
    patients: list[str],
) -> None:
    """A consent administrator (role ``consent-admin``, ``user/Consent.cruds``) records a
    consent denying dr for a fourth patient: dr's next request is refused; the administrator
    revokes it (``POST Consent/<id>/$revoke``): dr's next request is answered again."""
    patient = patients[3]
    admin = gateway.bearer(
        "officer", "user/Consent.cruds", fhir_user="Practitioner/officer", roles=["consent-admin"]
    )
    direct = _direct(sides, f"Patient/{patient}")
    assert dr.get(f"Patient/{patient}").content == direct.content
    created = http.post(
        f"{gateway.base_url}/Consent", json=deny_actor(patient, DR), headers={**FHIR_JSON, **admin}
    )
    assert created.status_code == 201, created.text
    assert dr.get(f"Patient/{patient}").status_code == 404
    assert dr.found(f"Observation?subject=Patient/{patient}") == []
    revoked = http.post(f"{gateway.base_url}/Consent/{created.json()['id']}/$revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "inactive"
    after = dr.get(f"Patient/{patient}")
    assert (after.status_code, after.content) == (200, direct.content)
    found = refs(dr.found(f"Observation?subject=Patient/{patient}&_count=50"))
    assert found == universe.of(patient, "Observation")


# --- patient context --------------------------------------------------------------------


def test_a_patient_context_token_sees_only_its_own_data(
    gateway: GatewayServer,
    http: httpx.Client,
    sides: Sides,
    universe: Universe,
    patients: list[str],
    denied: str,
) -> None:
    """A ``launch/patient patient/*.rs`` token for patient A: its own record in full, every
    search pinned to it, nobody else's record (the generic 404) and no search naming another
    patient (403)."""
    me, someone = patients[2], patients[0]
    pa = Caller(http, gateway.base_url, gateway.bearer(f"user-{me}", PATIENT_SCOPES, patient=me))
    assert pa.get(f"Patient/{me}").content == _direct(sides, f"Patient/{me}").content
    for other in (someone, denied):
        assert pa.get(f"Patient/{other}").json() == GENERIC_NOT_FOUND
    assert refs(pa.found("Patient")) == {f"Patient/{me}"}
    for rtype, _ in SEARCHED:
        assert refs(pa.found(f"{rtype}?_count=10")) == universe.of(me, rtype), rtype
    foreign = sorted(universe.of(someone, "Observation"))[0]
    assert pa.get(foreign).json() == GENERIC_NOT_FOUND
    assert pa.get(f"Observation?subject=Patient/{someone}").status_code == 403


def test_the_denied_patient_still_sees_its_own_record(
    gateway: GatewayServer, http: httpx.Client, universe: Universe, denied: str
) -> None:
    """A consent governs others' access: the patient's own (right of access) is untouched."""
    own = Caller(
        http, gateway.base_url, gateway.bearer(f"user-{denied}", PATIENT_SCOPES, patient=denied)
    )
    assert own.get(f"Patient/{denied}").status_code == 200
    assert refs(own.found("Observation?_count=50")) == universe.of(denied, "Observation")


# --- client libraries -------------------------------------------------------------------


class _CountingClient(AsyncFHIRClient):
    """fhirpy's async client, each request counted in ``calls``."""

    def __init__(self, calls: Calls, url: str, authorization: str) -> None:
        super().__init__(url, authorization=authorization)
        self.calls = calls

    async def _do_request(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.count += 1
        return await super()._do_request(*args, **kwargs)


async def test_fhirpy_pages_through_the_gateway_with_a_bearer_token(
    gateway: GatewayServer,
    dr: Caller,
    calls: Calls,
    universe: Universe,
    denied: str,
    others: list[str],
) -> None:
    """fhirpy's ``fetch_all`` follows the gateway's cursors: every Observation of a patient,
    and of everyone dr may see (records without a patient aside, as above)."""
    client = _CountingClient(calls, gateway.base_url, dr.authorization)
    before = calls.count
    mine = client.resources("Observation").search(subject=f"Patient/{others[0]}").limit(10)
    found = {f"Observation/{resource['id']}" for resource in await mine.fetch_all()}
    assert found == universe.of(others[0], "Observation")
    assert calls.count - before > 1  # it did page
    everyone = await client.resources("Observation").limit(100).fetch_all()
    ids = [f"Observation/{resource['id']}" for resource in everyone]
    assert len(ids) == len(set(ids))
    observations = universe.of_type("Observation") - universe.without_patient("Observation")
    assert set(ids) == observations - universe.of(denied, "Observation")


def test_fhirclient_reads_through_the_gateway_with_a_bearer_token(
    gateway: GatewayServer, dr: Caller, calls: Calls, sides: Sides, denied: str, others: list[str]
) -> None:
    smart = fhirclient_client.FHIRClient(
        settings={"app_id": "consentry-it", "api_base": gateway.base_url}
    )
    smart.server.session.headers["Authorization"] = dr.authorization
    smart.server.session.hooks["response"].append(calls.counted)
    direct = fhirclient_client.FHIRClient(
        settings={"app_id": "consentry-it", "api_base": sides.upstream_base}
    )
    via = Patient.read(others[0], smart.server)
    assert via.as_json() == Patient.read(others[0], direct.server).as_json()
    with pytest.raises(FHIRNotFoundException):
        Patient.read(denied, smart.server)


# --- no token ---------------------------------------------------------------------------


def test_a_request_without_a_token_is_refused_and_not_recorded(
    gateway: GatewayServer, others: list[str]
) -> None:
    """401 with a Bearer challenge for every FHIR request but the public CapabilityStatement;
    the refusal touches no record and is not on the ledger (an unauthenticated caller costs
    nothing durable), so it is sent outside the module's recorded client."""
    before = gateway.ledger_size()
    answer = httpx.get(f"{gateway.base_url}/Patient/{others[0]}", timeout=30.0)
    assert gateway.ledger_size() == before
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["resourceType"] == "OperationOutcome"
    # Not through ``http``: the public CapabilityStatement is not an audited exchange.
    assert httpx.get(f"{gateway.base_url}/metadata", timeout=30.0).status_code == 200


# --- new patients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_gateway(upstream: UpstreamServer) -> Iterator[GatewayServer]:
    """A gateway of its own with default settings but the opt-out jurisdiction (records whose
    patient cannot be determined are released to nobody)."""
    with GatewayServer(upstream.base_url, consent_jurisdiction="opt-out") as server:
        yield server


@pytest.mark.parametrize("how", ["create", "transaction"])
def test_a_backend_service_registers_a_new_patient(strict_gateway: GatewayServer, how: str) -> None:
    """A backend service (``system/*.cruds``, opt-out, no consent anywhere) may register a new
    patient, alone or in a transaction with its first Observation."""
    urn = f"urn:uuid:{uuid.uuid4()}"
    patient = {"resourceType": "Patient", "name": [{"family": "Registered"}]}
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "first"},
        "subject": {"reference": urn},
    }
    headers = {**FHIR_JSON, **strict_gateway.system_bearer()}
    if how == "create":
        answer = httpx.post(
            f"{strict_gateway.base_url}/Patient", json=patient, headers=headers, timeout=30.0
        )
        assert answer.status_code == 201, answer.text
        return
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn, "resource": patient, "request": {"method": "POST", "url": "Patient"}},
            {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    answer = httpx.post(strict_gateway.base_url, json=transaction, headers=headers, timeout=30.0)
    assert answer.status_code == 200, answer.text


# --- the ledger ---------------------------------------------------------------------------


async def audit_request_ids(gateway: GatewayServer) -> set[str]:
    """The request id of every audit entry, read from its sealed facts with the ledger key."""
    key = read_ledger_key(gateway.ledger_key_file).data_secret
    store = await open_log_store(gateway.store_url)
    try:
        reader = EvidenceReader(store, derive_box_key(key, "evidence"))
        found = [await reader.facts(index) for index in range(await store.size())]
    finally:
        await store.close()
    return {facts.request_id for facts in found if facts is not None}


async def test_every_request_was_recorded_and_the_ledger_verifies(
    gateway: GatewayServer, calls: Calls, ledger_before: int
) -> None:
    """The ledger grew by at least one entry per request this module sent; every proxied
    request's id is in the evidence (the sealed facts' request id, the BALP transaction entity
    when rendered), refusals included; and
    ``consentry ledger verify`` (run as a subprocess on the gateway's SQLite store, trusting
    the key in its working directory) reports it sound."""
    size = gateway.ledger_size()
    assert calls.count > 500
    assert size - ledger_before >= calls.count
    recorded = await audit_request_ids(gateway)
    unrecorded = [rid for rid in calls.request_ids if rid not in recorded]
    assert unrecorded == []
    report = gateway.verify_ledger()
    assert report["ok"] is True, report["findings"]
    assert report["size"] >= size
    assert report["checkpoints_verified"] > 0
