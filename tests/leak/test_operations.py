"""Operations: ``Patient/[id]/$everything`` is filtered; every other operation, and
``$graphql``, is refused before anything reaches the upstream."""

from __future__ import annotations

import pytest

from tests.leak.world import (
    World,
    assert_nothing_of_p1,
    assert_same_not_found,
    assert_withheld,
    ids_in,
)


async def test_everything_of_p1_releases_nothing_of_p1(world: World) -> None:
    """The practitioner asks for p1's whole record in one call."""
    got = await world.http.get("/fhir/Patient/p1/$everything", headers=world.dr)
    assert_withheld(world, got)


async def test_everything_of_p1_answers_like_a_missing_patient(world: World) -> None:
    """The practitioner compares ``$everything`` of p1 with that of a patient who does not
    exist: an empty 200 for one and a 404 for the other confirms p1."""
    got = await world.http.get("/fhir/Patient/p1/$everything", headers=world.dr)
    absent = await world.http.get("/fhir/Patient/nope/$everything", headers=world.dr)
    assert_same_not_found(world, got, absent)


async def test_everything_of_p2_releases_p2_but_not_p1_resources(world: World) -> None:
    """``Patient/p2/$everything`` brings p2's encounter, observations and report; the report
    carries p1's result contained: it must be withheld, the rest released."""
    got = await world.http.get("/fhir/Patient/p2/$everything", headers=world.dr)
    assert got.status_code == 200
    assert {"Patient/p2", "Observation/obs-p2"} <= ids_in(got.json())
    assert_withheld(world, got)


async def test_patient_p2_everything_of_p1_is_the_missing_404(world: World) -> None:
    """Patient p2 asks for ``Patient/p1/$everything``: refused from the path alone, as a
    missing record, without asking the upstream."""
    got = await world.http.get("/fhir/Patient/p1/$everything", headers=world.p2)
    absent = await world.http.get("/fhir/Patient/nope/$everything", headers=world.p2)
    assert_same_not_found(world, got, absent)
    assert world.sent == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Patient/p1/$summary"),
        ("GET", "/fhir/Observation/$lastn?patient=Patient/p1"),
        ("POST", "/fhir/Patient/$match"),
        ("GET", "/fhir/$export?_type=Patient"),
        ("GET", "/fhir/Patient/p1/$meta"),
    ],
    ids=["instance-op", "type-op-lastn", "type-op-match", "system-export", "meta"],
)
async def test_unknown_operation_is_refused_and_not_forwarded(
    world: World, method: str, path: str
) -> None:
    """An operation the gateway does not filter (``$lastn``, ``$match``, ``$export``...) answers
    whatever the upstream computes, p1's data included."""
    body = {"resourceType": "Parameters"} if method == "POST" else None
    got = await world.http.request(method, path, headers=world.dr, json=body)
    assert got.status_code == 403
    assert_nothing_of_p1(got)
    assert world.sent == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/$graphql?query={Patient(id:%22p1%22){name{family}}}"),
        ("GET", "/fhir/Patient/p1/$graphql?query={name{family}}"),
        ("POST", "/fhir/$graphql"),
    ],
    ids=["system-get", "instance-get", "system-post"],
)
async def test_graphql_is_refused_and_not_forwarded(world: World, method: str, path: str) -> None:
    """GraphQL selects and joins fields upstream, past every per-resource check."""
    body = {"query": '{ Patient(id: "p1") { name { family } } }'} if method == "POST" else None
    got = await world.http.request(method, path, headers=world.dr, json=body)
    assert got.status_code in (400, 403)
    assert_nothing_of_p1(got)
    assert world.sent == []
