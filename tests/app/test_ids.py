"""Opaque resource ids at the upstream edge: clients see only the gateway's ids, every stage
(consent included) works with them, and the upstream sees only its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from middleware.mapping.ids import FHIR_ID
from tests.app.conftest import UPSTREAM

FHIR = {"content-type": "application/fhir+json"}


def observation(oid: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1"},
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
    }


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    profiles = tmp_path / "mappings" / "profiles"
    profiles.mkdir(parents=True)
    path = profiles / "ids-only.json"
    path.write_text(
        json.dumps(
            {
                "id": "ids-only",
                "upstream": "hospital",
                "fhir": {"client": "R4", "upstream": "R4"},
                "patients": {"resolver": "opaque"},
            }
        )
    )
    return path


@pytest.fixture
async def client(
    make_client: Any, router: respx.Router, profile: Path
) -> AsyncIterator[httpx.AsyncClient]:
    router.get("/Observation/o-1").respond(200, json=observation("o-1", "p-1"), headers=FHIR)
    async with make_client(mapping_profile=str(profile)) as c:
        yield c


async def client_id_of(
    client: httpx.AsyncClient, router: respx.Router, rtype: str, local: str
) -> str:
    """The id the gateway gives the upstream's ``rtype/local`` (read through a search)."""
    router.get(f"/{rtype}").respond(
        200,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": observation(local, "p-1"), "search": {"mode": "match"}}],
        },
        headers=FHIR,
    )
    found = (await client.get(f"/fhir/{rtype}?status=final")).json()
    return str(found["entry"][0]["resource"]["id"])


async def test_answers_carry_opaque_ids_and_requests_reach_the_upstream_with_its_own(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    oid = await client_id_of(client, router, "Observation", "o-1")
    assert oid != "o-1"
    assert FHIR_ID.fullmatch(oid)
    answer = await client.get(f"/fhir/Observation/{oid}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == oid
    subject = body["subject"]["reference"]
    assert subject.startswith("Patient/")
    assert subject != "Patient/p-1"
    # The subject's id works for a search by subject: the upstream sees its own.
    route = router.get("/Observation").respond(
        200, json={"resourceType": "Bundle", "type": "searchset"}, headers=FHIR
    )
    await client.get(f"/fhir/Observation?subject={subject}")
    sent = dict(parse_qsl(route.calls.last.request.url.query.decode()))
    assert sent["subject"] == "Patient/p-1"


async def test_an_upstream_id_or_a_forged_id_is_the_generic_404(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """Guessing: the upstream's own id, or a gateway id with one character changed, names no
    record through the gateway (and nothing is forwarded for it)."""
    oid = await client_id_of(client, router, "Observation", "o-1")
    forged = oid[:-1] + ("A" if oid[-1] != "A" else "B")
    before = len(router.calls)
    for guess in ("o-1", forged):
        answer = await client.get(f"/fhir/Observation/{guess}")
        assert answer.status_code == 404
        assert answer.json()["issue"][0]["diagnostics"] == "not found"
    assert len(router.calls) == before


async def test_a_write_reaches_the_upstream_with_its_ids(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    oid = await client_id_of(client, router, "Observation", "o-1")
    read = (await client.get(f"/fhir/Observation/{oid}")).json()
    put = router.put("/Observation/o-1").respond(200, json=observation("o-1", "p-1"), headers=FHIR)
    answer = await client.put(
        f"/fhir/Observation/{oid}", json={**read, "status": "amended"}, headers=FHIR
    )
    assert answer.status_code == 200, answer.text
    sent = json.loads(put.calls.last.request.content)
    assert sent["id"] == "o-1"
    assert sent["subject"]["reference"] == "Patient/p-1"
    assert answer.json()["id"] == oid


# -- a profile without a resolver leaves ids alone ----------------------------------------------

DOCS = Path(__file__).parents[2]


@pytest.mark.parametrize(
    "patients", [None, {}], ids=["no-patients-section", "empty-patients-section"]
)
async def test_a_profile_without_a_resolver_releases_the_upstreams_own_ids(
    make_client: Any, router: respx.Router, tmp_path: Path, patients: dict[str, Any] | None
) -> None:
    """The documented default (mappings/README.md "Resource ids", docs/mapping.md): no
    ``patients`` section, or ``{}``, maps no ids; only a resolver makes them opaque."""
    profiles = tmp_path / "mappings" / "profiles"
    profiles.mkdir(parents=True)
    body: dict[str, Any] = {
        "id": "no-ids",
        "upstream": "hospital",
        "fhir": {"client": "R4", "upstream": "R4"},
    }
    if patients is not None:
        body["patients"] = patients
    (profiles / "no-ids.json").write_text(json.dumps(body))
    router.get("/Observation/o-1").respond(200, json=observation("o-1", "p-1"), headers=FHIR)
    async with make_client(mapping_profile=str(profiles / "no-ids.json")) as client:
        answer = await client.get("/fhir/Observation/o-1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "o-1"
    assert answer.json()["subject"]["reference"] == "Patient/p-1"


def test_the_mapping_docs_say_what_a_profile_without_a_resolver_does() -> None:
    """The docs once promised opaque ids by default; they must say what the code does."""
    readme = " ".join((DOCS / "mappings" / "README.md").read_text().split())
    assert "| `{}`: the upstream's own ids, unchanged |" in readme
    assert "`{}`: opaque ids" not in readme
    guide = " ".join((DOCS / "docs" / "mapping.md").read_text().split())
    assert 'or with `"patients": {}`, leaves ids alone' in guide


# -- paging under id mapping ------------------------------------------------------------------
# The bug: the upstream's ``next`` link (``{upstream}/Patient/p-1/_history?_offset=1``) had its
# path id rewritten to the client's before the gateway sealed it into a cursor, and a redeemed
# cursor (an absolute upstream URL) passed the id edge as it was: page 2 asked the upstream for
# ``Patient/<client id>/...``, a record it does not have. Both tests fail on that code.


def _page(entries: list[dict[str, Any]], kind: str, link_path: str | None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "entry": entries}
    if link_path is not None:
        bundle["link"] = [{"relation": "next", "url": f"{UPSTREAM}/{link_path}"}]
    return bundle


async def test_the_second_page_of_an_instance_history_names_the_upstreams_id(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    oid = await client_id_of(client, router, "Observation", "o-1")
    first = _page(
        [{"resource": observation("o-1", "p-1")}], "history", "Observation/o-1/_history?_offset=1"
    )
    second = _page(
        [{"resource": {**observation("o-1", "p-1"), "status": "amended"}}], "history", None
    )
    router.get("/Observation/o-1/_history", params={"_offset": "1"}).respond(
        200, json=second, headers=FHIR
    )
    router.get("/Observation/o-1/_history").respond(200, json=first, headers=FHIR)
    wrong = router.get(url__regex=rf"/Observation/{oid}/").respond(404)

    got = await client.get(f"/fhir/Observation/{oid}/_history")
    assert got.status_code == 200, got.text
    nxt = next(link["url"] for link in got.json()["link"] if link["relation"] == "next")
    page2 = await client.get(nxt.replace("http://gateway.test", ""))
    assert page2.status_code == 200, page2.text
    assert wrong.call_count == 0
    entries = page2.json()["entry"]
    assert [e["resource"]["status"] for e in entries] == ["amended"]
    assert entries[0]["resource"]["id"] == oid


async def test_the_second_page_of_a_compartment_search_names_the_upstreams_id(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    oid = await client_id_of(client, router, "Observation", "o-1")
    pid = (await client.get(f"/fhir/Observation/{oid}")).json()["subject"]["reference"]
    pid = pid.removeprefix("Patient/")
    assert pid != "p-1"
    first = _page(
        [{"resource": observation("o-1", "p-1"), "search": {"mode": "match"}}],
        "searchset",
        "Patient/p-1/Observation?_offset=1",
    )
    second = _page(
        [{"resource": observation("o-2", "p-1"), "search": {"mode": "match"}}], "searchset", None
    )
    router.get("/Patient/p-1/Observation", params={"_offset": "1"}).respond(
        200, json=second, headers=FHIR
    )
    router.get("/Patient/p-1/Observation").respond(200, json=first, headers=FHIR)
    wrong = router.get(url__regex=rf"/Patient/{pid}/").respond(404)

    got = await client.get(f"/fhir/Patient/{pid}/Observation")
    assert got.status_code == 200, got.text
    nxt = next(link["url"] for link in got.json()["link"] if link["relation"] == "next")
    page2 = await client.get(nxt.replace("http://gateway.test", ""))
    assert page2.status_code == 200, page2.text
    assert wrong.call_count == 0
    assert len(page2.json()["entry"]) == 1
