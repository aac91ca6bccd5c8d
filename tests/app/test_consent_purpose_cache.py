"""One gateway, one consent, two purposes of use: the gateway's consent decisions are cached
across exchanges (:mod:`middleware.consent.decisions`), and an answer made for one purpose is
never served to an exchange asking for another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, observation, treat_only

DR = "Practitioner/dr"


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    """An opt-in gateway (no consent: deny) in front of Observation/o1 of Patient/p1."""
    router.get("/Observation/o1").respond(
        200, json=observation(), headers={"content-type": "application/fhir+json"}
    )
    app: Gateway = make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-in")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client
    await app.aclose()


async def test_exchanges_differing_only_in_purpose_get_their_own_answers(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Patient/p1 permits treatment only. The same clinician reading the same Observation
    for treatment, then for marketing, then again each way, through the same gateway (and
    its one decision cache): permitted for treatment every time, refused for marketing
    every time, whichever was asked first."""
    created = await gateway.post("/fhir/Consent", json=treat_only(), headers=tokens.patient("p1"))
    assert created.status_code == 201, created.text

    def dr(purpose: str) -> dict[str, str]:
        scopes = "user/Observation.rs"
        return tokens.bearer("dr", scopes, fhir_user=DR, purpose_of_use=[purpose])

    statuses = [
        (await gateway.get("/fhir/Observation/o1", headers=dr(purpose))).status_code
        for purpose in ("TREAT", "HMARKT", "TREAT", "HMARKT", "HMARKT", "TREAT")
    ]
    assert statuses == [200, 404, 200, 404, 404, 200]
