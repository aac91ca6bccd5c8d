"""Through the gateway: a patient's consent denying an organization keeps its practitioners
out, whether the token says the organization or the upstream's PractitionerRoles do.

The leak: ``pipeline/caller.py`` never set memberships and nothing looked them up, so a
consent denying ``Organization/org1`` had no effect (200). Now a practitioner of org1 reads
the generic 404 and finds nothing in a search; a practitioner of org2 still reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import respx

from tests.app.consenting import Tokens, observation
from tests.unit.consent.builders import actor

SEARCH = "/fhir/Observation?patient=Patient/p1"


def _deny_org(org: str) -> dict[str, Any]:
    """R5: permit by default, deny the organization's staff."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "decision": "permit",
        "provision": [{"actor": [actor(org)]}],
    }


def _roles(org: str) -> dict[str, Any]:
    role = {"resourceType": "PractitionerRole", "id": "r", "organization": {"reference": org}}
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": role}]}


def _records(router: respx.Router) -> None:
    router.get("/Observation/o1").respond(200, json=observation())
    router.get("/Observation").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": observation()}],
        },
    )


def _upstream(router: respx.Router) -> respx.Route:
    _records(router)
    # org2 is part of nothing: org1 is not above it (Organization.partOf)
    router.get("/Organization/org2").respond(200, json={"resourceType": "Organization"})
    roles = router.get("/PractitionerRole")
    roles.side_effect = lambda request: httpx.Response(
        200,
        json=_roles(
            "Organization/org1"
            if request.url.params["practitioner"] == "Practitioner/dr1"
            else "Organization/org2"
        ),
    )
    return roles


def _clinician(tokens: Tokens, who: str, **claims: Any) -> dict[str, str]:
    return tokens.bearer(who, "user/*.rs", fhir_user=f"Practitioner/{who}", **claims)


async def _seen(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, int]:
    read = await client.get("/fhir/Observation/o1", headers=headers)
    search = await client.get(SEARCH, headers=headers)
    assert search.status_code == 200
    return read.status_code, len(search.json().get("entry", []))


async def test_an_organization_denied_by_consent_sees_nothing_of_the_patient(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    roles = _upstream(router)
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny_org("Organization/org1"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text
        # org1's practitioner, known as such from the upstream's PractitionerRole: generic
        # 404 on read, nothing in a search
        assert await _seen(client, _clinician(tokens, "dr1")) == (404, 0)
        # org2's practitioner still reads
        assert await _seen(client, _clinician(tokens, "dr2")) == (200, 1)
        # a token naming org1 is enough, whatever the upstream says
        named = _clinician(tokens, "dr2", organization="Organization/org1")
        assert await _seen(client, named) == (404, 0)
    assert roles.called
    sent = roles.calls[0].request
    assert "authorization" not in sent.headers  # the gateway's own read, not the caller's


async def test_an_unreadable_membership_is_a_deny(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    _records(router)
    roles = router.get("/PractitionerRole").respond(503)
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny_org("Organization/org1"), headers=tokens.admin()
        )
        assert made.status_code == 201
        # nobody's membership of org1 can be told: the deny holds for every practitioner
        for who in ("dr1", "dr2"):
            assert await _seen(client, _clinician(tokens, who)) == (404, 0)
    async with make_client(membership_unresolved="unavailable") as client:
        await client.post(
            "/fhir/Consent", json=_deny_org("Organization/org1"), headers=tokens.admin()
        )
        answer = await client.get("/fhir/Observation/o1", headers=_clinician(tokens, "dr2"))
        assert answer.status_code == 503
    assert roles.call_count >= 2  # a failure is not cached: asked again each time
