"""Through the gateway: ways a member of a denied party escaped the deny, each closed.

* Logging in as the PractitionerRole of a denied Practitioner (or of a member of a denied
  CareTeam): the role's practitioner was never among the caller's affiliations (200).
* Mapped ids (an opaque resolver): consents and tokens speak client ids, the membership
  reads sent them to the upstream and read "not a member" (200). Now they are asked in the
  upstream's ids and answered in the client's; an id not issued is unresolved: deny.
* Fan-out: a consent naming 3,000 care teams made 3,000 sequential upstream reads on one
  request of another practitioner. Now at most the per-request cap, and the consent denies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import respx

from middleware.pipeline.memberships import MAX_PARTIES
from tests.app.consenting import Tokens, observation
from tests.unit.consent.builders import actor

FHIR = {"content-type": "application/fhir+json"}
ROLE: dict[str, Any] = {
    "resourceType": "PractitionerRole",
    "id": "r1",
    "practitioner": {"reference": "Practitioner/dr1"},
    "organization": {"reference": "Organization/org1"},
}


def _deny(patient: str, *parties: str) -> dict[str, Any]:
    """R5: permit by default, deny ``parties``."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": patient},
        "decision": "permit",
        "provision": [{"actor": [actor(party) for party in parties]}],
    }


def _roles(router: respx.Router) -> None:
    router.get("/Observation/o1").respond(200, json=observation())
    router.get("/PractitionerRole/r1").respond(200, json=ROLE)
    router.get("/PractitionerRole").respond(
        200, json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": ROLE}]}
    )


async def _both(client: httpx.AsyncClient, tokens: Tokens) -> tuple[int, int]:
    as_practitioner = tokens.bearer("dr1", "user/*.rs", fhir_user="Practitioner/dr1")
    as_role = tokens.bearer("dr1", "user/*.rs", fhir_user="PractitionerRole/r1")
    a = await client.get("/fhir/Observation/o1", headers=as_practitioner)
    b = await client.get("/fhir/Observation/o1", headers=as_role)
    return a.status_code, b.status_code


async def test_a_role_login_does_not_escape_a_deny_of_its_practitioner(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    _roles(router)
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny("Patient/p1", "Practitioner/dr1"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text
        assert await _both(client, tokens) == (404, 404)
        other = tokens.bearer("dr2", "user/*.rs", fhir_user="Practitioner/dr2")
        assert (await client.get("/fhir/Observation/o1", headers=other)).status_code == 200


async def test_a_role_login_does_not_escape_a_deny_of_a_care_team_of_its_practitioner(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    _roles(router)
    team = {
        "resourceType": "CareTeam",
        "id": "t1",
        "participant": [{"member": {"reference": "Practitioner/dr1"}}],
    }
    router.get("/CareTeam/t1").respond(200, json=team)
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny("Patient/p1", "CareTeam/t1"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text
        assert await _both(client, tokens) == (404, 404)


def _profile(tmp_path: Path) -> Path:
    profiles = tmp_path / "mappings" / "profiles"
    profiles.mkdir(parents=True)
    path = profiles / "ids-only.json"
    profile = {
        "id": "ids-only",
        "upstream": "hospital",
        "fhir": {"client": "R4", "upstream": "R4"},
        "patients": {"resolver": "opaque"},
    }
    path.write_text(json.dumps(profile))
    return path


async def _client_ids(
    client: httpx.AsyncClient, router: respx.Router, rtype: str, *local: str
) -> list[str]:
    """The client ids the gateway issues for ``rtype``'s upstream records (a search)."""
    found = (
        [observation()]
        if rtype == "Observation"
        else [{"resourceType": rtype, "id": i} for i in local]
    )
    router.get(f"/{rtype}").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in found],
        },
        headers=FHIR,
    )
    bundle = (await client.get(f"/fhir/{rtype}?name=x")).json()
    return [str(entry["resource"]["id"]) for entry in bundle["entry"]]


async def test_mapped_ids_are_translated_both_ways_for_memberships(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    """The upstream knows dr1 (its id x1) in org1 (x1); the consent and the token name the
    client's ids. Before: the roles were asked for the client id, none found, "not a member"
    (200). Now asked in the upstream's id and the answer compared in the client's."""
    router.get("/Observation/o1").respond(200, json=observation(), headers=FHIR)
    asked: list[str | None] = []

    def roles(request: httpx.Request) -> httpx.Response:
        practitioner = request.url.params.get("practitioner")
        asked.append(practitioner)
        role = {**ROLE, "practitioner": {"reference": "Practitioner/x1"}}
        role["organization"] = {"reference": "Organization/x1"}
        entry = [{"resource": role}] if practitioner == "Practitioner/x1" else []
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entry}
        return httpx.Response(200, json=bundle)

    router.get("/PractitionerRole").mock(side_effect=roles)
    async with make_client(mapping_profile=str(_profile(tmp_path))) as client:
        [org] = await _client_ids(client, router, "Organization", "x1")
        dr1, dr2 = await _client_ids(client, router, "Practitioner", "x1", "x2")
        [obs] = await _client_ids(client, router, "Observation")
        patient = (await client.get(f"/fhir/Observation/{obs}")).json()["subject"]["reference"]
        made = await client.post(
            "/fhir/Consent", json=_deny(patient, f"Organization/{org}"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text

        async def status(fhir_user: str, **claims: str) -> int:
            token = tokens.bearer("u", "user/*.rs", fhir_user=fhir_user, **claims)
            return (await client.get(f"/fhir/Observation/{obs}", headers=token)).status_code

        assert await status(f"Practitioner/{dr1}", organization=f"Organization/{org}") == 404
        assert await status(f"Practitioner/{dr1}") == 404  # known only through the upstream
        assert await status(f"Practitioner/{dr2}") == 200  # the control: not of org1
        # an id the gateway never issued cannot be asked about: unresolved, so denied
        assert await status("Practitioner/never-issued") == 404
    assert set(asked) == {"Practitioner/x1", "Practitioner/x2"}  # never a client id


async def test_a_consent_naming_thousands_of_teams_costs_at_most_the_cap(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    router.get("/Observation/o1").respond(200, json=observation())
    router.get("/PractitionerRole").respond(
        200, json={"resourceType": "Bundle", "type": "searchset"}
    )
    teams = router.get(url__regex=r".*/CareTeam/.*").respond(404)
    parties = [f"CareTeam/t{i}" for i in range(3000)]
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny("Patient/p1", *parties), headers=tokens.patient("p1")
        )
        assert made.status_code == 201, made.text
        dr = tokens.bearer("dr2", "user/*.rs", fhir_user="Practitioner/dr2")
        got = await client.get("/fhir/Observation/o1", headers=dr)
    assert teams.call_count <= MAX_PARTIES
    assert got.status_code == 404  # the teams beyond the cap are unresolved: deny
