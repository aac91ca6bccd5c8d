"""Operations by the operations table: ``$everything`` and ``$lastn`` filtered, ``$stats``
released only when every input may be seen; an operation the table does not name, and
``$graphql``, is refused before anything reaches the upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.leak.conftest import OpenWorld
from tests.leak.upstream import FakeFhir
from tests.leak.world import (
    World,
    assert_nothing_of_p1,
    assert_same_not_found,
    assert_withheld,
    ids_in,
)


class OperatingFhir(FakeFhir):
    """The fake upstream with ``Observation/$lastn`` (a search of Observations, every
    match: the gateway must filter) and ``Observation/$stats`` (a count over whatever the
    query names, computed without any consent)."""

    def _route(
        self, request: httpx.Request, segments: list[str], params: list[tuple[str, str]]
    ) -> httpx.Response:
        if segments == ["Observation", "$lastn"]:
            return self._searchset(self._search("Observation", params), params)
        if segments == ["Observation", "$stats"]:
            wanted = [
                ("patient" if n == "subject" else n, v) for n, v in params if n != "statistic"
            ]
            found = self._search("Observation", wanted)
            notes = [n["text"] for r in found for n in r.get("note", [])]
            stats: dict[str, Any] = {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "count", "valueInteger": len(found)},
                    {"name": "notes", "valueString": " ".join(notes)},
                ],
            }
            return httpx.Response(200, json=stats)
        return super()._route(request, segments, params)


@pytest.fixture
async def operating(make_world: OpenWorld) -> World:
    return await make_world(fhir=OperatingFhir())


async def test_lastn_releases_nothing_of_p1(operating: World) -> None:
    """The practitioner asks for the last results of everyone, then of p1 by name."""
    for query in ("", "?patient=Patient/p1", "?subject=p1&code=718-7"):
        got = await operating.http.get(f"/fhir/Observation/$lastn{query}", headers=operating.dr)
        assert got.status_code == 200, query
        assert_withheld(operating, got)


async def test_lastn_of_p1_looks_like_that_of_a_patient_without_results(operating: World) -> None:
    """An empty page for both: a 404 for p1 alone would say p1 has results."""
    got = await operating.http.get("/fhir/Observation/$lastn?patient=p1", headers=operating.dr)
    none = await operating.http.get("/fhir/Observation/$lastn?patient=nope", headers=operating.dr)
    assert got.status_code == none.status_code == 200
    assert "entry" not in got.json()
    assert "entry" not in none.json()
    assert "total" not in got.json()


async def test_stats_of_p1_is_the_missing_404_and_never_computed(operating: World) -> None:
    """A count or an average of p1's results is p1's data; the statistics are not asked."""
    got = await operating.http.get(
        "/fhir/Observation/$stats?subject=Patient/p1&code=718-7&statistic=count",
        headers=operating.dr,
    )
    absent = await operating.http.get("/fhir/Observation/nope", headers=operating.dr)
    assert got.status_code == absent.status_code == 404
    assert got.content == absent.content
    assert_nothing_of_p1(got)
    assert not [r for r in operating.sent if r.url.path.endswith("$stats")]


async def test_stats_of_p2_are_released(operating: World) -> None:
    got = await operating.http.get(
        "/fhir/Observation/$stats?subject=Patient/p2&code=718-7&statistic=count",
        headers=operating.dr,
    )
    assert got.status_code == 200
    (count, _) = got.json()["parameter"]
    assert count["name"] == "count"
    assert count["valueInteger"] > 0
    assert_nothing_of_p1(got)


async def test_everything_of_p1_releases_nothing_of_p1(world: World) -> None:
    """The practitioner asks for p1's whole record in one call: p1's consent answers for the
    whole record (its Practitioners, Medications... are released only beside records of p1
    the practitioner may see), so nothing is even asked of the upstream."""
    got = await world.http.get("/fhir/Patient/p1/$everything", headers=world.dr)
    assert got.status_code == 404
    assert_nothing_of_p1(got)
    assert not [r for r in world.sent if r.url.path.endswith("$everything")]


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
        ("POST", "/fhir/Patient/$match"),
        ("GET", "/fhir/$export?_type=Patient"),
        ("GET", "/fhir/Patient/p1/$meta"),
    ],
    ids=["instance-op", "type-op-match", "system-export", "meta"],
)
async def test_unknown_operation_is_refused_and_not_forwarded(
    world: World, method: str, path: str
) -> None:
    """An operation the table does not name (``$summary``, ``$match``, ``$meta``...) answers
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
