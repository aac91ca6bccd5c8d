"""Through the gateway: a caller may not rewrite the records its consent memberships are read
from (pipeline.directory).

The attack: a practitioner of org1, which a patient's consent denies, holds ``user/*.cruds``.
It PUTs its own PractitionerRole through the gateway pointing at org2 (or ends it, deletes
it, detaches org1's department through ``Organization.partOf``...) and, once the memberships
cache lets go, reads the patient's records: 200. Now every write of a directory type (alone,
conditional, patched, or in a batch or transaction) is 403 before anything is read or written
upstream, unless the caller holds ``directory_admin_role``; reads of those types are as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.pipeline.directory import DIRECTORY_TYPES, REFUSED
from tests.app.consenting import Tokens, observation
from tests.unit.consent.builders import actor

ROLE: dict[str, Any] = {
    "resourceType": "PractitionerRole",
    "id": "r1",
    "meta": {"versionId": "1"},
    "practitioner": {"reference": "Practitioner/dr1"},
    "organization": {"reference": "Organization/org1"},
}


def _deny(party: str) -> dict[str, Any]:
    """R5: permit by default, deny ``party``."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "decision": "permit",
        "provision": [{"actor": [actor(party)]}],
    }


def _member(tokens: Tokens, **claims: Any) -> dict[str, str]:
    return tokens.bearer("dr1", "user/*.cruds", fhir_user="Practitioner/dr1", **claims)


def _writes(router: respx.Router, rtype: str) -> respx.Route:
    """Every request to the upstream that is not a GET: none may arrive when refused."""
    return router.route(method__in=["POST", "PUT", "PATCH", "DELETE"]).respond(
        200, json=_resource(rtype)
    )


def _resource(rtype: str) -> dict[str, Any]:
    return {"resourceType": rtype, "id": "x1"}


# (method, path, body or None) for a directory type; the body is JSON Patch for PATCH.
def _routes(rtype: str) -> list[tuple[str, str, Any]]:
    return [
        ("POST", rtype, {"resourceType": rtype}),
        ("PUT", f"{rtype}/x1", _resource(rtype)),
        ("PUT", f"{rtype}?identifier=a|b", {"resourceType": rtype}),
        ("PATCH", f"{rtype}/x1", [{"op": "replace", "path": "/active", "value": False}]),
        ("DELETE", f"{rtype}/x1", None),
        ("DELETE", f"{rtype}?identifier=a|b", None),
    ]


ROUTES = [(rtype, *route) for rtype in sorted(DIRECTORY_TYPES) for route in _routes(rtype)]
ROUTE_IDS = [f"{m} {p}" for _, m, p, _ in ROUTES]


async def test_member_cannot_move_its_own_role_out_of_a_denied_organization(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    """The reviewer's reproduction: before, the PUT went through (200) and a gateway whose
    memberships cache had not read the old role gave the patient's record (200)."""
    router.get("/Observation/o1").respond(200, json=observation())
    state = {"role": dict(ROLE)}
    router.get("/PractitionerRole").mock(
        side_effect=lambda request: httpx.Response(
            200,
            json={
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": state["role"]}],
            },
        )
    )
    router.get("/PractitionerRole/r1").mock(
        side_effect=lambda request: httpx.Response(200, json=state["role"])
    )
    router.get("/Organization/org2").respond(
        200, json={"resourceType": "Organization", "id": "org2"}
    )

    def put(request: httpx.Request) -> httpx.Response:
        state["role"] = json.loads(request.content)
        return httpx.Response(200, json=state["role"])

    puts = router.put("/PractitionerRole/r1").mock(side_effect=put)
    moved = {**ROLE, "organization": {"reference": "Organization/org2"}}
    dr = _member(tokens)
    async with make_client() as client:
        made = await client.post(
            "/fhir/Consent", json=_deny("Organization/org1"), headers=tokens.admin()
        )
        assert made.status_code == 201, made.text
        written = await client.put("/fhir/PractitionerRole/r1", json=moved, headers=dr)
        after = await client.get("/fhir/Observation/o1", headers=dr)
    assert written.status_code == 403
    outcome = written.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"] == REFUSED
    assert puts.call_count == 0
    assert state["role"]["organization"]["reference"] == "Organization/org1"
    assert after.status_code == 404


@pytest.mark.parametrize(("rtype", "method", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_write_route_of_a_directory_type_is_refused(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tokens: Tokens,
    rtype: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    reads = router.get(url__regex=r".*").respond(200, json=_resource(rtype))
    writes = _writes(router, rtype)
    headers = _member(tokens)
    if method == "PATCH":
        headers = {**headers, "content-type": "application/json-patch+json"}
    async with make_client() as client:
        content = None if body is None else json.dumps(body).encode()
        got = await client.request(method, f"/fhir/{path}", content=content, headers=headers)
    assert got.status_code == 403, got.text
    assert got.json()["issue"][0]["diagnostics"] == REFUSED
    assert writes.call_count == 0
    assert reads.call_count == 0  # refused before the target is even looked up


async def test_a_batch_refuses_each_directory_write_and_runs_the_rest(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    router.get(url__regex=r".*").respond(200, json=ROLE)
    written = router.post("/Observation").respond(201, json=observation())
    directory = router.route(
        method__in=["POST", "PUT", "DELETE"], url__regex=r".*/(PractitionerRole|Organization).*"
    ).respond(200, json=ROLE)
    entries = [
        {"resource": ROLE, "request": {"method": "PUT", "url": "PractitionerRole/r1"}},
        {"request": {"method": "DELETE", "url": "PractitionerRole/r1"}},
        {
            "resource": {"resourceType": "Organization", "partOf": {"reference": "Organization/x"}},
            "request": {"method": "POST", "url": "Organization"},
        },
        {"resource": observation(), "request": {"method": "POST", "url": "Observation"}},
    ]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    async with make_client() as client:
        got = await client.post("/fhir", json=bundle, headers=_member(tokens))
    assert got.status_code == 200, got.text
    statuses = [e["response"]["status"] for e in got.json()["entry"]]
    assert statuses[:3] == ["403", "403", "403"]
    assert statuses[3].startswith("201")
    assert directory.call_count == 0
    assert written.call_count == 1


@pytest.mark.parametrize(
    ("method", "url", "resource"),
    [
        ("PUT", "PractitionerRole/r1", ROLE),
        ("DELETE", "PractitionerRole/r1", None),
        ("POST", "PractitionerRole", {**ROLE, "id": None}),
        ("POST", "Organization", {"resourceType": "Organization", "name": "Ward 3"}),
    ],
    ids=["update", "delete", "create-role", "create-organization"],
)
async def test_a_transaction_with_a_directory_write_is_refused_whole(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tokens: Tokens,
    method: str,
    url: str,
    resource: Any,
) -> None:
    router.get("/PractitionerRole/r1").respond(200, json=ROLE)
    upstream = router.post("/").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created"}}] * 2,
        },
    )
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if resource is not None:
        entry["resource"] = {k: v for k, v in resource.items() if v is not None}
    other = {"resource": observation(), "request": {"method": "POST", "url": "Observation"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [other, entry]}
    async with make_client() as client:
        got = await client.post("/fhir", json=bundle, headers=_member(tokens))
    assert got.status_code == 403, got.text
    assert upstream.call_count == 0


async def test_the_directory_admin_role_may_write_the_directory(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    router.get("/PractitionerRole/r1").respond(200, json=ROLE)
    moved = {**ROLE, "organization": {"reference": "Organization/org2"}}
    puts = router.put("/PractitionerRole/r1").respond(200, json=moved)
    transaction = router.post("/").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created"}}],
        },
    )
    admin = _member(tokens, roles=["directory-admin"])
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Organization", "name": "Ward 3"},
                "request": {"method": "POST", "url": "Organization"},
            }
        ],
    }
    async with make_client(directory_admin_role="directory-admin") as client:
        single = await client.put("/fhir/PractitionerRole/r1", json=moved, headers=admin)
        whole = await client.post("/fhir", json=bundle, headers=admin)
        member = await client.put("/fhir/PractitionerRole/r1", json=moved, headers=_member(tokens))
    assert single.status_code == 200, single.text
    assert puts.call_count == 1
    assert whole.status_code == 200, whole.text
    assert transaction.call_count == 1
    assert member.status_code == 403  # the role names who, not every caller


async def test_reads_of_the_directory_are_unaffected(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, tokens: Tokens
) -> None:
    router.get("/PractitionerRole/r1").respond(200, json=ROLE)
    router.get("/PractitionerRole").respond(
        200, json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": ROLE}]}
    )
    async with make_client() as client:
        read = await client.get("/fhir/PractitionerRole/r1", headers=_member(tokens))
        search = await client.get(
            "/fhir/PractitionerRole?practitioner=dr1", headers=_member(tokens)
        )
    assert read.status_code == 200
    assert read.json()["organization"] == ROLE["organization"]
    assert search.status_code == 200
    assert len(search.json()["entry"]) == 1


@pytest.mark.parametrize("rtype", ["Practitioner", "RelatedPerson"])
async def test_types_no_membership_is_read_from_are_written_as_before(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tokens: Tokens,
    rtype: str,
) -> None:
    """Practitioner and RelatedPerson are not guarded (pipeline.directory's docstring): a
    write is forwarded as any other write is."""
    body: dict[str, Any] = {"resourceType": rtype, "id": "x1", "meta": {"versionId": "1"}}
    if rtype == "RelatedPerson":
        body["patient"] = {"reference": "Patient/p1"}
    router.get(f"/{rtype}/x1").respond(200, json=body)
    puts = router.put(f"/{rtype}/x1").respond(200, json=body)
    async with make_client() as client:
        got = await client.put(f"/fhir/{rtype}/x1", json=body, headers=_member(tokens))
    assert got.status_code == 200, got.text
    assert puts.call_count == 1
