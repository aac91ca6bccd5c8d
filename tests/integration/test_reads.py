"""Read-only interactions answer the same through the gateway as directly: read, vread,
search with paging (the gateway's ``next`` links followed to the end), ``_include`` and
``_revinclude``; with httpx and with the fhirpy and fhirclient client libraries.

The gateway side sends a ``system/*.cruds`` token (opt-out, no consent on file: everything is
released); the direct side sends none. Bundles differ only as ``sides`` describes (paging
links, ``Bundle.total``)."""

from __future__ import annotations

from typing import Any

import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirpy import AsyncFHIRClient, SyncFHIRClient

from tests.integration.sides import Sides, comparable, entries

pytestmark = pytest.mark.integration


def _json(resource: Any) -> Any:
    """A fhirpy resource as plain JSON (fhirpy's ``serialize`` is untyped)."""
    return resource.serialize()


def _smart(sides: Sides, base: str) -> Any:
    """A fhirclient client of ``base``, sending the gateway's token when it is the gateway."""
    smart = fhirclient_client.FHIRClient(settings={"app_id": "consentry-it", "api_base": base})
    authorization = sides.auth_for(base)
    if authorization is not None:
        smart.server.session.headers["Authorization"] = authorization
    return smart


def _sync(sides: Sides, base: str) -> SyncFHIRClient:
    return SyncFHIRClient(base, authorization=sides.auth_for(base))


def _async(sides: Sides, base: str) -> AsyncFHIRClient:
    return AsyncFHIRClient(base, authorization=sides.auth_for(base))


# --- read and vread ---------------------------------------------------------------------


def test_read_every_resource_of_a_patient_equals_direct(
    sides: Sides, carebundle: dict[str, list[str]], patient_id: str
) -> None:
    for reference in carebundle[patient_id]:
        via, direct = sides.both("GET", reference)
        assert via.status_code == direct.status_code == 200
        assert via.content == direct.content, reference  # nothing to rebase: same bytes
        assert via.headers["etag"] == direct.headers["etag"]


def test_vread_equals_direct(sides: Sides, patient_id: str) -> None:
    version = sides.same("GET", f"Patient/{patient_id}")["meta"]["versionId"]
    resource = sides.same("GET", f"Patient/{patient_id}/_history/{version}")
    assert resource["id"] == patient_id


@pytest.mark.parametrize(
    "condition",
    [
        {"if-none-match": "{etag}"},
        {"if-modified-since": "Fri, 01 Jan 2999 00:00:00 GMT"},
    ],
    ids=["if-none-match", "if-modified-since"],
)
def test_conditional_read_is_answered_in_full(
    sides: Sides, patient_id: str, condition: dict[str, str]
) -> None:
    """Under enforcement the gateway drops the client's conditional headers on reads (a 304
    would confirm a record the caller may not see), so a conditional read answers 200 with
    the resource, byte for byte the plain direct read. (Medplum itself ignores conditional
    reads, so this pins the gateway's side only.)"""
    plain = sides.direct.get(f"{sides.upstream_base}/Patient/{patient_id}")
    headers = {name: value.format(etag=plain.headers["etag"]) for name, value in condition.items()}
    via = sides.gateway.get(f"{sides.gateway_base}/Patient/{patient_id}", headers=headers)
    assert via.status_code == 200
    assert via.content == plain.content


def test_fhirpy_sync_read_equals_direct(sides: Sides, patient_id: str) -> None:
    resource = _sync(sides, sides.gateway_base).reference("Patient", patient_id).to_resource()
    assert _json(resource) == sides.direct.get(f"{sides.upstream_base}/Patient/{patient_id}").json()


async def test_fhirpy_async_read_equals_direct(
    sides: Sides, carebundle: dict[str, list[str]], patient_id: str
) -> None:
    observation = next(ref for ref in carebundle[patient_id] if ref.startswith("Observation/"))
    client = _async(sides, sides.gateway_base)
    resource = await client.reference(*observation.split("/")).to_resource()
    assert _json(resource) == sides.direct.get(f"{sides.upstream_base}/{observation}").json()


def test_fhirclient_read_equals_direct(sides: Sides, patient_id: str) -> None:
    via = Patient.read(patient_id, _smart(sides, sides.gateway_base).server)
    direct = Patient.read(patient_id, _smart(sides, sides.upstream_base).server)
    assert via.as_json() == direct.as_json()


# --- search and paging ------------------------------------------------------------------


def test_search_pages_through_gateway_links_equal_direct(sides: Sides, patient_id: str) -> None:
    """Page for page the same entries as directly. Under enforcement the gateway's ``next``
    links are its own cursors (``_cursor=``, no upstream ``_offset=``) and its pages carry no
    ``Bundle.total``, so the pages are compared without links and total, and the number of
    resources is checked against the upstream's total."""
    query = f"Observation?subject=Patient/{patient_id}&_count=5"
    via_pages = list(sides.pages(sides.gateway, sides.url(sides.gateway_base, query)))
    direct_pages = list(sides.pages(sides.direct, sides.url(sides.upstream_base, query)))
    assert len(via_pages) == len(direct_pages) > 2
    assert [comparable(sides.normalise(page)) for page in via_pages] == [
        comparable(page) for page in direct_pages
    ]
    links = [link for page in via_pages for link in page["link"] if link["relation"] != "self"]
    assert len([link for link in links if link["relation"] == "next"]) == len(via_pages) - 1
    assert all("_cursor=" in link["url"] and "_offset=" not in link["url"] for link in links)
    assert all("total" not in page for page in via_pages)
    ids = [resource["id"] for page in via_pages for resource in entries(page)]
    assert len(ids) == len(set(ids)) == direct_pages[0]["total"]


def test_fhirpy_fetch_all_pages_equal_direct(sides: Sides, patient_id: str) -> None:
    def fetch(base: str) -> list[Any]:
        search = _sync(sides, base).resources("Observation").search(subject=f"Patient/{patient_id}")
        return [_json(resource) for resource in search.limit(7).fetch_all()]

    via = fetch(sides.gateway_base)
    assert via == fetch(sides.upstream_base)
    assert len(via) > 7


async def test_fhirpy_async_search_equals_direct(sides: Sides, patient_id: str) -> None:
    async def fetch(base: str) -> list[Any]:
        search = _async(sides, base).resources("Encounter").search(patient=f"Patient/{patient_id}")
        return [_json(resource) for resource in await search.fetch_all()]

    via = await fetch(sides.gateway_base)
    assert via == await fetch(sides.upstream_base)
    assert via


def test_fhirclient_search_all_pages_equal_direct(sides: Sides, patient_id: str) -> None:
    def fetch(base: str) -> list[Any]:
        search = Observation.where(struct={"subject": f"Patient/{patient_id}", "_count": "4"})
        return [r.as_json() for r in search.perform_resources_iter(_smart(sides, base).server)]

    via = fetch(sides.gateway_base)
    assert via == fetch(sides.upstream_base)
    assert len(via) > 4


def test_include_equals_direct(sides: Sides, patient_id: str) -> None:
    bundle = sides.same(
        "GET",
        f"Observation?subject=Patient/{patient_id}&_count=10"
        "&_include=Observation:performer&_include=Observation:encounter",
    )
    included = {resource["resourceType"] for resource in entries(bundle, "include")}
    assert included == {"Practitioner", "Encounter"}


def test_revinclude_equals_direct(sides: Sides, patient_id: str) -> None:
    bundle = sides.same(
        "GET",
        f"Patient?_id={patient_id}&_revinclude=Observation:subject&_revinclude=Encounter:patient",
    )
    assert [resource["id"] for resource in entries(bundle, "match")] == [patient_id]
    included = {resource["resourceType"] for resource in entries(bundle, "include")}
    assert included == {"Observation", "Encounter"}


def test_search_by_post_equals_direct(sides: Sides, patient_id: str) -> None:
    bundle = sides.same(
        "POST",
        "Encounter/_search",
        data={"patient": f"Patient/{patient_id}", "_count": "2"},
    )
    assert len(entries(bundle)) == 2
