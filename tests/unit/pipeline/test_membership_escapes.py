"""Memberships a review found read as "not a member" (so a deny did not apply), each now a
member or unresolved; and the bounds on what one request may cost the upstream.

Each test names the escape it closes; each fails on the code before the fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx

from middleware.pipeline.memberships import MAX_PARTIES, Memberships
from middleware.proxy.httpx_upstream import HttpxUpstream
from middleware.proxy.membership_reads import UpstreamDirectory
from tests.unit.consent.builders import actor, policy, rule
from tests.unit.pipeline.test_memberships import (
    BASE,
    Clock,
    _bundle,
    _caller,
    _deny,
    _directory,
    _permit,
    _role,
    _verdict,
)


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=BASE)


def _team(*members: str, **extra: Any) -> dict[str, Any]:
    participants = [{"member": {"reference": m}} for m in members]
    return {"resourceType": "CareTeam", "participant": participants} | extra


async def test_a_person_linked_to_a_practitioner_of_a_denied_org_is_denied(
    router: respx.Router,
) -> None:
    """Escape: a Person user's link to a Practitioner was never followed to its roles."""
    router.get("/Person/x").respond(
        200,
        json={"resourceType": "Person", "link": [{"target": {"reference": "Practitioner/dr"}}]},
    )
    router.get("/PractitionerRole").respond(200, json=_bundle(_role("r", "Organization/org1")))
    router.route().respond(404)
    memberships = Memberships(_directory(router))
    assert not await _verdict(memberships, _caller("Person/x"), [_deny("Organization/org1")])
    assert await _verdict(memberships, _caller("Person/x"), [_deny("Organization/org2")])
    assert not await _verdict(memberships, _caller("Person/x"), [_deny("Practitioner/dr")])


async def test_a_member_on_another_base_is_a_member(router: respx.Router) -> None:
    """Escape: a participant given as an absolute URL on another base was dropped."""
    router.get("/PractitionerRole").respond(200, json=_bundle())
    router.get("/CareTeam/t").respond(
        200, json=_team("https://ehr.example/fhir/Practitioner/dr/_history/3")
    )
    memberships = Memberships(_directory(router))
    assert not await _verdict(memberships, _caller("Practitioner/dr"), [_deny("CareTeam/t")])
    assert await _verdict(memberships, _caller("Practitioner/dr2"), [_deny("CareTeam/t")])


@pytest.mark.parametrize(
    "organization",
    [
        {"identifier": {"system": "urn:oid:1", "value": "A"}},
        {"display": "Org one"},
        {"reference": "#contained"},
        "Organization/org1",
    ],
)
async def test_an_organization_given_by_no_literal_reference_is_unresolved(
    router: respx.Router, organization: object
) -> None:
    """Escape: a role's organization by identifier only was dropped: "not a member"."""
    role = {"resourceType": "PractitionerRole", "id": "r", "organization": organization}
    router.get("/PractitionerRole").respond(200, json=_bundle(role))
    memberships = Memberships(_directory(router))
    caller = _caller("Practitioner/dr")
    assert not await _verdict(memberships, caller, [_deny("Organization/org1")])
    assert not await _verdict(memberships, caller, [_permit("Organization/org1")])


async def test_a_member_of_a_nested_team_is_a_member(router: respx.Router) -> None:
    """Escape: a care team inside the denied care team was never read."""
    router.get("/PractitionerRole").respond(200, json=_bundle())
    router.get("/CareTeam/t").respond(200, json=_team("CareTeam/sub"))
    router.get("/CareTeam/sub").respond(200, json=_team("Practitioner/dr"))
    router.get("/Group/g").respond(
        200, json={"resourceType": "Group", "member": [{"entity": {"reference": "Group/h"}}]}
    )
    router.get("/Group/h").respond(
        200, json={"resourceType": "Group", "member": [{"entity": {"reference": "Group/i"}}]}
    )
    memberships = Memberships(_directory(router))
    assert not await _verdict(memberships, _caller("Practitioner/dr"), [_deny("CareTeam/t")])
    assert await _verdict(memberships, _caller("Practitioner/dr2"), [_deny("CareTeam/t")])
    # deeper than one level: unresolved, so a deny
    assert not await _verdict(memberships, _caller("Practitioner/dr"), [_deny("Group/g")])


@pytest.mark.parametrize(
    "team",
    [
        _team("Practitioner/dr", status="inactive"),
        _team("Practitioner/dr", status="entered-in-error"),
        {
            "resourceType": "Group",
            "active": False,
            "member": [{"entity": {"reference": "Practitioner/dr"}}],
        },
    ],
)
async def test_an_inactive_team_grants_no_permit_and_keeps_its_deny(
    router: respx.Router, team: dict[str, Any]
) -> None:
    """Escape: members of an inactive team were granted its permit. Decided: a member of
    an inactive team is denied by a consent naming it (permit or deny), others are not."""
    party = f"{team['resourceType']}/t"
    router.get("/PractitionerRole").respond(200, json=_bundle())
    router.get(f"/{party}").respond(200, json=team)
    memberships = Memberships(_directory(router), unresolved="unavailable")
    caller = _caller("Practitioner/dr")
    assert not await _verdict(memberships, caller, [_permit(party)], jurisdiction="opt-in")
    assert not await _verdict(memberships, caller, [_deny(party)])
    assert await _verdict(memberships, _caller("Practitioner/dr2"), [_deny(party)])


async def test_reads_are_capped_concurrent_and_shared() -> None:
    """Escape (cost): a consent naming many teams made one sequential read each, and
    concurrent misses of one record each read it."""
    in_flight = 0
    most = 0
    teams: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        if "PractitionerRole" in request.url.path:
            return httpx.Response(200, json=_bundle())
        teams.append(request.url.path)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json=_team("Practitioner/other"))

    upstream = HttpxUpstream.from_transport(httpx.MockTransport(slow))

    def directory() -> UpstreamDirectory:
        return UpstreamDirectory(lambda: upstream, base=BASE, clock=Clock())

    memberships = Memberships(directory())
    parties = [actor(f"CareTeam/t{i}") for i in range(100)]
    consents = [policy("R4", "permit", rule(actor=parties))]
    assert not await _verdict(memberships, _caller("Practitioner/dr"), consents)
    assert len(teams) == MAX_PARTIES
    assert 1 < most <= 4
    # five requests missing the same record at once: one read
    teams.clear()
    fresh = Memberships(directory())
    await asyncio.gather(
        *(_verdict(fresh, _caller("Practitioner/dr"), [_deny("CareTeam/one")]) for _ in range(5))
    )
    assert teams == ["/fhir/CareTeam/one"]


async def test_one_deadline_for_the_whole_lookup() -> None:
    """Escape (cost): each read had its own timeout, so many slow reads added up."""

    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(200, json=_team("Practitioner/dr"))

    upstream = HttpxUpstream.from_transport(httpx.MockTransport(stall))
    directory = UpstreamDirectory(lambda: upstream, base=BASE, clock=Clock(), timeout=1.0)
    memberships = Memberships(directory, deadline=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await _verdict(
        memberships, _caller("CareTeam/x"), [_permit("CareTeam/t")], jurisdiction="opt-in"
    )
    assert loop.time() - started < 0.15
