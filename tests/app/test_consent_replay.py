"""Signed consent changes apply once (``consent_signatures = "patient-key"``).

The attacks: whoever captures a signed request (a proxy log, a stolen token and a recorded
exchange) sends it again later. Before, the signed bytes held neither the version replaced
nor anything single-use: a captured create re-posted after the patient revoked it made a new
active consent (201), an old signed update put back after a later one was 200, a key rotation
A->B replayed after B->A was accepted, and two concurrent first key registrations were both
201. Now an update or revocation signs the version it replaces (``meta.versionId``, and
``If-Match`` is required), a create signs the id its client chose (used once), a rotation
names the version it replaces, and changes of one id are serialised.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.consent.records import canonical_consent, revoked, signed_change
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app import test_consent_signers as signers
from tests.app.conftest import FakeClock
from tests.app.consenting import Tokens, auth_settings, r5_consent, treat_only
from tests.app.test_consent_signers import (
    Client,
    client_of,
    key_params,
    new_id,
    register,
    sig,
    version,
)

# The gateway builder of the signer tests (a mode and a consent store, enrolment by patients).
build = signers.build


@pytest.fixture
async def api(build: Callable[..., Gateway]) -> AsyncIterator[Client]:
    """A gateway under ``patient-key`` whose patients may enrol their own first key."""
    async for c in client_of(build("patient-key")):
        yield c


Headers = dict[str, str]


async def created(
    api: Client, tokens: Tokens, make: Callable[..., dict[str, Any]] = r5_consent
) -> tuple[Headers, SigningKey, str, dict[str, Any], Headers]:
    """Patient p1 registers a key and creates ``make(id=...)`` signed by it (201 asserted):
    her token headers, the key, the consent id, the body and the create's own headers."""
    me, key = tokens.patient("p1"), SigningKey.generate("p1")
    assert (await register(api, me, "Patient/p1", key)).status_code == 201
    cid = new_id()
    body = make(id=cid)
    headers = {**me, **sig(key, canonical_consent(body))}
    assert (await api.post("/fhir/Consent", json=body, headers=headers)).status_code == 201
    return me, key, cid, body, headers


# --- consents -------------------------------------------------------------------------------


async def test_a_captured_create_replayed_after_revoke_is_refused(
    api: Client, tokens: Tokens
) -> None:
    me, key, cid, body, captured = await created(api, tokens)
    gone = revoked(body)
    headers = {**me, **version(1), **sig(key, signed_change(gone, 1))}
    assert (await api.post(f"/fhir/Consent/{cid}/$revoke", headers=headers)).status_code == 200
    replay = await api.post("/fhir/Consent", json=body, headers=captured)
    assert replay.status_code == 409, replay.text
    current = await api.get(f"/fhir/Consent/{cid}", headers=me)
    assert current.json()["status"] == "inactive"
    found = (await api.get("/fhir/Consent", params={"patient": "Patient/p1"}, headers=me)).json()
    assert [e["resource"]["status"] for e in found["entry"]] == ["inactive"]


async def test_a_signed_create_names_its_own_id(api: Client, tokens: Tokens) -> None:
    me, key = tokens.patient("p1"), SigningKey.generate("p1")
    assert (await register(api, me, "Patient/p1", key)).status_code == 201
    body = r5_consent()
    answer = await api.post(
        "/fhir/Consent", json=body, headers={**me, **sig(key, canonical_consent(body))}
    )
    assert answer.status_code == 422
    assert "Consent.id" in answer.text


async def test_an_old_signed_update_is_not_applied_again(api: Client, tokens: Tokens) -> None:
    me, key, cid, _, _ = await created(api, tokens, treat_only)
    v2 = r5_consent(id=cid)
    captured = {**me, **version(1), **sig(key, signed_change(v2, 1))}
    assert (await api.put(f"/fhir/Consent/{cid}", json=v2, headers=captured)).status_code == 200
    v3 = treat_only(id=cid)
    headers = {**me, **version(2), **sig(key, signed_change(v3, 2))}
    assert (await api.put(f"/fhir/Consent/{cid}", json=v3, headers=headers)).status_code == 200
    replay = await api.put(f"/fhir/Consent/{cid}", json=v2, headers=captured)
    assert replay.status_code == 412
    retargeted = {**captured, **version(3)}
    replay = await api.put(f"/fhir/Consent/{cid}", json=v2, headers=retargeted)
    assert replay.status_code == 422
    assert (await api.get(f"/fhir/Consent/{cid}", headers=me)).json()["meta"]["versionId"] == "3"


async def test_a_change_without_if_match_is_refused(api: Client, tokens: Tokens) -> None:
    me, key, cid, body, _ = await created(api, tokens)
    v2 = treat_only(id=cid)
    answer = await api.put(
        f"/fhir/Consent/{cid}", json=v2, headers={**me, **sig(key, signed_change(v2, 1))}
    )
    assert answer.status_code == 412
    assert "If-Match" in answer.text
    gone = revoked(body)
    answer = await api.post(
        f"/fhir/Consent/{cid}/$revoke", headers={**me, **sig(key, signed_change(gone, 1))}
    )
    assert answer.status_code == 412


async def test_a_signed_update_sent_twice_at_once_applies_once(api: Client, tokens: Tokens) -> None:
    me, key, cid, _, _ = await created(api, tokens)
    v2 = treat_only(id=cid)
    captured = {**me, **version(1), **sig(key, signed_change(v2, 1))}
    answers = await asyncio.gather(
        *(api.put(f"/fhir/Consent/{cid}", json=v2, headers=captured) for _ in range(2))
    )
    assert sorted(a.status_code for a in answers) == [200, 412]


# --- keys -------------------------------------------------------------------------------------


async def test_a_replayed_rotation_is_refused(api: Client, tokens: Tokens) -> None:
    me = tokens.patient("p1")
    a, b = SigningKey.generate("a"), SigningKey.generate("b")
    assert (await register(api, me, "Patient/p1", a)).status_code == 201
    a_to_b = key_params("Patient/p1", b, replaces=1)
    captured = {**me, **sig(a, canonical_consent(a_to_b))}
    url = "/fhir/Consent/$register-key"
    assert (await api.post(url, json=a_to_b, headers=captured)).status_code == 200
    assert (await register(api, me, "Patient/p1", a, by=b, replaces=2)).status_code == 200
    replay = await api.post(url, json=a_to_b, headers=captured)
    assert replay.status_code == 412
    # the same rotation re-signed for the current version is a new signature, by key a: fine
    assert (await register(api, me, "Patient/p1", b, by=a, replaces=3)).status_code == 200


async def test_two_first_registrations_at_once_one_wins(api: Client, tokens: Tokens) -> None:
    me = tokens.patient("p1")
    a, b = SigningKey.generate("a"), SigningKey.generate("b")
    answers = await asyncio.gather(
        register(api, me, "Patient/p1", a), register(api, me, "Patient/p1", b)
    )
    assert sorted(r.status_code for r in answers) == [201, 409]


async def test_by_default_an_administrator_makes_the_first_registration(
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    key_file: Path,
    tokens: Tokens,
) -> None:
    """``consent_key_enrolment`` defaults to ``admin``: a stolen patient token cannot enrol
    the thief's key; the patient rotates the key the administrator enrolled."""
    settings = make_settings(auth=auth_settings(key_file), consent_signatures="patient-key")
    assert settings.consent_key_enrolment == "admin"
    app = create_app(
        settings,
        upstream=httpx.MockTransport(router.async_handler),
        store=store,
        signer=signer,
        clock=clock,
    )
    me, key, new = tokens.patient("p1"), SigningKey.generate("p1"), SigningKey.generate("n")
    clients: AsyncIterator[Client] = client_of(app)
    async for c in clients:
        assert (await register(c, me, "Patient/p1", key)).status_code == 403
        assert (await register(c, tokens.admin(), "Patient/p1", key)).status_code == 201
        assert (await register(c, me, "Patient/p1", new, by=key, replaces=1)).status_code == 200
        answer = await register(c, me, "Patient/p1", key, replaces=2)
        assert answer.status_code == 422  # unsigned rotation by the patient
        assert (
            base64.b64encode(new.public_key).decode()
            in (await register(c, tokens.admin(), "Patient/p1", new, replaces=2)).text
        )
