"""Memberships remembers a lookup while every answer it used holds: the same result as the
lookup itself, on random directories changing under random clocks (equivalence), and it
is dropped when a cached read expires or a period in it starts or ends.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
import respx

from middleware.consent.model import Policy
from middleware.pipeline.memberships import Memberships
from tests.unit.consent.builders import actor, policy, rule
from tests.unit.pipeline.test_memberships import BASE, PATIENT, Clock, _caller, _directory

ORGS = ["Organization/org1", "Organization/org2", "Organization/org3"]
TEAMS = ["CareTeam/t1", "CareTeam/t2"]
USERS = ["Practitioner/dr", "PractitionerRole/r1", "Person/x", "Patient/p1"]
MOMENTS = ["2023-11-14T22:20:00Z", "2023-11-14T22:40:00Z", "2023-11-14T23:30:00Z"]


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=BASE)


def _period(rng: random.Random) -> dict[str, str] | None:
    if rng.random() < 0.5:
        return None
    return {rng.choice(["start", "end"]): rng.choice(MOMENTS)}


def _state(rng: random.Random) -> dict[str, Any]:
    roles = [
        {
            "resourceType": "PractitionerRole",
            "id": f"r{i}",
            "practitioner": {"reference": "Practitioner/dr"},
            "organization": {"reference": rng.choice(ORGS)},
        }
        | ({"period": p} if (p := _period(rng)) else {})
        for i in range(1, rng.randint(1, 3) + 1)
    ]
    teams = {
        team: {
            "resourceType": "CareTeam",
            "status": rng.choice(["active", "inactive"]),
            "participant": [
                {"member": {"reference": rng.choice(USERS + ORGS)}}
                | ({"period": p} if (p := _period(rng)) else {})
            ],
        }
        for team in TEAMS
    }
    return {"roles": roles, "teams": teams, "parents": {o: rng.choice(ORGS) for o in ORGS}}


def _routes(router: respx.Router, state: dict[str, Any]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/")
        if path == "PractitionerRole":
            entries = [{"resource": r} for r in state["roles"]]
            return httpx.Response(200, json={"resourceType": "Bundle", "entry": entries})
        if path == "PractitionerRole/r1":
            return httpx.Response(200, json=state["roles"][0])
        if path == "Person/x":
            link = [{"target": {"reference": "Practitioner/dr"}}]
            return httpx.Response(200, json={"resourceType": "Person", "link": link})
        if path in state["teams"]:
            return httpx.Response(200, json=state["teams"][path])
        if path in state["parents"] and path != state["parents"][path]:
            parent = {"reference": state["parents"][path]}
            return httpx.Response(200, json={"resourceType": "Organization", "partOf": parent})
        return httpx.Response(404)

    router.route().mock(side_effect=answer)


#: Few enough that lookups repeat (and are remembered) often.
NAMED = [["Organization/org1"], ["Organization/org3", "CareTeam/t1"], ["CareTeam/t2"]]
NAMED += [["Practitioner/dr", "Organization/org2"]]


def _consents(rng: random.Random) -> list[Policy]:
    return [policy("R4", "permit", rule(actor=[actor(p) for p in rng.choice(NAMED)]))]


@pytest.mark.parametrize("seed", range(5))
async def test_remembered_equals_looked_up(seed: int) -> None:
    rng = random.Random(seed)
    state = _state(rng)
    router = respx.Router(assert_all_called=False, base_url=BASE)
    _routes(router, state)
    clock, wall = Clock(), Clock()
    wall.now = 1_700_000_000.0  # 2023-11-14T22:13:20Z, before the moments
    directory = _directory(router, clock, wall_clock=wall, ttl=60.0)
    remembering = Memberships(directory)
    looking = Memberships(directory)
    for _ in range(100):
        roll = rng.random()
        if roll < 0.1:
            state.update(_state(rng))
        elif roll < 0.3:
            clock.now += rng.choice([1.0, 30.0, 61.0])
        elif roll < 0.4:
            wall.now += rng.choice([300.0, 900.0])  # a period may start or end, cache held
        caller = _caller(rng.choice(USERS))
        policies = {PATIENT: tuple(_consents(rng))}
        looking._memo.clear()
        expected = await looking.widen(caller, policies)
        got = await remembering.widen(caller, policies)
        assert got[0].principal == expected[0].principal
        assert got[1] == expected[1]


async def test_a_remembered_lookup_ends_with_the_cached_read(router: respx.Router) -> None:
    """The memo never outlives the cache: a role moved upstream counts once the read it
    used expires (the same moment as without the memo)."""
    clock = Clock()
    org = {"reference": "Organization/org1"}
    role = {"resourceType": "PractitionerRole", "id": "r", "organization": org}
    route = router.get("/PractitionerRole").respond(
        200, json={"resourceType": "Bundle", "entry": [{"resource": role}]}
    )
    router.route().respond(404)
    memberships = Memberships(_directory(router, clock, ttl=60.0))
    caller = _caller("Practitioner/dr")
    named = policy("R4", "permit", rule(actor=[actor("Organization/org1")]))
    policies: dict[str, tuple[Policy, ...]] = {PATIENT: (named,)}
    widened, _ = await memberships.widen(caller, policies)
    assert "Organization/org1" in widened.principal.memberships
    role["organization"] = {"reference": "Organization/org2"}
    route.respond(200, json={"resourceType": "Bundle", "entry": [{"resource": role}]})
    clock.now += 59.0
    widened, _ = await memberships.widen(caller, policies)
    assert "Organization/org1" in widened.principal.memberships
    clock.now += 1.0
    widened, _ = await memberships.widen(caller, policies)
    assert "Organization/org1" not in widened.principal.memberships
