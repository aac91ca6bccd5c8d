"""Malformed and oversized input is refused with a 4xx (or a 502 when the upstream sent it),
never a 500: deep JSON in bodies, tokens and upstream answers, odd types where FHIR has strings,
numbers Python's ``int`` will not read, and consents nested too deep to enforce, at write time
and when one is already stored."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.consent.records import canonical_consent
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.settings import Settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import FakeClock
from tests.app.consenting import (
    ACT_REASON,
    FHIR_JSON,
    Tokens,
    auth_settings,
    ledger_entries,
    observation,
    r5_consent,
)

TREAT = [{"system": ACT_REASON, "code": "TREAT"}]


def deep_json(levels: int) -> bytes:
    """``levels`` nested arrays around a number: what a recursive decoder cannot survive."""
    return b"[" * levels + b"1" + b"]" * levels


def nested_consent(depth: int, patient: str = "Patient/p1", **extra: Any) -> dict[str, Any]:
    """An R5 Consent whose provisions nest ``depth`` levels (each one's only child is the
    next), every level a purpose condition: valid FHIR, and each level flips the effect."""
    provision: dict[str, Any] = {"purpose": TREAT}
    for _ in range(depth - 1):
        provision = {"purpose": TREAT, "provision": [provision]}
    return r5_consent(patient, "deny", provision=[provision], **extra)


@pytest.fixture
def make_gateway(
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    consents: MemoryConsentStore,
    key_file: Path,
) -> Callable[..., Gateway]:
    def make(**overrides: Any) -> Gateway:
        return create_app(
            make_settings(auth=auth_settings(key_file), **overrides),
            upstream=httpx.MockTransport(router.async_handler),
            store=store,
            signer=signer,
            clock=clock,
            consents=consents,
        )

    return make


@pytest.fixture
async def api(make_gateway: Callable[..., Gateway]) -> AsyncIterator[httpx.AsyncClient]:
    gateway = make_gateway()
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await gateway.aclose()


@pytest.fixture
def upstream_observation(router: respx.Router) -> respx.Route:
    return router.get("/Observation/o1").respond(200, json=observation())


def assert_outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return dict(body)


# --- deep JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "authorized"),
    [
        ("/fhir/Observation", True),
        ("/fhir/Observation", False),
        ("/fhir", True),  # a batch: Bundle.type is read before the token is checked
        ("/fhir", False),
        ("/fhir/Consent", True),
        ("/fhir/Consent", False),
    ],
    ids=["create", "create-no-token", "batch", "batch-no-token", "consent", "consent-no-token"],
)
async def test_a_body_nested_thousands_deep_is_refused_not_500(
    api: httpx.AsyncClient,
    tokens: Tokens,
    router: respx.Router,
    path: str,
    authorized: bool,
) -> None:
    """Attack: a body of 1,000 (and 100,000) nested arrays. The decoder recursed per level
    and raised RecursionError, which callers did not catch (they catch its DecodeError): a
    500, also without a token. Now the depth is measured before anything decodes: 400."""
    upstream = router.route().respond(201, json=observation())
    headers = tokens.patient("p1", "patient/*.cruds") if authorized else dict(FHIR_JSON)
    for levels in (1_000, 100_000):
        response = await api.post(path, content=deep_json(levels), headers=headers)
        assert response.status_code in (400, 401), response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    assert not upstream.called


async def test_a_body_just_within_max_json_depth_is_decoded_and_one_level_deeper_is_not(
    make_gateway: Callable[..., Gateway], tokens: Tokens, router: respx.Router
) -> None:
    """The limit is ``max_json_depth``: a resource nesting exactly that deep is judged as
    usual; one level more is 400 before the token is even looked at."""
    router.route().respond(201, json=observation())
    gateway = make_gateway(max_json_depth=12)
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    nested: Any = "x"
    for _ in range(10):
        nested = [nested]
    body = {**observation(), "note": [{"text": "n", "extension": nested}]}  # depth 4 + 10
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as api:
        headers = tokens.patient("p1", "patient/*.cruds")
        too_deep = await api.post("/fhir/Observation", json=body, headers=headers)
        outcome = assert_outcome(too_deep, 400)
        assert "12 levels" in outcome["issue"][0]["diagnostics"]
        body["note"][0]["extension"] = nested[0][0][0]  # depth 12
        within = await api.post("/fhir/Observation", json=body, headers=headers)
        assert within.status_code == 201, within.text
        # The consent API reads its bodies under the same limit.
        deep = r5_consent(extension=[{"url": "u", "valueString": "v", "x": nested}])
        refused = await api.post("/fhir/Consent", json=deep, headers=tokens.patient("p1"))
        assert "12 levels" in assert_outcome(refused, 400)["issue"][0]["diagnostics"]
    await gateway.aclose()


async def test_an_upstream_answer_nested_deep_is_502(
    api: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    """Attack (or a broken upstream): an answer nested 1,000 deep was a 500 from the decoder's
    RecursionError; it is the upstream's fault, so 502, and nothing of it is released."""
    router.get("/Observation/o1").respond(
        200, content=deep_json(1_000), headers={"content-type": "application/fhir+json"}
    )
    response = await api.get("/fhir/Observation/o1", headers=tokens.patient("p1", "patient/*.rs"))
    assert_outcome(response, 502)


async def test_a_token_whose_payload_nests_1000_deep_is_401(
    api: httpx.AsyncClient, router: respx.Router
) -> None:
    """Attack: a JWT whose claims are 1,000 nested arrays. Claims are decoded before the
    signature is checked, and ``json.loads`` raised RecursionError: a 500 for anyone. Now 401."""
    upstream = router.route().respond(200, json=observation())

    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = segment(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    claims = segment(b'{"sub":' + deep_json(1_000) + b"}")
    token = f"{header}.{claims}.{segment(b'x' * 64)}"
    for path in ("/fhir/Observation/o1", "/fhir/Consent"):
        response = await api.get(path, headers={"authorization": f"Bearer {token}"})
        assert_outcome(response, 401)
    assert not upstream.called


# --- odd values where FHIR has strings and numbers --------------------------------------------


@pytest.mark.parametrize(
    "contained_type",
    [["Patient"], 7, {"x": 1}, None, True],
    ids=["list", "number", "object", "null", "bool"],
)
async def test_a_contained_resource_with_an_odd_resource_type_is_refused_not_500(
    api: httpx.AsyncClient, tokens: Tokens, router: respx.Router, contained_type: Any
) -> None:
    """Attack: ``contained[0].resourceType`` a list or number (unhashable or not a string):
    the compartment and judge code used it as a dict key or string, a 500. A write carrying
    it is refused with a 4xx and never forwarded."""
    upstream = router.route().respond(201, json=observation())
    body = {**observation(), "contained": [{"resourceType": contained_type, "id": "c"}]}
    body.pop("id")
    response = await api.post(
        "/fhir/Observation", json=body, headers=tokens.patient("p1", "patient/*.cruds")
    )
    assert 400 <= response.status_code < 500, response.text
    assert not upstream.called


async def test_an_upstream_answer_with_an_odd_contained_type_is_not_500(
    api: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    """The same odd ``contained`` coming back from the upstream: never a 500, never released
    unjudged (a 502 or the resource refused)."""
    answer = {**observation(), "contained": [{"resourceType": ["Patient"], "id": "c"}]}
    router.get("/Observation/o1").respond(200, json=answer)
    response = await api.get("/fhir/Observation/o1", headers=tokens.patient("p1", "patient/*.rs"))
    assert response.status_code != 500, response.text
    assert response.status_code >= 400, response.text


@pytest.mark.parametrize(
    "status", [["active"], 1, {"a": 1}, None], ids=["list", "number", "object", "null"]
)
async def test_a_consent_status_that_is_not_a_string_is_422(
    api: httpx.AsyncClient, tokens: Tokens, status: Any
) -> None:
    """Attack: ``Consent.status`` a list: looked up in a set of statuses it raised TypeError
    (unhashable), a 500. Now 422 naming the element."""
    response = await api.post(
        "/fhir/Consent", json=r5_consent(status=status), headers=tokens.patient("p1")
    )
    outcome = assert_outcome(response, 422)
    assert "Consent.status" in json.dumps(outcome)


@pytest.mark.parametrize(
    "count",
    ["%C2%B2", "%D9%A3", "1" * 5_000, "%EF%BC%91"],
    ids=["superscript-two", "arabic-indic-three", "5000-digits", "fullwidth-one"],
)
async def test_a_count_int_cannot_read_is_not_500(
    api: httpx.AsyncClient, tokens: Tokens, router: respx.Router, count: str
) -> None:
    """Attack: ``_count=²`` passes ``str.isdigit`` but ``int()`` refuses it, and 4,300 digits
    pass it too but exceed ``int``'s digit limit: both were a 500. ``_count`` is ASCII digits
    of a sane length, or the request is 400."""
    router.get(path__regex=r"/Observation.*").respond(
        200, json={"resourceType": "Bundle", "type": "searchset", "entry": []}
    )
    response = await api.get(
        f"/fhir/Observation?patient=p1&_count={count}",
        headers=tokens.patient("p1", "patient/*.rs"),
    )
    assert response.status_code != 500, response.text
    assert response.status_code in (200, 400), response.text


# --- consents nested too deep to enforce -------------------------------------------------------


async def test_a_consent_nested_120_provisions_deep_is_refused_and_the_patient_still_reads(
    api: httpx.AsyncClient, tokens: Tokens, upstream_observation: respx.Route, store: MemoryLogStore
) -> None:
    """Attack: a patient stores a Consent nested ~120 provisions deep with their own token
    (it was a 201); from then on every read of that patient was a 500, also after ``$revoke``
    and a restart. Now it is refused at write time: 120 provisions are ~240 JSON levels, past
    ``max_json_depth`` (400); 20 provisions are within it and past ``consent_max_depth`` (422
    naming the setting). Nothing is stored and the patient's data stays readable."""
    me = tokens.patient("p1", "patient/*.cruds")
    too_deep = await api.post("/fhir/Consent", json=nested_consent(120), headers=me)
    assert "100 levels" in assert_outcome(too_deep, 400)["issue"][0]["diagnostics"]
    deep = await api.post("/fhir/Consent", json=nested_consent(20), headers=me)
    assert "consent_max_depth" in json.dumps(assert_outcome(deep, 422))
    assert not [e for e in await ledger_entries(store) if e.kind is EntryKind.CONSENT]
    read = await api.get("/fhir/Observation/o1", headers=me)
    assert read.status_code == 200, read.text
    # Within the limit, the same shape is stored.
    allowed = await api.post("/fhir/Consent", json=nested_consent(8), headers=me)
    assert allowed.status_code == 201, allowed.text


async def test_too_many_provisions_is_422_naming_the_limit(
    make_gateway: Callable[..., Gateway], tokens: Tokens
) -> None:
    """A flat Consent of many provisions is bounded too (``consent_max_provisions``): the
    decision walks every one on every request."""
    gateway = make_gateway(consent_max_provisions=10)
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    wide = r5_consent(decision="deny", provision=[{"purpose": TREAT}] * 11)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as api:
        response = await api.post("/fhir/Consent", json=wide, headers=tokens.patient("p1"))
        outcome = assert_outcome(response, 422)
        assert "consent_max_provisions" in json.dumps(outcome)
        wide["provision"] = wide["provision"][:10]
        ok = await api.post("/fhir/Consent", json=wide, headers=tokens.patient("p1"))
        assert ok.status_code == 201, ok.text
    await gateway.aclose()


async def _on_the_ledger(
    store: MemoryLogStore, signer: SigningKey, body: dict[str, Any], **kw: Any
) -> None:
    """A consent entry already on the ledger when the gateway starts (written before the
    write-time limits existed): the consent store is rebuilt from it on first use, as after
    a restart."""
    kind = EntryKind.CONSENT_REVOKE if kw.get("revoked") else EntryKind.CONSENT
    entry = NewEntry.create(
        kind, canonical_consent(body), recorded_us=1, pseudonym=kw.get("pseudonym", b"p" * 16)
    )
    await store.append([entry], sign=checkpoint_signer(signer))


@pytest.mark.parametrize("depth", [120, 200], ids=["120-provisions", "200-provisions"])
@pytest.mark.parametrize("remedy", ["revoke", "replace"])
async def test_an_already_stored_deep_consent_fails_closed_and_never_500(
    api: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    signer: SigningKey,
    upstream_observation: respx.Route,
    depth: int,
    remedy: str,
) -> None:
    """Attack, continued: the deep consent is already on the ledger (written before the
    limit existed) and the gateway restarts. Rebuilding the consent index and compiling the
    patient's consents must neither crash (every read of the patient was a 500) nor ignore it
    (it may deny): an active consent that cannot be enforced denies that patient's data
    entirely, 503 with nothing of the resource released, whatever the jurisdiction default.
    The consent itself still reads without a 500, and the patient can end the state with
    ``$revoke`` or by replacing it (``PUT``)."""
    await _on_the_ledger(store, signer, nested_consent(depth, id="deep"))
    me = tokens.patient("p1", "patient/*.cruds")
    for _ in range(2):  # compiled, then from the cache
        read = await api.get("/fhir/Observation/o1", headers=me)
        assert_outcome(read, 503)
        assert "Observation" not in read.text
    for path in ("/fhir/Consent/deep", "/fhir/Consent?patient=Patient/p1"):
        answer = await api.get(path, headers=me)
        assert answer.status_code == 200, answer.text
    if remedy == "revoke":
        ended = await api.post("/fhir/Consent/deep/$revoke", headers=me)
    else:
        ended = await api.put(
            "/fhir/Consent/deep", json=r5_consent(id="deep", decision="permit"), headers=me
        )
    assert ended.status_code == 200, ended.text
    read = await api.get("/fhir/Observation/o1", headers=me)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == "o1"


async def test_a_revoked_stored_deep_consent_is_skipped_and_the_patient_reads_again(
    api: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    signer: SigningKey,
    upstream_observation: respx.Route,
) -> None:
    """Attack, continued: after ``$revoke`` the deep consent's last version is inactive, and
    only active consents are enforced, so it cannot permit anything: the registry skips it
    (the revoked version used to be parsed, and crashed, on every read) and the patient's data
    follows the other consents or the jurisdiction default again."""
    revoked = nested_consent(200, id="deep", status="inactive")
    await _on_the_ledger(store, signer, nested_consent(200, id="deep"))
    await _on_the_ledger(store, signer, revoked, revoked=True)
    await _on_the_ledger(store, signer, r5_consent(id="grant", decision="permit"))
    read = await api.get("/fhir/Observation/o1", headers=tokens.patient("p1", "patient/*.rs"))
    assert read.status_code == 200, read.text
    assert upstream_observation.called


async def test_a_json_body_naming_form_encoding_in_a_parameter_is_still_depth_checked(
    api: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    """Attack: the depth check skipped any body whose Content-Type merely contained
    "x-www-form-urlencoded", so ``application/fhir+json; x=x-www-form-urlencoded`` carried
    JSON nested past ``max_json_depth`` into the decoders. Only the media type itself
    (parsed, parameters aside) exempts a body: this one is refused 400 naming the limit, and
    nothing is forwarded."""
    upstream = router.route().respond(201, json=observation())
    headers = {
        **tokens.patient("p1", "patient/*.cruds"),
        "content-type": "application/fhir+json; x=x-www-form-urlencoded",
    }
    response = await api.post("/fhir/Observation", content=deep_json(150), headers=headers)
    assert "100 levels" in assert_outcome(response, 400)["issue"][0]["diagnostics"]
    assert not upstream.called
