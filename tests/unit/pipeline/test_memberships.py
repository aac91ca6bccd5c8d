"""Memberships looked up on the upstream where a consent names a party the token does not.

The leak this closes: a consent denying ``Organization/org1`` did nothing to a practitioner
of that organization whose token does not say so. Here the gateway reads the practitioner's
roles (and care teams, groups, a Person's links) from the upstream (respx, through the
gateway's own client and headers), only when a consent of a patient being decided names such
a party; answers are cached for a bounded time and count; what cannot be read is decided as
configured, never as "not a member" of a deny.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.consent.decide import Defaults
from middleware.consent.model import Policy
from middleware.consent.parse import parse_consent
from middleware.errors import ServiceUnavailable
from middleware.pipeline.breakglass import forbids_break_glass
from middleware.pipeline.caller import ACTION_ACCESS, Caller, caller_of
from middleware.pipeline.judge import Trail
from middleware.pipeline.judging import Judging
from middleware.pipeline.memberships import Memberships, Unresolved, named_parties
from middleware.proxy.httpx_upstream import HttpxUpstream
from middleware.proxy.membership_reads import FAILURE_SECONDS, UpstreamDirectory
from tests.unit.consent.builders import actor, consent, policy, rule

BASE = "http://up.example/fhir"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PATIENT = "Patient/p1"
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "subject": {"reference": PATIENT},
}


def _caller(fhir_user: str | None, **extra: Any) -> Caller:
    identity = Identity(
        subject="s",
        issuer="https://idp",
        expires_at=4e9,
        scopes=parse_scopes("user/*.rs system/*.rs").scopes,
        fhir_user=fhir_user,
        **extra,
    )
    return caller_of(identity)


def _bundle(*roles: dict[str, Any], next_page: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in roles],
    }
    if next_page:
        body["link"] = [{"relation": "next", "url": f"{BASE}/PractitionerRole?page=2"}]
    return body


def _role(rid: str, org: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "PractitionerRole",
        "id": rid,
        "practitioner": {"reference": "Practitioner/dr"},
        "organization": {"reference": org},
    } | extra


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=BASE)


def _directory(
    router: respx.Router, clock: Clock | None = None, **kwargs: Any
) -> UpstreamDirectory:
    upstream = HttpxUpstream.from_transport(httpx.MockTransport(router.handler))
    return UpstreamDirectory(
        lambda: upstream,
        base=BASE,
        headers={"Authorization": "Bearer gateway"},
        clock=clock or Clock(),
        **kwargs,
    )


async def _verdict(
    memberships: Memberships,
    caller: Caller,
    consents: list[Policy],
    jurisdiction: str = "opt-out",
    purpose: str | None = None,
) -> bool:
    async def policies(patient: str) -> tuple[Policy, ...]:
        return tuple(consents) if patient == PATIENT else ()

    judging = Judging(
        policies=policies,
        defaults=Defaults(jurisdiction=jurisdiction),  # type: ignore[arg-type]
        base_urls=(BASE,),
        allow_unknown=frozenset(),
        wall_clock=lambda: 1.7e9,
        break_glass=None,
        memberships=memberships,
    )
    document = dict(OBSERVATION)
    if purpose is not None:
        caller = dataclasses.replace(caller, purposes=frozenset({(ACT_REASON, purpose)}))
    judge = await judging.judge(caller, ACTION_ACCESS, document, Trail())
    return judge.allowed(document)


def _deny(party: str, **kwargs: Any) -> Policy:
    """Opt-out consent denying ``party`` (R4, so the provision states its type)."""
    return policy("R4", "permit", rule(actor=[actor(party)]), **kwargs)


def _permit(party: str) -> Policy:
    return policy("R4", "deny", rule(actor=[actor(party)]))


# -- each kind of party: a member is decided by the consent, a non-member is not -------------

ORG_ROLES = _bundle(_role("r1", "Organization/org1"), _role("r2", f"{BASE}/Organization/org3"))


@pytest.mark.parametrize(
    ("party", "user", "routes", "member"),
    [
        # a practitioner's roles and their organizations (relative and absolute references)
        ("Organization/org1", "Practitioner/dr", {"PractitionerRole": ORG_ROLES}, True),
        ("Organization/org3", "Practitioner/dr", {"PractitionerRole": ORG_ROLES}, True),
        ("Organization/org2", "Practitioner/dr", {"PractitionerRole": ORG_ROLES}, False),
        ("PractitionerRole/r2", "Practitioner/dr", {"PractitionerRole": ORG_ROLES}, True),
        # an inactive role makes no member
        (
            "Organization/org1",
            "Practitioner/dr",
            {"PractitionerRole": _bundle(_role("r1", "Organization/org1", active=False))},
            False,
        ),
        # a user acting in one role is of that role's organization, and acts as its
        # practitioner (of the practitioner's other roles' organizations too)
        (
            "Organization/org1",
            "PractitionerRole/r1",
            {"PractitionerRole/r1": _role("r1", "Organization/org1")},
            True,
        ),
        (
            "Organization/org3",
            "PractitionerRole/r1",
            {"PractitionerRole/r1": _role("r1", "Organization/org1")},
            False,
        ),
        (
            "Practitioner/dr",
            "PractitionerRole/r1",
            {"PractitionerRole/r1": _role("r1", "Organization/org1")},
            True,
        ),
        (
            "Organization/org3",
            "PractitionerRole/r1",
            {
                "PractitionerRole/r1": _role("r1", "Organization/org1"),
                "PractitionerRole": ORG_ROLES,
            },
            True,
        ),
        # care teams: a participant that is the user, one of its roles or organizations
        (
            "CareTeam/ct1",
            "Practitioner/dr",
            {
                "PractitionerRole": _bundle(),
                "CareTeam/ct1": {
                    "resourceType": "CareTeam",
                    "id": "ct1",
                    "participant": [{"member": {"reference": "Practitioner/dr"}}],
                },
            },
            True,
        ),
        (
            "CareTeam/ct1",
            "Practitioner/dr",
            {
                "PractitionerRole": ORG_ROLES,
                "CareTeam/ct1": {
                    "resourceType": "CareTeam",
                    "participant": [{"member": {"reference": "PractitionerRole/r1"}}],
                },
            },
            True,
        ),
        (
            "CareTeam/ct1",
            "Practitioner/dr",
            {
                "PractitionerRole": ORG_ROLES,
                "CareTeam/ct1": {
                    "resourceType": "CareTeam",
                    "participant": [{"member": {"reference": "Practitioner/other"}}],
                },
            },
            False,
        ),
        ("CareTeam/ct1", "Practitioner/dr", {"PractitionerRole": _bundle()}, False),  # 404
        # groups: an inactive member is none
        (
            "Group/g1",
            "Practitioner/dr",
            {
                "PractitionerRole": _bundle(),
                "Group/g1": {
                    "resourceType": "Group",
                    "member": [{"entity": {"reference": "Practitioner/dr"}}],
                },
            },
            True,
        ),
        (
            "Group/g1",
            "Practitioner/dr",
            {
                "PractitionerRole": _bundle(),
                "Group/g1": {
                    "resourceType": "Group",
                    "member": [{"entity": {"reference": "Practitioner/dr"}, "inactive": True}],
                },
            },
            False,
        ),
        # a Person user linked to a RelatedPerson record
        (
            "RelatedPerson/rp1",
            "Person/x",
            {
                "Person/x": {
                    "resourceType": "Person",
                    "link": [{"target": {"reference": "RelatedPerson/rp1"}}],
                }
            },
            True,
        ),
        (
            "RelatedPerson/rp1",
            "Person/y",
            {"Person/y": {"resourceType": "Person", "link": []}},
            False,
        ),
    ],
    ids=[
        "org-via-role",
        "org-absolute-ref",
        "org-not-of-user",
        "role-of-user",
        "inactive-role",
        "role-user-org",
        "role-user-other-org",
        "role-user-practitioner",
        "role-user-practitioner-other-role",
        "careteam-names-user",
        "careteam-names-role",
        "careteam-other",
        "careteam-missing",
        "group-member",
        "group-inactive",
        "person-related",
        "person-unrelated",
    ],
)
async def test_a_deny_and_a_permit_naming_a_party_follow_the_upstream(
    router: respx.Router, party: str, user: str, routes: dict[str, Any], member: bool
) -> None:
    for path, body in routes.items():
        router.get(f"/{path}").respond(200, json=body)
    router.route().respond(404)
    memberships = Memberships(_directory(router))
    caller = _caller(user)
    # deny under opt-out: withheld from a member only
    assert await _verdict(memberships, caller, [_deny(party)]) is not member
    # permit under opt-in: released to a member only
    assert await _verdict(memberships, caller, [_permit(party)], "opt-in") is member
    sent = router.calls[0].request
    assert sent.headers["authorization"] == "Bearer gateway"  # the gateway's, not a client's


async def test_no_read_when_no_consent_names_a_party(router: respx.Router) -> None:
    route = router.route().respond(500)
    memberships = Memberships(_directory(router))
    caller = _caller("Practitioner/dr")
    assert await _verdict(memberships, caller, [_deny("Practitioner/other")])
    assert not await _verdict(memberships, caller, [_deny("Practitioner/dr")])
    assert await _verdict(memberships, caller, [])
    assert route.call_count == 0


async def test_no_read_when_the_token_already_says(router: respx.Router) -> None:
    route = router.route().respond(500)
    memberships = Memberships(_directory(router))
    caller = _caller("Practitioner/dr", organization="Organization/org1")
    assert not await _verdict(memberships, caller, [_deny("Organization/org1")])
    assert route.call_count == 0


# -- cache: bounded in time and size -----------------------------------------------------------


async def test_answers_are_cached_until_they_expire(router: respx.Router) -> None:
    route = router.get("/PractitionerRole").respond(200, json=ORG_ROLES)
    clock = Clock()
    memberships = Memberships(_directory(router, clock, ttl=60.0))
    caller = _caller("Practitioner/dr")
    for _ in range(3):
        assert not await _verdict(memberships, caller, [_deny("Organization/org1")])
    assert route.call_count == 1
    # the role ends upstream; within the lifetime the cached answer stands, then it is re-read
    route.respond(200, json=_bundle())
    clock.now += 59
    assert not await _verdict(memberships, caller, [_deny("Organization/org1")])
    clock.now += 2
    assert await _verdict(memberships, caller, [_deny("Organization/org1")])
    assert route.call_count == 2


async def test_the_cache_holds_at_most_its_size(router: respx.Router) -> None:
    router.route().respond(200, json={"resourceType": "CareTeam"})
    directory = _directory(router, size=2)
    for name in ("a", "b", "c"):
        await directory.members(f"CareTeam/{name}")
    assert len(directory._cache) == 2
    assert len(router.calls) == 3
    await directory.members("CareTeam/a")  # evicted: read again
    assert len(router.calls) == 4


# -- fail closed -------------------------------------------------------------------------------


def _failures() -> list[tuple[str, Any]]:
    return [
        ("server-error", httpx.Response(500)),
        ("forbidden", httpx.Response(403)),
        ("not-json", httpx.Response(200, content=b"<html>")),
        ("wrong-type", httpx.Response(200, json={"resourceType": "OperationOutcome"})),
        ("next-page", httpx.Response(200, json=_bundle(next_page=True))),
        ("connect-error", httpx.ConnectError("refused")),
        ("timeout", httpx.ReadTimeout("slow")),
    ]


@pytest.mark.parametrize(("name", "answer"), _failures(), ids=[f[0] for f in _failures()])
async def test_an_unreadable_membership_never_escapes_a_deny(
    router: respx.Router, name: str, answer: Any
) -> None:
    """The attack: make the upstream slow or wrong (or be a practitioner with many roles)
    and a deny naming your organization would be read as "not a member"."""
    if isinstance(answer, Exception):
        router.route().mock(side_effect=answer)
    else:
        router.route().mock(return_value=answer)
    caller = _caller("Practitioner/dr")
    memberships = Memberships(_directory(router))
    deny = _deny("Organization/org1", consent_id="c-deny")
    assert not await _verdict(memberships, caller, [deny])
    # and a permit naming the party is not granted on an unknown membership
    assert not await _verdict(memberships, caller, [_permit("Organization/org1")], "opt-in")
    # the consent that could not be decided is named as the one relied on
    policies: dict[str, tuple[Policy, ...]] = {PATIENT: (deny,)}
    widened, decided = await memberships.widen(caller, policies)
    assert widened is caller
    assert [p.consent_id for p in decided[PATIENT]] == ["c-deny"]
    assert "membership unresolved" in decided[PATIENT][0].root.path
    # under "unavailable", the exchange is refused instead
    strict = Memberships(_directory(router), unresolved="unavailable")
    with pytest.raises(ServiceUnavailable):
        await _verdict(strict, caller, [deny])


async def test_a_slow_upstream_is_cut_at_the_timeout() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=ORG_ROLES)

    upstream = HttpxUpstream.from_transport(httpx.MockTransport(slow))
    directory = UpstreamDirectory(lambda: upstream, base=BASE, clock=Clock(), timeout=0.05)
    started = time.monotonic()
    with pytest.raises(Unresolved):
        await directory.affiliations("Practitioner/dr")
    assert time.monotonic() - started < 2


async def test_failures_are_remembered_briefly(router: respx.Router) -> None:
    """A party nobody can read costs the upstream one read per FAILURE_SECONDS, not one
    per request; afterwards it is read again."""
    route = router.get("/PractitionerRole").respond(500)
    clock = Clock()
    memberships = Memberships(_directory(router, clock))
    caller = _caller("Practitioner/dr")
    assert not await _verdict(memberships, caller, [_deny("Organization/org1")])
    route.respond(200, json=_bundle())
    assert not await _verdict(memberships, caller, [_deny("Organization/org1")])
    assert route.call_count == 1
    clock.now += FAILURE_SECONDS
    assert await _verdict(memberships, caller, [_deny("Organization/org1")])
    assert route.call_count == 2


async def test_a_consent_of_other_parties_is_untouched_by_an_unknown_one(
    router: respx.Router,
) -> None:
    router.route().respond(500)
    memberships = Memberships(_directory(router))
    unknown = _deny("CareTeam/ct1", consent_id="c1")
    other = _deny("Practitioner/other", consent_id="c2")
    _, decided = await memberships.widen(_caller("Practitioner/dr"), {PATIENT: (unknown, other)})
    assert decided[PATIENT][1] is other
    assert decided[PATIENT][0] is not unknown


def test_named_parties_are_the_actor_references_of_those_kinds() -> None:
    group = (
        policy(
            "R4",
            "permit",
            rule(rule(actor=[actor("CareTeam/ct1")]), actor=[actor("Organization/o")]),
            rule(actor=[actor("Practitioner/dr"), actor("Group/g")]),
        ),
    )
    # A Practitioner too: a caller logged in as its PractitionerRole or Person acts as it.
    assert named_parties(group) == {
        "CareTeam/ct1",
        "Organization/o",
        "Group/g",
        "Practitioner/dr",
    }
    assert named_parties(group) is named_parties(group)  # memoised per tuple


async def test_an_unresolved_consent_that_refuses_break_the_glass_still_refuses_it(
    router: respx.Router,
) -> None:
    """The attack: make the membership unreadable, then ask for emergency access. The
    consent standing in for the unreadable one must still refuse break-the-glass, or the
    emergency override would release what the deny withholds."""
    router.route().respond(500)
    memberships = Memberships(_directory(router))
    body = consent("R4", "permit", rule(actor=[actor("CareTeam/ct1")]), consent_id="c-btg")
    btg = {"type": "deny", "purpose": [{"system": ACT_REASON, "code": "BTG"}]}
    body["provision"]["provision"].append(btg)
    refusing = parse_consent(body)
    plain = _deny("CareTeam/ct1", consent_id="c-plain")
    now = datetime(2024, 6, 1, tzinfo=UTC)
    assert forbids_break_glass((refusing,), now)
    _, decided = await memberships.widen(_caller("Practitioner/dr"), {PATIENT: (refusing,)})
    assert forbids_break_glass(decided[PATIENT], now)
    _, decided = await memberships.widen(_caller("Practitioner/dr"), {PATIENT: (plain,)})
    assert not forbids_break_glass(decided[PATIENT], now)
    # whatever the purpose, the stand-in denies
    for purpose in ("TREAT", "BTG", "ETREAT"):
        verdict = await _verdict(
            memberships, _caller("Practitioner/dr"), [refusing], purpose=purpose
        )
        assert not verdict, purpose


# -- periods: a role, a participation, a group membership counts only while in force ---------

# 2024-06-01T12:00:00Z
NOON = datetime(2024, 6, 1, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "member"),
    [
        (None, True),
        ({"start": "2024-01-01"}, True),
        ({"end": "2024-06-01"}, True),  # day precision: the whole end day counts
        ({"end": "2024-05-31"}, False),  # the role ended
        ({"start": "2024-06-02"}, False),  # not yet
        ({"start": "2024-06-01T11:59:59Z", "end": "2024-06-01T12:00:01Z"}, True),
        ({"end": "2024-06-01T11:59:59Z"}, False),
    ],
    ids=["none", "open-end", "ends-today", "ended", "not-yet", "seconds", "ended-seconds"],
)
async def test_a_role_counts_only_in_its_period(
    router: respx.Router, period: dict[str, str] | None, member: bool
) -> None:
    extra = {} if period is None else {"period": period}
    router.get("/PractitionerRole").respond(
        200, json=_bundle(_role("r1", "Organization/org1", **extra))
    )
    memberships = Memberships(_directory(router, wall_clock=lambda: NOON))
    caller = _caller("Practitioner/dr")
    assert await _verdict(memberships, caller, [_deny("Organization/org1")]) is not member
    assert await _verdict(memberships, caller, [_permit("Organization/org1")], "opt-in") is member


async def test_a_period_ends_while_the_answer_is_cached(router: respx.Router) -> None:
    """The period is read against the clock of each question, not of the read."""
    team = {
        "resourceType": "CareTeam",
        "participant": [
            {"member": {"reference": "Practitioner/dr"}, "period": {"end": "2024-06-01T13:00:00Z"}}
        ],
    }
    route = router.get("/CareTeam/ct1").respond(200, json=team)
    router.get("/PractitionerRole").respond(200, json=_bundle())
    wall = Clock()
    wall.now = NOON
    memberships = Memberships(_directory(router, wall_clock=wall))
    caller = _caller("Practitioner/dr")
    assert await _verdict(memberships, caller, [_permit("CareTeam/ct1")], "opt-in")
    wall.now = NOON + 3601  # the end names the whole second 13:00:00
    assert not await _verdict(memberships, caller, [_permit("CareTeam/ct1")], "opt-in")
    assert route.call_count == 1


@pytest.mark.parametrize(
    "period", [{"end": "last week"}, "2024", {"start": 2024}], ids=["text", "not-object", "number"]
)
async def test_an_unreadable_period_is_unresolved(router: respx.Router, period: object) -> None:
    group = {
        "resourceType": "Group",
        "member": [{"entity": {"reference": "Practitioner/other"}, "period": period}],
    }
    router.get("/Group/g1").respond(200, json=group)
    directory = _directory(router)
    with pytest.raises(Unresolved):
        await directory.members("Group/g1")


# -- organization hierarchy (Organization.partOf) ----------------------------------------------


def _org(part_of: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Organization"}
    if part_of is not None:
        body["partOf"] = {"reference": part_of}
    return body


async def test_a_consent_denying_a_hospital_reaches_its_departments_staff(
    router: respx.Router,
) -> None:
    router.get("/PractitionerRole").respond(200, json=_bundle(_role("r1", "Organization/cardio")))
    router.get("/Organization/cardio").respond(200, json=_org("Organization/medicine"))
    router.get("/Organization/medicine").respond(200, json=_org("Organization/hospital"))
    router.get("/Organization/hospital").respond(200, json=_org())
    memberships = Memberships(_directory(router))
    caller = _caller("Practitioner/dr")
    for above in ("Organization/cardio", "Organization/medicine", "Organization/hospital"):
        assert not await _verdict(memberships, caller, [_deny(above)]), above
    assert await _verdict(memberships, caller, [_deny("Organization/other-hospital")])
    # a department's consent does not reach its parent's other staff
    router.get("/Organization/hq").respond(200, json=_org())
    boss = _caller(None, organization="Organization/hq")  # a backend acting for hq
    assert await _verdict(memberships, boss, [_deny("Organization/cardio")])


async def test_the_token_organization_climbs_too(router: respx.Router) -> None:
    router.get("/PractitionerRole").respond(200, json=_bundle())
    router.get("/Organization/ward").respond(200, json=_org("Organization/hospital"))
    router.get("/Organization/hospital").respond(200, json=_org())
    memberships = Memberships(_directory(router))
    caller = _caller("Practitioner/dr", organization="Organization/ward")
    assert not await _verdict(memberships, caller, [_deny("Organization/hospital")])


@pytest.mark.parametrize("shape", ["loop", "too-deep", "unreadable"])
async def test_a_hierarchy_that_cannot_be_walked_is_unresolved(
    router: respx.Router, shape: str
) -> None:
    router.get("/PractitionerRole").respond(200, json=_bundle(_role("r1", "Organization/o0")))
    if shape == "loop":
        router.get("/Organization/o0").respond(200, json=_org("Organization/o1"))
        router.get("/Organization/o1").respond(200, json=_org("Organization/o0"))
    elif shape == "too-deep":
        for level in range(12):
            router.get(f"/Organization/o{level}").respond(
                200, json=_org(f"Organization/o{level + 1}")
            )
    else:
        router.get("/Organization/o0").respond(500)
    memberships = Memberships(_directory(router))
    caller = _caller("Practitioner/dr")
    # a loop ends (every organization seen once): o-top is not above, decided; the others fail
    # closed
    verdict = await _verdict(memberships, caller, [_deny("Organization/top")])
    assert verdict is (shape == "loop")
    # an organization the roles name directly is decided without the walk
    assert not await _verdict(memberships, caller, [_deny("Organization/o0")])
