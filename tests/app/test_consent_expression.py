"""R5 ``provision.expression`` through the gateway: a patient records a consent whose permit is
a FHIRPath expression, and proxied reads are judged by it, resource by resource (the gateway's
decision cache must not carry one resource's answer over to another)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, observation, r5_consent

DR = "Practitioner/dr"
FINAL_ONLY = {"language": "text/fhirpath", "expression": "Observation.status = 'final'"}


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    """An opt-in gateway in front of a final (o1) and a preliminary (o2) Observation of p1."""
    fhir = {"content-type": "application/fhir+json"}
    router.get("/Observation/o1").respond(200, json=observation(), headers=fhir)
    prelim = {**observation(), "id": "o2", "status": "preliminary"}
    router.get("/Observation/o2").respond(200, json=prelim, headers=fhir)
    app: Gateway = make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-in")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client
    await app.aclose()


async def test_a_read_is_judged_by_the_expression(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Patient/p1 permits final results only. The clinician reads the final one (released)
    and the preliminary one (same type, patient and labels: withheld, 404), alternately."""
    consent = r5_consent(decision="deny", provision=[{"expression": FINAL_ONLY}])
    created = await gateway.post("/fhir/Consent", json=consent, headers=tokens.patient("p1"))
    assert created.status_code == 201, created.text
    dr = tokens.bearer("dr", "user/Observation.rs", fhir_user=DR)
    statuses = [
        (await gateway.get(f"/fhir/Observation/{oid}", headers=dr)).status_code
        for oid in ("o1", "o2", "o1", "o2")
    ]
    assert statuses == [200, 404, 200, 404]


async def test_explain_names_the_expression(gateway: httpx.AsyncClient, tokens: Tokens) -> None:
    me = tokens.patient("p1")
    consent = r5_consent(decision="deny", provision=[{"expression": FINAL_ONLY}])
    assert (await gateway.post("/fhir/Consent", json=consent, headers=me)).status_code == 201
    query = {"principal": {"reference": DR}, "resource": observation()}
    answer = await gateway.post("/fhir/Consent/$explain", json=query, headers=me)
    assert answer.status_code == 200, answer.text
    assert answer.json()["effect"] == "permit"
    assert FINAL_ONLY["expression"] in answer.text


@pytest.mark.parametrize(
    ("expression", "issue"),
    [
        ({"language": "text/cql", "expression": "true"}, "only text/fhirpath"),
        ({"language": "text/fhirpath", "expression": "status = "}, "not valid FHIRPath"),
        ({"language": "text/fhirpath", "expression": "descendants().exists()"}, "descendants()"),
    ],
    ids=["language", "syntax", "refused-function"],
)
async def test_a_bad_expression_is_422_at_write(
    gateway: httpx.AsyncClient, tokens: Tokens, expression: dict[str, str], issue: str
) -> None:
    consent = r5_consent(decision="deny", provision=[{"expression": expression}])
    answer = await gateway.post("/fhir/Consent", json=consent, headers=tokens.patient("p1"))
    assert answer.status_code == 422
    assert "Consent.provision[0].expression" in answer.text
    assert issue in answer.text
