"""Counts and refilled pages the caller cannot tune into an oracle: padding a count with
visible matches up to the gateway's cap, or asking for one match a page, must answer the same
for p1 (records hidden from the practitioner) as for a patient with no records."""

from __future__ import annotations

from typing import Any

import httpx

from tests.leak.conftest import OpenWorld
from tests.leak.world import World, assert_withheld


def _shape(got: httpx.Response) -> tuple[int, Any, list[str], int]:
    """What a page tells besides its entries: status, total, link relations, entry count."""
    body = got.json()
    relations = [link["relation"] for link in body.get("link", [])]
    return got.status_code, body.get("total"), relations, len(body.get("entry", []))


async def test_padding_a_count_to_the_cap_tells_nothing_of_p1(make_world: OpenWorld) -> None:
    """The attack: the cap set to p2's visible Observations, ``subject=Patient/p2,Patient/p1``
    walks more upstream matches than the cap. A cap on matches walked answered it 422 where
    ``Patient/p2,Patient/nobody`` got 200: whether p1 has records, one bit a query. The cap
    is on matches released: the same count for both."""
    probe = await make_world()
    visible = await probe.http.get(
        "/fhir/Observation?subject=Patient/p2&_summary=count", headers=probe.dr
    )
    cap = visible.json()["total"]
    assert cap > 0
    world = await make_world(count_max_resources=cap)
    padded = {}
    for other in ("Patient/p1", "Patient/nobody"):
        got = await world.http.get(
            f"/fhir/Observation?subject=Patient/p2,{other}&_summary=count", headers=world.dr
        )
        padded[other] = (got.status_code, got.json().get("total"))
    assert padded["Patient/p1"] == padded["Patient/nobody"] == (200, cap)
    assert world.upstream_answered_p1()  # p1's records were walked and withheld


async def test_one_match_a_page_looks_the_same_with_hidden_records_or_none(world: World) -> None:
    """The attack: ``_count=1`` on p1 with a dozen hidden Observations (one an upstream page):
    the refill stopped after 8 upstream pages and released an empty page with a ``next``
    cursor and no total, where a patient with no records gets total 0 and no ``next``. The
    page is refilled to the end of the result: the same empty page, total 0, no ``next``."""
    template = world.fhir.current("Observation/obs-p1")
    assert template is not None
    for i in range(12):
        world.fhir.put({**template, "id": f"obs-p1-many-{i}"})
    hidden = await world.http.get("/fhir/Observation?subject=Patient/p1&_count=1", headers=world.dr)
    none = await world.http.get(
        "/fhir/Observation?subject=Patient/nobody&_count=1", headers=world.dr
    )
    assert _shape(hidden) == _shape(none) == (200, 0, ["self"], 0)
    assert_withheld(world, hidden)
