"""A search's ``_include``/``_revinclude`` releases a resource outside the Patient compartment
only beside a released resource it is linked to.

The setting: Patient/p1 denies Practitioner/dr, p2 has no consent (opt-out: permit). The
attack: the doctor searches p1's results with ``_include=Observation:performer``; the
results are withheld, but the opioid treatment clinic that performed them was released on the
doctor's scopes alone: what p1's withheld records say, by association."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.consenting import DEV_ISSUER, Tokens, r5_consent

DR = "Practitioner/dr"
JSON = {"content-type": "application/fhir+json"}
CLINIC = {"resourceType": "Organization", "id": "sud-clinic", "name": "Opioid Treatment Program"}
LAB = {"resourceType": "Organization", "id": "lab", "name": "Main Lab"}


def result(rid: str, patient: str, performer: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"text": "methadone level"},
        "subject": {"reference": patient},
        "performer": [{"reference": performer}],
    }


def page(*entries: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": mode}} for r, mode in entries],
    }


def names(answer: httpx.Response) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in answer.json().get("entry", [])
    }


@pytest.fixture
async def client(
    make_client: Callable[..., httpx.AsyncClient], dev_key_file: Path
) -> AsyncIterator[httpx.AsyncClient]:
    tokens = Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))
    async with make_client() as http:
        denial = r5_consent(
            "Patient/p1", "permit", provision=[{"actor": [{"reference": {"reference": DR}}]}]
        )
        created = await http.post("/fhir/Consent", json=denial, headers=tokens.patient("p1"))
        assert created.status_code == 201, created.text
        http.headers.update(tokens.bearer("dr", "user/*.rs", fhir_user=DR))
        yield http


async def test_an_included_resource_of_withheld_matches_alone_is_dropped(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/Observation").respond(
        200,
        json=page(
            (result("o-p1", "Patient/p1", "Organization/sud-clinic"), "match"), (CLINIC, "include")
        ),
        headers=JSON,
    )
    answer = await client.get("/fhir/Observation?patient=Patient/p1&_include=Observation:performer")
    assert answer.status_code == 200
    assert names(answer) == set()
    assert "Opioid" not in answer.text


async def test_an_included_resource_is_released_beside_the_released_match_naming_it(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """p1's and p2's results together: the lab p2's result names stays, the clinic only p1's
    withheld result names goes."""
    router.get("/Observation").respond(
        200,
        json=page(
            (result("o-p1", "Patient/p1", "Organization/sud-clinic"), "match"),
            (result("o-p2", "Patient/p2", "Organization/lab"), "match"),
            (CLINIC, "include"),
            (LAB, "include"),
        ),
        headers=JSON,
    )
    answer = await client.get("/fhir/Observation?_include=Observation:performer")
    assert answer.status_code == 200
    assert names(answer) == {"Observation/o-p2", "Organization/lab"}


async def test_a_revincluded_resource_naming_a_released_match_is_released(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """``Organization?_revinclude=...``: matches outside the compartment are released as
    they are; an included resource that names one of them stays."""
    affiliation = {
        "resourceType": "OrganizationAffiliation",
        "id": "aff",
        "organization": {"reference": "Organization/lab"},
    }
    router.get("/Organization").respond(
        200, json=page((LAB, "match"), (affiliation, "include")), headers=JSON
    )
    answer = await client.get(
        "/fhir/Organization?_revinclude=OrganizationAffiliation:primary-organization"
    )
    assert answer.status_code == 200
    assert names(answer) == {"Organization/lab", "OrganizationAffiliation/aff"}
