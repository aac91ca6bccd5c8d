"""The patient consent API served by the gateway itself: FHIR interactions, who may change
what, the ledger record of every attempt, and that nothing of it reaches the upstream."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.consent.records import LEDGER_EXTENSION, canonical_consent
from middleware.fhir import jsoncodec
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import FakeClock, raw_asgi_request
from tests.app.consenting import (
    ACT_REASON,
    FHIR_JSON,
    Tokens,
    auth_settings,
    ledger_entries,
    observation,
    r5_consent,
    treat_only,
)

CONSENT_KINDS = (EntryKind.CONSENT, EntryKind.CONSENT_REVOKE)


@pytest.fixture
def upstream_route(router: respx.Router) -> respx.Route:
    """Every upstream request lands here: consent API tests assert it is never called."""
    return router.route().respond(200, json={"resourceType": "Bundle"})


@pytest.fixture
def gateway(
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    consents: MemoryConsentStore,
    key_file: Path,
    tokens: Tokens,
) -> Gateway:
    return create_app(
        make_settings(auth=auth_settings(key_file)),
        upstream=httpx.MockTransport(router.async_handler),
        store=store,
        signer=signer,
        clock=clock,
        consents=consents,
    )


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await gateway.aclose()


async def create(api: httpx.AsyncClient, headers: dict[str, str], body: Any) -> httpx.Response:
    return await api.post("/fhir/Consent", json=body, headers=headers)


# --- a patient's consent through its life ---------------------------------------------------


async def test_a_patient_creates_reads_changes_and_revokes_their_consent(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, upstream_route: respx.Route
) -> None:
    me = tokens.patient("p1")
    created = await create(api, me, r5_consent())
    assert created.status_code == 201, created.text
    body = created.json()
    cid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"] == f"http://gateway.test/fhir/Consent/{cid}/_history/1"
    first = int(created.headers["x-consentry-ledger-index"])
    receipt = f"http://gateway.test/ledger/receipt/{first}"
    assert created.headers["x-consentry-ledger-receipt"] == receipt
    assert body["meta"]["extension"] == [{"url": LEDGER_EXTENSION, "valueUrl": receipt}]

    read = await api.get(f"/fhir/Consent/{cid}", headers=me)
    assert read.status_code == 200
    assert read.json() == body

    changed = await api.put(f"/fhir/Consent/{cid}", json=treat_only(id=cid), headers=me)
    assert changed.status_code == 200, changed.text
    assert changed.json()["meta"]["versionId"] == "2"

    revoked = await api.post(f"/fhir/Consent/{cid}/$revoke", headers=me)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "inactive"
    assert revoked.json()["meta"]["versionId"] == "3"

    history = (await api.get(f"/fhir/Consent/{cid}/_history", headers=me)).json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert (await api.get(f"/fhir/Consent/{cid}/_history/2", headers=me)).json()["decision"] == (
        "deny"
    )

    found = (await api.get("/fhir/Consent", params={"patient": "Patient/p1"}, headers=me)).json()
    assert found["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["entry"]] == [cid]
    assert found["entry"][0]["resource"]["status"] == "inactive"

    entries = await ledger_entries(store)
    assert all(e.verified for e in entries)
    changes = [e for e in entries if e.kind in CONSENT_KINDS]
    assert [e.kind for e in changes] == [
        EntryKind.CONSENT,
        EntryKind.CONSENT,
        EntryKind.CONSENT_REVOKE,
    ]
    # The evidence is the canonical Consent, byte for byte, chained per patient.
    assert changes[0].evidence == canonical_consent(body)
    assert changes[2].leaf.consent == changes[1].index
    assert changes[1].leaf.previous is not None
    assert len({e.leaf.pseudonym for e in changes}) == 1
    assert not upstream_route.called


async def test_a_status_change_to_inactive_is_recorded_as_a_revocation(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    me = tokens.patient("p1")
    cid = (await create(api, me, r5_consent())).json()["id"]
    answer = await api.put(
        f"/fhir/Consent/{cid}", json=r5_consent(id=cid, status="inactive"), headers=me
    )
    assert answer.status_code == 200
    index = int(answer.headers["x-consentry-ledger-index"])
    entry = next(e for e in await ledger_entries(store) if e.index == index)
    assert entry.kind is EntryKind.CONSENT_REVOKE
    again = await api.post(f"/fhir/Consent/{cid}/$revoke", headers=me)
    assert again.status_code == 409


async def test_update_as_create_and_if_match(api: httpx.AsyncClient, tokens: Tokens) -> None:
    me = tokens.patient("p1")
    made = await api.put("/fhir/Consent/mine-1", json=r5_consent(id="mine-1"), headers=me)
    assert made.status_code == 201
    stale = {**me, "if-match": 'W/"7"'}
    assert (
        await api.put("/fhir/Consent/mine-1", json=r5_consent(id="mine-1"), headers=stale)
    ).status_code == 412
    fresh = {**me, "if-match": 'W/"1"'}
    assert (
        await api.put("/fhir/Consent/mine-1", json=r5_consent(id="mine-1"), headers=fresh)
    ).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (r5_consent(id="other"), 400),  # the body's id is not the URL's
        (r5_consent(), 400),  # no id at all
        (r5_consent("Patient/p9", id="c1"), 422),  # a consent's patient never changes
    ],
    ids=["id-mismatch", "id-missing", "patient-change"],
)
async def test_updates_that_are_refused(
    api: httpx.AsyncClient, tokens: Tokens, body: dict[str, Any], status: int
) -> None:
    admin = tokens.admin()
    assert (
        await api.put("/fhir/Consent/c1", json=r5_consent(id="c1"), headers=admin)
    ).status_code == 201
    assert (await api.put("/fhir/Consent/c1", json=body, headers=admin)).status_code == status


async def test_an_invalid_consent_is_422_with_every_issue_and_recorded(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    bad = {"resourceType": "Consent", "status": "maybe", "decision": "perhaps"}
    answer = await create(api, tokens.patient("p1"), bad)
    assert answer.status_code == 422
    issues = answer.json()["issue"]
    assert len(issues) >= 3
    text = " ".join(i["diagnostics"] for i in issues)
    assert "Consent.status" in text
    assert "Consent.decision" in text
    assert "Consent.subject" in text
    (attempt,) = await ledger_entries(store)
    assert attempt.kind is EntryKind.ADMIN
    assert not attempt.permitted
    assert attempt.json()["outcome"] == 422
    assert attempt.json()["reason"] == f"{len(issues)} problems"
    assert int(answer.headers["x-consentry-audit-index"]) == attempt.index


# --- who may change what --------------------------------------------------------------------


async def test_without_a_token_it_is_401_and_nothing_is_recorded(
    api: httpx.AsyncClient, store: MemoryLogStore
) -> None:
    answer = await api.post("/fhir/Consent", json=r5_consent(), headers=FHIR_JSON)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    garbage = await api.get("/fhir/Consent/x", headers={"authorization": "Bearer abc.def.ghi"})
    assert garbage.status_code == 401
    assert await store.size() == 0


@pytest.mark.parametrize(
    ("caller", "status"),
    [
        ("other-patient", 403),
        ("practitioner-without-role", 403),
        ("admin-without-scope", 403),
        ("patient-without-create-scope", 403),
    ],
    ids=str,
)
async def test_refused_creates_are_403_and_recorded(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, caller: str, status: int
) -> None:
    headers = {
        "other-patient": tokens.patient("p2"),
        "practitioner-without-role": tokens.practitioner(),
        "admin-without-scope": tokens.admin("user/Patient.rs"),
        "patient-without-create-scope": tokens.patient("p1", "patient/Consent.rs"),
    }[caller]
    answer = await create(api, headers, r5_consent("Patient/p1"))
    assert answer.status_code == status
    assert answer.json()["issue"][0]["code"] == "forbidden"
    (attempt,) = await ledger_entries(store)
    assert attempt.verified
    assert attempt.kind is EntryKind.ADMIN
    assert not attempt.permitted
    assert attempt.json()["outcome"] == 403
    assert attempt.json()["operation"] == "create"


async def test_another_patients_consent_cannot_be_changed_and_reads_as_absent(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    cid = (await create(api, tokens.patient("p1"), r5_consent())).json()["id"]
    them = tokens.patient("p2")
    put = await api.put(f"/fhir/Consent/{cid}", json=r5_consent("Patient/p2", id=cid), headers=them)
    assert put.status_code == 403
    assert (await api.post(f"/fhir/Consent/{cid}/$revoke", headers=them)).status_code == 403
    for path in (f"/fhir/Consent/{cid}", f"/fhir/Consent/{cid}/_history"):
        assert (await api.get(path, headers=them)).status_code == 404
    search = await api.get("/fhir/Consent", params={"patient": "p1"}, headers=them)
    assert search.status_code == 403


async def test_a_consent_admin_acts_for_a_patient_and_is_recorded_as_performer(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    answer = await create(api, tokens.admin(), r5_consent("Patient/p7"))
    assert answer.status_code == 201
    cid = answer.json()["id"]
    entries = await ledger_entries(store)
    consent, attempt = entries
    assert consent.kind is EntryKind.CONSENT
    assert attempt.kind is EntryKind.ADMIN
    assert attempt.permitted
    assert attempt.leaf.consent == consent.index
    assert attempt.leaf.pseudonym == consent.leaf.pseudonym
    record = attempt.json()
    assert record["principal"]["fhirUser"] == "Practitioner/officer"
    assert record["principal"]["roles"] == ["consent-admin"]
    assert record["actingAs"] == "consent-admin"
    assert record["consent"] == cid
    assert record["consentEntry"] == consent.index
    assert b"Patient/p7" not in attempt.evidence  # the pseudonym links it, no patient named
    # The patient sees it as theirs.
    assert (await api.get(f"/fhir/Consent/{cid}", headers=tokens.patient("p7"))).status_code == 200


async def test_every_attempt_is_on_the_ledger(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    me, them = tokens.patient("p1"), tokens.patient("p2")
    cid = (await create(api, me, r5_consent())).json()["id"]
    await api.get(f"/fhir/Consent/{cid}", headers=me)
    await api.get(f"/fhir/Consent/{cid}", headers=them)
    await create(api, them, r5_consent())
    await api.get("/fhir/Consent", headers=me)
    entries = await ledger_entries(store)
    assert all(e.verified for e in entries)
    attempts = [e.json() for e in entries if e.kind is EntryKind.ADMIN]
    assert [(a["operation"], a["outcome"]) for a in attempts] == [
        ("create", 201),
        ("read", 200),
        ("read", 404),
        ("create", 403),
        ("search", 200),
    ]


# --- detached signatures --------------------------------------------------------------------


def signed(key: SigningKey, body: dict[str, Any]) -> dict[str, str]:
    signature = key.sign(canonical_consent(body))
    return {
        "x-consent-signature": base64.b64encode(signature).decode(),
        "x-consent-signer-key": base64.b64encode(key.public_key).decode(),
    }


async def test_a_patient_signature_over_the_canonical_bytes_is_verified_and_recorded(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    patient_key = SigningKey.generate("patient")
    body = r5_consent(id="signed-1")
    headers = {**tokens.patient("p1"), **signed(patient_key, body)}
    answer = await api.put("/fhir/Consent/signed-1", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    consent, attempt = await ledger_entries(store)
    assert consent.evidence == canonical_consent(body)
    recorded = attempt.json()["signature"]
    assert recorded["alg"] == "Ed25519"
    assert base64.b64decode(recorded["publicKey"]) == patient_key.public_key
    assert patient_key.verifier().verify(consent.evidence, base64.b64decode(recorded["signature"]))


@pytest.mark.parametrize(
    ("tamper", "status"),
    [
        (lambda h: {**h, "x-consent-signature": base64.b64encode(bytes(64)).decode()}, 422),
        (lambda h: {k: v for k, v in h.items() if k != "x-consent-signer-key"}, 400),
        (lambda h: {**h, "x-consent-signer-key": "not base64!"}, 400),
    ],
    ids=["wrong-signature", "key-missing", "key-not-base64"],
)
async def test_bad_signatures_are_refused(
    api: httpx.AsyncClient,
    tokens: Tokens,
    tamper: Callable[[dict[str, str]], dict[str, str]],
    status: int,
) -> None:
    body = r5_consent(id="signed-2")
    headers = tamper({**tokens.patient("p1"), **signed(SigningKey.generate("p"), body)})
    answer = await api.put("/fhir/Consent/signed-2", json=body, headers=headers)
    assert answer.status_code == status


async def test_a_create_is_signed_over_the_submitted_consent_without_id(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    """The id a create gets is the gateway's: the signature covers the Consent as submitted
    without it (a client id is dropped, so it may be there or not), which is the recorded
    version minus its id; bytes the client did not sign are refused."""
    key = SigningKey.generate("p")
    body = r5_consent()
    answer = await create(api, {**tokens.patient("p1"), **signed(key, body)}, body)
    assert answer.status_code == 201, answer.text
    consent, attempt = (await ledger_entries(store))[-2:]
    recorded = jsoncodec.decode(consent.evidence)
    del recorded["id"]
    assert canonical_consent(recorded) == canonical_consent(body)
    assert attempt.json()["signature"]["over"] == "submitted"
    with_id = {**body, "id": "client-chosen"}
    answer = await create(api, {**tokens.patient("p1"), **signed(key, body)}, with_id)
    assert answer.status_code == 201, answer.text
    tampered = {**body, "decision": "deny"}
    answer = await create(api, {**tokens.patient("p1"), **signed(key, body)}, tampered)
    assert answer.status_code == 422


# --- $explain -------------------------------------------------------------------------------


async def test_explain_shows_the_decision_and_its_trace(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    me = tokens.patient("p1")
    cid = (await create(api, me, treat_only())).json()["id"]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "actor", "valueReference": {"reference": "Practitioner/dr"}},
            {"name": "purpose", "valueCoding": {"system": ACT_REASON, "code": "TREAT"}},
            {"name": "resource", "resource": observation()},
        ],
    }
    answer = await api.post("/fhir/Consent/$explain", json=parameters, headers=me)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["resourceType"] == "Parameters"
    assert out["parameter"][0] == {"name": "effect", "valueCode": "permit"}
    traces = [p for p in out["parameter"] if p["name"] == "trace"]
    assert {"name": "consent", "valueString": cid} in traces[0]["part"]

    plain = {"principal": {"reference": "Practitioner/dr"}, "resource": observation()}
    answer = await api.post("/fhir/Consent/$explain", json=plain, headers=tokens.admin())
    assert answer.status_code == 200
    assert answer.json()["effect"] == "deny"  # no purpose of use: the provision does not match
    assert answer.json()["patients"] == ["Patient/p1"]


@pytest.mark.parametrize(
    "caller",
    ["other-patient", "practitioner-without-role"],
)
async def test_explain_is_for_the_patient_or_a_consent_admin(
    api: httpx.AsyncClient, tokens: Tokens, caller: str
) -> None:
    headers = tokens.patient("p2") if caller == "other-patient" else tokens.practitioner()
    query = {"resource": observation("Patient/p1")}
    assert (
        await api.post("/fhir/Consent/$explain", json=query, headers=headers)
    ).status_code == 403


async def test_explain_refuses_a_request_it_cannot_read(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    answer = await api.post(
        "/fhir/Consent/$explain", json={"purpose": "TREAT"}, headers=tokens.admin()
    )
    assert answer.status_code == 400
    assert len(answer.json()["issue"]) == 2  # purpose is not a list; no resource


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("DELETE", "/fhir/Consent/c1", 405),
        ("PATCH", "/fhir/Consent/c1", 405),
        ("GET", "/fhir/Consent/$explain", 405),
        ("GET", "/fhir/Consent/c1/$revoke", 405),
        ("GET", "/fhir/Consent/c1/_history/1/x", 404),
        ("GET", "/fhir/Consent/_history", 404),
        ("GET", "/fhir/Consent/c1/../../Patient/1", 400),
        ("GET", "/fhir/Consent//c1", 400),
    ],
    ids=[
        "delete",
        "patch",
        "explain-get",
        "revoke-get",
        "too-deep",
        "type-history",
        "dots",
        "empty",
    ],
)
async def test_consent_paths_are_answered_here_never_upstream(
    gateway: Gateway,
    tokens: Tokens,
    upstream_route: respx.Route,
    method: str,
    path: str,
    status: int,
) -> None:
    headers = [(k.encode(), v.encode()) for k, v in tokens.admin().items()]
    got, _ = await raw_asgi_request(gateway, method, path.encode(), headers)
    assert got == status
    assert not upstream_route.called


async def test_a_lower_case_consent_path_goes_to_the_proxy(
    api: httpx.AsyncClient, tokens: Tokens, upstream_route: respx.Route
) -> None:
    answer = await api.get("/fhir/consent", headers=tokens.admin())
    assert answer.status_code == 404  # the classifier knows no resource type "consent"
    assert not upstream_route.called


async def test_the_dev_issuer_keys_are_served_only_when_it_is_on(
    api: httpx.AsyncClient, tokens: Tokens, make_client: Any
) -> None:
    keys = (await api.get("/auth/jwks")).json()
    assert keys == tokens.issuer.jwks()
    async with make_client(auth={}) as client:  # no issuer configured at all
        assert (await client.get("/auth/jwks")).status_code == 404


async def test_search_needs_a_patient_for_an_admin_and_takes_only_known_parameters(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    admin = tokens.admin()
    await create(api, admin, r5_consent("Patient/p3"))
    assert (await api.get("/fhir/Consent", headers=admin)).status_code == 400
    odd = await api.get("/fhir/Consent", params={"patient": "p3", "_sort": "x"}, headers=admin)
    assert odd.status_code == 400
    found = await api.get(
        "/fhir/Consent", params={"patient": "p3", "status": "active"}, headers=admin
    )
    assert found.json()["total"] == 1
    none = await api.get(
        "/fhir/Consent", params={"patient": "p3", "status": "inactive"}, headers=admin
    )
    assert none.json()["total"] == 0


async def test_answers_are_fhir_json_only(api: httpx.AsyncClient, tokens: Tokens) -> None:
    xml = {**tokens.patient("p1"), "accept": "application/fhir+xml"}
    assert (await api.get("/fhir/Consent", headers=xml)).status_code == 406
    text = {**tokens.patient("p1"), "content-type": "text/plain"}
    body = jsoncodec.encode(r5_consent())
    assert (await api.post("/fhir/Consent", content=body, headers=text)).status_code == 415


# --- fail closed ----------------------------------------------------------------------------


@pytest.mark.parametrize("down", ["ledger", "consent-store"])
async def test_without_the_ledger_or_the_store_nothing_is_changed_or_released(
    api: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    consents: MemoryConsentStore,
    down: str,
) -> None:
    me = tokens.patient("p1")
    cid = (await create(api, me, r5_consent())).json()["id"]
    before = await store.size()
    if down == "ledger":
        store.available = False
    else:
        consents.available = False
    for answer in (
        await api.get(f"/fhir/Consent/{cid}", headers=me),
        await create(api, me, r5_consent()),
        await create(api, tokens.patient("p2"), r5_consent()),  # a refusal, unrecordable
    ):
        assert answer.status_code == 503
        assert "x-consentry-audit-index" not in answer.headers
        assert cid not in answer.text
    store.available = consents.available = True
    assert await store.size() == before
    assert len(await consents.for_patient("Patient/p1")) == 1
