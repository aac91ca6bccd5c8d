"""Labels on data through the gateway (consent.labels): a resource labelled for purposes of use
the caller does not declare is not released (read: generic 404; search: absent); 42 CFR Part 2
data is released only to a caller a patient's consent names it for, and reaches them with the
DS4P refrain label and the 42 CFR 2.32 notice."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.consent.labels import ACT_CODE, DEFAULT_PART2_NOTICE, DISPLAY_URL
from middleware.consent.summary import INLINE_LABEL_URL
from tests.app.consenting import (
    ACT_REASON,
    DEV_ISSUER,
    FHIR_JSON,
    Tokens,
    auth_settings,
    r5_consent,
)

DR = "Practitioner/dr"
PART2 = {"system": ACT_CODE, "code": "42CFRPart2"}
SUD = {"system": ACT_CODE, "code": "SUD"}


def observation(oid: str = "o1", **meta: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"text": "screening"},
        "subject": {"reference": "Patient/p1"},
        **({"meta": meta} if meta else {}),
    }


def for_purposes(*codes: str) -> list[dict[str, str]]:
    return [{"system": ACT_REASON, "code": code} for code in codes]


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


Opener = Callable[..., Any]


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path
) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    apps: list[Gateway] = []

    def open_gateway(**settings: Any) -> httpx.AsyncClient:
        app: Gateway = make_app(auth=auth_settings(dev_key_file), **settings)
        apps.append(app)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")

    yield open_gateway
    for app in apps:
        await app.aclose()


def dr(tokens: Tokens, *purposes: str) -> dict[str, str]:
    return tokens.bearer("dr", "user/Observation.rs", fhir_user=DR, purpose_of_use=list(purposes))


# --- purpose-of-use labels


@pytest.mark.parametrize(
    ("purposes", "status"),
    [(("TREAT",), 200), (("ETREAT",), 200), (("HMARKT",), 404), ((), 404)],
    ids=["same", "specialised", "other", "none"],
)
async def test_a_read_of_data_labelled_for_treatment(
    gateway: Any, router: respx.Router, tokens: Tokens, purposes: tuple[str, ...], status: int
) -> None:
    """Opt-out (no consent permits): only the resource's purpose label decides. A caller
    asking for marketing, or for nothing, gets the same 404 as for a resource that is not
    there, with nothing of the resource in it."""
    labelled = observation(security=for_purposes("TREAT"))
    router.get("/Observation/o1").respond(200, json=labelled, headers=FHIR_JSON)
    async with gateway(consent_jurisdiction="opt-out") as client:
        answer = await client.get("/fhir/Observation/o1", headers=dr(tokens, *purposes))
    assert answer.status_code == status
    if status == 404:
        assert "screening" not in answer.text


async def test_a_search_leaves_out_data_labelled_for_other_purposes(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 3,
        "entry": [
            {"resource": observation("o1", security=for_purposes("HRESCH"))},
            {"resource": observation("o2")},
            {"resource": observation("o3", security=for_purposes("TREAT"))},
        ],
    }
    router.get("/Observation").respond(200, json=page, headers=FHIR_JSON)
    async with gateway(consent_jurisdiction="opt-out") as client:
        answer = await client.get(
            "/fhir/Observation", params={"subject": "Patient/p1"}, headers=dr(tokens, "COC")
        )
    assert answer.status_code == 200
    body = answer.json()
    assert [e["resource"]["id"] for e in body["entry"]] == ["o2", "o3"]


# --- 42 CFR Part 2


def naming_part2(**extra: Any) -> dict[str, Any]:
    """Patient/p1's consent: deny, except Practitioner/dr may have the Part 2 data."""
    provision = {
        "actor": [{"reference": {"reference": DR}}],
        "securityLabel": [PART2],
        **extra,
    }
    return r5_consent("Patient/p1", "deny", provision=[provision])


async def test_part2_data_needs_a_consent_naming_it_and_then_carries_the_notice(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """Opt-out (a general permit for everything else): the Part 2 Observation is a 404 until
    p1's consent names 42CFRPart2 for dr; then it comes with NORDSCLCD and the notice."""
    router.get("/Observation/o1").respond(
        200, json=observation(security=[PART2]), headers=FHIR_JSON
    )
    router.get("/Observation/o2").respond(200, json=observation("o2"), headers=FHIR_JSON)
    async with gateway(consent_jurisdiction="opt-out") as client:
        before = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
        assert before.status_code == 404
        assert "screening" not in before.text
        created = await client.post(
            "/fhir/Consent", json=naming_part2(), headers=tokens.patient("p1")
        )
        assert created.status_code == 201, created.text
        after = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
        plain = await client.get("/fhir/Observation/o2", headers=dr(tokens, "TREAT"))
    assert after.status_code == 200, after.text
    meta = after.json()["meta"]
    assert {
        "system": ACT_CODE,
        "code": "NORDSCLCD",
        "display": "no redisclosure without consent directive",
    } in meta["security"]
    assert meta["extension"] == [
        {"url": DISPLAY_URL, "valueAnnotation": {"text": DEFAULT_PART2_NOTICE}}
    ]
    # p1's consent denies everything it does not name: plain data stays withheld.
    assert plain.status_code == 404


async def test_a_general_permit_does_not_reach_part2_data(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    router.get("/Observation/o1").respond(
        200, json=observation(security=[PART2]), headers=FHIR_JSON
    )
    async with gateway(consent_jurisdiction="opt-in") as client:
        created = await client.post(
            "/fhir/Consent", json=r5_consent("Patient/p1", "permit"), headers=tokens.patient("p1")
        )
        assert created.status_code == 201, created.text
        answer = await client.get("/fhir/Observation/o1", headers=dr(tokens, "TREAT"))
    assert answer.status_code == 404


async def test_configured_part_two_labels_and_notice(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """SUD configured as Part 2 data with the deployment's own notice text."""
    router.get("/Observation/o1").respond(200, json=observation(security=[SUD]), headers=FHIR_JSON)
    notice = "Disclosed under 42 CFR part 2; further disclosure needs the patient's consent."
    consent = r5_consent(
        "Patient/p1",
        "deny",
        provision=[{"actor": [{"reference": {"reference": DR}}], "securityLabel": [SUD]}],
    )
    async with gateway(
        consent_jurisdiction="opt-in", part_two_labels="SUD", part_two_notice=notice
    ) as client:
        created = await client.post("/fhir/Consent", json=consent, headers=tokens.patient("p1"))
        assert created.status_code == 201, created.text
        answer = await client.get("/fhir/Observation/o1", headers=dr(tokens))
    assert answer.status_code == 200, answer.text
    assert answer.json()["meta"]["extension"][0]["valueAnnotation"]["text"] == notice


# --- $explain


async def test_explain_names_the_purpose_labels_that_withhold(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    """The patient asks why dr, reading for marketing, does not get an Observation labelled
    for treatment: the consent permits, the label withholds, and the trace says so."""
    resource = observation(security=for_purposes("TREAT"))
    query = {
        "principal": {"reference": DR},
        "purpose": for_purposes("HMARKT"),
        "resource": resource,
    }
    async with gateway(consent_jurisdiction="opt-out") as client:
        refused = await client.post(
            "/fhir/Consent/$explain", json=query, headers=tokens.patient("p1")
        )
        query["purpose"] = for_purposes("ETREAT")
        permitted = await client.post(
            "/fhir/Consent/$explain", json=query, headers=tokens.patient("p1")
        )
    assert refused.status_code == 200, refused.text
    assert refused.json()["effect"] == "deny"
    assert "purposes of use TREAT" in refused.json()["trace"][-1]["reason"]
    assert permitted.json()["effect"] == "permit"


async def test_a_search_page_carries_the_notice_on_the_part2_resource_only(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": observation("o1", security=[PART2]), "search": {"mode": "match"}},
            {"resource": observation("o2"), "search": {"mode": "match"}},
        ],
    }
    router.get("/Observation").respond(200, json=page, headers=FHIR_JSON)
    actor = [{"reference": {"reference": DR}}]
    # R5: deny, except dr (everything unlabelled), and dr for the Part 2 data by name.
    consent = r5_consent(
        "Patient/p1",
        "deny",
        provision=[{"actor": actor}, {"actor": actor, "securityLabel": [PART2]}],
    )
    async with gateway(consent_jurisdiction="opt-in") as client:
        created = await client.post("/fhir/Consent", json=consent, headers=tokens.patient("p1"))
        assert created.status_code == 201, created.text
        answer = await client.get(
            "/fhir/Observation", params={"subject": "Patient/p1"}, headers=dr(tokens)
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    released = {e["resource"]["id"]: e["resource"] for e in body["entry"]}
    assert set(released) == {"o1", "o2"}
    assert released["o1"]["meta"]["extension"][0]["url"] == DISPLAY_URL
    assert "meta" not in released["o2"]
    # DS4P: no privacy-revealing refrain code on the Bundle itself.
    assert "NORDSCLCD" not in str(body.get("meta", {}))


async def test_an_element_labelled_part2_inline_marks_the_resource_it_is_released_in(
    gateway: Any, router: respx.Router, tokens: Tokens
) -> None:
    inline = {"url": INLINE_LABEL_URL, "valueCoding": PART2}
    resource = {**observation(), "note": [{"text": "program note", "extension": [inline]}]}
    router.get("/Observation/o1").respond(200, json=resource, headers=FHIR_JSON)
    async with gateway(consent_jurisdiction="opt-out") as client:
        withheld = await client.get("/fhir/Observation/o1", headers=dr(tokens))
        created = await client.post(
            "/fhir/Consent", json=naming_part2(), headers=tokens.patient("p1")
        )
        assert created.status_code == 201, created.text
        answer = await client.get("/fhir/Observation/o1", headers=dr(tokens))
    assert withheld.status_code == 404
    assert answer.status_code == 200, answer.text
    assert answer.json()["note"][0]["text"] == "program note"
    assert answer.json()["meta"]["extension"][0]["url"] == DISPLAY_URL
