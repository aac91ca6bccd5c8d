"""Consents signed by the patient's registered key (``consent_signatures = "patient-key"``):
registering and rotating the key, changes that must carry its signature, and the setting off
(today's behaviour: a signature is optional and any key may sign)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.consent.keyrecord import key_id
from middleware.consent.records import canonical_consent, revoked, signed_change
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import FakeClock
from tests.app.consenting import Tokens, auth_settings, r5_consent, treat_only

Client = httpx.AsyncClient
#: The pseudonym-table lookup key every replica of a deployment shares (derived from the ledger
#: key in production): key records are found by it.
LOOKUP_KEY = bytes(range(32))


def gateway_with(
    mode: str,
    *,
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    key_file: Path,
    consents: MemoryConsentStore,
) -> Gateway:
    return create_app(
        make_settings(
            auth=auth_settings(key_file), consent_signatures=mode, consent_key_enrolment="patient"
        ),
        upstream=httpx.MockTransport(router.async_handler),
        store=store,
        signer=signer,
        clock=clock,
        consents=consents,
    )


@pytest.fixture
def build(
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    key_file: Path,
) -> Callable[..., Gateway]:
    def make(mode: str, consents: MemoryConsentStore | None = None) -> Gateway:
        return gateway_with(
            mode,
            router=router,
            clock=clock,
            store=store,
            signer=signer,
            make_settings=make_settings,
            key_file=key_file,
            consents=consents or MemoryConsentStore(lookup_key=LOOKUP_KEY),
        )

    return make


async def client_of(app: Gateway) -> AsyncIterator[Client]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


@pytest.fixture
def shared() -> MemoryConsentStore:
    return MemoryConsentStore(lookup_key=LOOKUP_KEY)


@pytest.fixture
async def api(build: Callable[..., Gateway], shared: MemoryConsentStore) -> AsyncIterator[Client]:
    async for c in client_of(build("patient-key", shared)):
        yield c


@pytest.fixture
async def api_off(build: Callable[..., Gateway]) -> AsyncIterator[Client]:
    async for c in client_of(build("off")):
        yield c


def sig(key: SigningKey, data: bytes) -> dict[str, str]:
    return {
        "x-consent-signature": base64.b64encode(key.sign(data)).decode(),
        "x-consent-signer-key": base64.b64encode(key.public_key).decode(),
    }


def key_params(patient: str, key: SigningKey, replaces: int | None = None) -> dict[str, Any]:
    more = [] if replaces is None else [{"name": "replaces", "valueInteger": replaces}]
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": patient}},
            {"name": "publicKey", "valueBase64Binary": base64.b64encode(key.public_key).decode()},
            *more,
        ],
    }


async def register(
    api: Client,
    headers: dict[str, str],
    patient: str,
    key: SigningKey,
    *,
    by: SigningKey | None = None,
    replaces: int | None = None,
) -> httpx.Response:
    params = key_params(patient, key, replaces)
    extra = {} if by is None else sig(by, canonical_consent(params))
    return await api.post("/fhir/Consent/$register-key", json=params, headers={**headers, **extra})


def new_id() -> str:
    return str(uuid.uuid4())


async def create_signed(
    api: Client, headers: dict[str, str], body: dict[str, Any], key: SigningKey
) -> httpx.Response:
    """A signed create names its own id (covered by the signature, used once)."""
    body = {"id": new_id(), **body}
    return await api.post(
        "/fhir/Consent", json=body, headers={**headers, **sig(key, canonical_consent(body))}
    )


def version(n: int) -> dict[str, str]:
    return {"if-match": f'W/"{n}"'}


# --- the whole life, signed -------------------------------------------------------------------


async def test_register_then_create_update_revoke_signed(api: Client, tokens: Tokens) -> None:
    me, key = tokens.patient("p1"), SigningKey.generate("p1")
    registered = await register(api, me, "Patient/p1", key)
    assert registered.status_code == 201, registered.text
    created = await create_signed(api, me, r5_consent(), key)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    body = treat_only(id=cid)
    changed = await api.put(
        f"/fhir/Consent/{cid}",
        json=body,
        headers={**me, **version(1), **sig(key, signed_change(body, 1))},
    )
    assert changed.status_code == 200, changed.text
    gone = revoked(body)
    answer = await api.post(
        f"/fhir/Consent/{cid}/$revoke",
        headers={**me, **version(2), **sig(key, signed_change(gone, 2))},
    )
    assert answer.status_code == 200, answer.text


async def test_an_admin_change_needs_the_patients_signature_too(
    api: Client, tokens: Tokens
) -> None:
    key = SigningKey.generate("p1")
    assert (await register(api, tokens.admin(), "Patient/p1", key)).status_code == 201
    body = r5_consent(id=new_id())
    assert (await api.post("/fhir/Consent", json=body, headers=tokens.admin())).status_code == 422
    assert (await create_signed(api, tokens.admin(), body, key)).status_code == 201


# --- refused ------------------------------------------------------------------------------


async def test_without_a_registered_key_every_change_is_refused(
    api: Client, tokens: Tokens
) -> None:
    answer = await create_signed(api, tokens.patient("p1"), r5_consent(), SigningKey.generate("x"))
    assert answer.status_code == 422
    assert "register one with POST Consent/$register-key" in answer.text


async def test_unsigned_and_wrong_key_changes_are_refused(api: Client, tokens: Tokens) -> None:
    me, key, other = tokens.patient("p1"), SigningKey.generate("p1"), SigningKey.generate("x")
    assert (await register(api, me, "Patient/p1", key)).status_code == 201
    unsigned = await api.post("/fhir/Consent", json=r5_consent(id=new_id()), headers=me)
    assert unsigned.status_code == 422
    assert "signed by the patient's registered key" in unsigned.text
    assert (await create_signed(api, me, r5_consent(), other)).status_code == 422
    # the registered key named, a signature by another key
    body = r5_consent(id=new_id())
    forged = {
        **sig(other, canonical_consent(body)),
        "x-consent-signer-key": sig(key, b"")["x-consent-signer-key"],
    }
    assert (await api.post("/fhir/Consent", json=body, headers={**me, **forged})).status_code == 422
    # a signature over other bytes (the patient signed a permit; a deny is sent)
    cid = new_id()
    signed_permit = sig(key, canonical_consent(r5_consent(id=cid)))
    deny = r5_consent(decision="deny", id=cid)
    assert (
        await api.post("/fhir/Consent", json=deny, headers={**me, **signed_permit})
    ).status_code == 422
    # an update signed over the body without its id (a create's bytes) does not cover the id
    created = await create_signed(api, me, r5_consent(), key)
    cid = created.json()["id"]
    body = treat_only()
    answer = await api.put(
        f"/fhir/Consent/{cid}",
        json={**body, "id": cid},
        headers={**me, **version(1), **sig(key, canonical_consent(body))},
    )
    assert answer.status_code == 422
    # nor one over the recorded bytes without the version it replaces
    answer = await api.put(
        f"/fhir/Consent/{cid}",
        json={**body, "id": cid},
        headers={**me, **version(1), **sig(key, canonical_consent({**body, "id": cid}))},
    )
    assert answer.status_code == 422


async def test_a_signature_replayed_for_another_patient_is_refused(
    api: Client, tokens: Tokens
) -> None:
    """p1 signed a permit for p1; an administrator submits the same text for p2 (whose own
    key is registered): neither p1's key nor p2's key makes it verify."""
    k1, k2 = SigningKey.generate("p1"), SigningKey.generate("p2")
    assert (await register(api, tokens.patient("p1"), "Patient/p1", k1)).status_code == 201
    assert (await register(api, tokens.patient("p2"), "Patient/p2", k2)).status_code == 201
    cid = new_id()
    p1_signed = sig(k1, canonical_consent(r5_consent("Patient/p1", id=cid)))
    for_p2 = r5_consent("Patient/p2", id=cid)
    answer = await api.post("/fhir/Consent", json=for_p2, headers={**tokens.admin(), **p1_signed})
    assert answer.status_code == 422
    as_p2 = {**p1_signed, "x-consent-signer-key": base64.b64encode(k2.public_key).decode()}
    answer = await api.post("/fhir/Consent", json=for_p2, headers={**tokens.admin(), **as_p2})
    assert answer.status_code == 422


async def test_a_patient_registers_only_their_own_key(api: Client, tokens: Tokens) -> None:
    answer = await register(api, tokens.patient("p2"), "Patient/p1", SigningKey.generate("x"))
    assert answer.status_code == 403


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"resourceType": "Parameters", "parameter": []}, 422),
        ({"resourceType": "Consent"}, 400),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
                    {"name": "publicKey", "valueBase64Binary": base64.b64encode(b"short").decode()},
                ],
            },
            422,
        ),
    ],
    ids=["no-parameters", "not-parameters", "key-not-32-bytes"],
)
async def test_a_bad_registration_is_refused(
    api: Client, tokens: Tokens, params: dict[str, Any], status: int
) -> None:
    answer = await api.post(
        "/fhir/Consent/$register-key", json=params, headers=tokens.patient("p1")
    )
    assert answer.status_code == status


# --- rotation -----------------------------------------------------------------------------


async def test_rotation_needs_the_old_key_or_an_admin(api: Client, tokens: Tokens) -> None:
    me = tokens.patient("p1")
    old, new, newer = (SigningKey.generate(n) for n in ("old", "new", "newer"))
    assert (await register(api, me, "Patient/p1", old)).status_code == 201
    # a stolen token alone cannot replace the key
    assert (await register(api, me, "Patient/p1", new)).status_code == 409
    assert (await register(api, me, "Patient/p1", new, replaces=1)).status_code == 422
    assert (await register(api, me, "Patient/p1", new, by=new, replaces=1)).status_code == 422
    rotated = await register(api, me, "Patient/p1", new, by=old, replaces=1)
    assert rotated.status_code == 200, rotated.text
    assert {"name": "version", "valueInteger": 2} in rotated.json()["parameter"]
    assert (await create_signed(api, me, r5_consent(), old)).status_code == 422
    assert (await create_signed(api, me, r5_consent(), new)).status_code == 201
    # a lost key: the administrator replaces it without a signature
    assert (await register(api, tokens.admin(), "Patient/p1", newer, replaces=2)).status_code == 200
    assert (await create_signed(api, me, r5_consent(), newer)).status_code == 201


# --- the key record is no Consent, and is durable -------------------------------------------


async def test_the_key_record_is_not_a_consent(
    api: Client, tokens: Tokens, shared: MemoryConsentStore
) -> None:
    me, key = tokens.patient("p1"), SigningKey.generate("p1")
    assert (await register(api, me, "Patient/p1", key)).status_code == 201
    found = (await api.get("/fhir/Consent", params={"patient": "Patient/p1"}, headers=me)).json()
    assert found.get("entry", []) == []
    kid = key_id(shared.lookup("Patient/p1"))
    assert kid.startswith("signer-key-")
    assert "p1" not in kid
    assert (await shared.current(kid)) is not None
    assert (await api.get(f"/fhir/Consent/{kid}", headers=me)).status_code == 404
    assert (await api.get(f"/fhir/Consent/{kid}/_history", headers=me)).status_code == 404
    body = r5_consent(id=kid)
    answer = await api.put(
        f"/fhir/Consent/{kid}",
        json=body,
        headers={**me, **sig(key, canonical_consent(body))},
    )
    assert answer.status_code == 404
    answer = await api.post(f"/fhir/Consent/{kid}/$revoke", headers=me)
    assert answer.status_code == 404


async def test_the_registered_key_is_rebuilt_from_the_ledger(
    api: Client, build: Callable[..., Gateway], tokens: Tokens
) -> None:
    """A replica with an empty consent store, on the same ledger, knows the key."""
    key = SigningKey.generate("p1")
    assert (await register(api, tokens.patient("p1"), "Patient/p1", key)).status_code == 201
    async for other in client_of(build("patient-key", MemoryConsentStore(lookup_key=LOOKUP_KEY))):
        assert (
            await create_signed(other, tokens.patient("p1"), r5_consent(), key)
        ).status_code == 201
        unsigned = await other.post(
            "/fhir/Consent", json=r5_consent(id=new_id()), headers=tokens.patient("p1")
        )
        assert unsigned.status_code == 422


# --- setting off: today's behaviour -------------------------------------------------------


async def test_off_a_signature_is_optional_and_any_key_signs(
    api_off: Client, tokens: Tokens
) -> None:
    me, key = tokens.patient("p1"), SigningKey.generate("p1")
    assert (await api_off.post("/fhir/Consent", json=r5_consent(), headers=me)).status_code == 201
    assert (await register(api_off, me, "Patient/p1", key)).status_code == 201
    assert (await api_off.post("/fhir/Consent", json=r5_consent(), headers=me)).status_code == 201
    other = SigningKey.generate("x")  # off: the gateway assigns the id; signed without one
    body = r5_consent()
    signed = {**me, **sig(other, canonical_consent(body))}
    assert (await api_off.post("/fhir/Consent", json=body, headers=signed)).status_code == 201
