"""Through the gateway: a membership record shaped as no parser foresaw is an unresolved
membership (the consent naming it denies: the generic 404 for a read), never a 500, and
the failure is remembered (one upstream read, not one per request).

Before: a CareTeam whose ``status`` was an object raised TypeError, and a member of a type
the opaque id resolver refuses (``http://other/fhir/Organization2/x``) raised ValueError;
each answered 500 to every caller touching a consent naming that team.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.app.consenting import Tokens, observation
from tests.app.test_member_actors_escapes import (
    FHIR,
    ROLE,
    _client_ids,
    _deny,
    _profile,
    _roles,
)


def _team(status: object) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "id": "t1",
        "status": status,
        "participant": [{"member": {"reference": "Practitioner/dr9"}}],
    }


@pytest.mark.parametrize("status", [{"x": 1}, ["inactive"], 7], ids=["object", "list", "number"])
async def test_a_care_team_with_a_malformed_status_denies_with_the_generic_404(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tokens: Tokens,
    status: object,
) -> None:
    _roles(router)
    teams = router.get("/CareTeam/t1").respond(200, json=_team(status))
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny("Patient/p1", "CareTeam/t1"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text
        dr = tokens.bearer("dr1", "user/*.rs", fhir_user="Practitioner/dr1")
        for _ in range(2):
            got = await client.get("/fhir/Observation/o1", headers=dr)
            assert got.status_code == 404, got.text
    assert teams.call_count == 1  # the failure is remembered like any other


async def test_an_affiliation_of_a_type_the_resolver_refuses_denies_with_the_generic_404(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    """Mapped ids: a role's organization ``http://o/fhir/Organization2/x`` has no client id
    the resolver could issue (it raised ValueError): unresolved, so the consent denies."""
    role = {**ROLE, "practitioner": {"reference": "Practitioner/x1"}}
    role["organization"] = {"reference": "http://o/fhir/Organization2/x"}
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": role}]}
    roles = router.get("/PractitionerRole").respond(200, json=bundle, headers=FHIR)
    router.get("/Observation/o1").respond(200, json=observation(), headers=FHIR)
    async with make_client(mapping_profile=str(_profile(tmp_path))) as client:
        [org] = await _client_ids(client, router, "Organization", "x1")
        [dr] = await _client_ids(client, router, "Practitioner", "x1")
        [obs] = await _client_ids(client, router, "Observation")
        patient = (await client.get(f"/fhir/Observation/{obs}")).json()["subject"]["reference"]
        made = await client.post(
            "/fhir/Consent", json=_deny(patient, f"Organization/{org}"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text
        token = tokens.bearer("u", "user/*.rs", fhir_user=f"Practitioner/{dr}")
        got = await client.get(f"/fhir/Observation/{obs}", headers=token)
        assert got.status_code == 404, got.text
    assert roles.call_count == 1
