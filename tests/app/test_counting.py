"""Counts without oracles (pipeline.counting): ``_summary=count``, ``_count=0``, fhirpy's
``count()`` and ``_total`` are answered with what the caller may see, never the upstream's
figure; ``Bundle.total`` only when exact; a cap with a 422 ``too-costly`` beyond it.

The upstream serves seven Observations over three pages; p1's two (o1, o5) are hidden from the
practitioner by p1's consent, so every count the practitioner gets is 5."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_base import LogStore
from tests.app.conftest import UPSTREAM
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, ledger_entries, r5_consent
from tests.app.test_paging import PAGES, doctor, ids, next_url, page

VISIBLE = 5  # o2, o3, o4, o6, o7: p2's


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


class Upstream:
    """The paged Observations of test_paging and a one-page Condition search, recording every
    query the gateway sends."""

    def __init__(self) -> None:
        self.sent: list[list[tuple[str, str]]] = []

    def observations(self, request: httpx.Request) -> httpx.Response:
        params = parse_qsl(request.url.query.decode())
        self.sent.append(params)
        offset = dict(params).get("_offset", "0")
        return httpx.Response(200, json=PAGES[offset])

    def conditions(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(parse_qsl(request.url.query.decode()))
        bundle = page([("c1", "p1"), ("c2", "p2"), ("c3", "p2")], None)
        for entry in bundle["entry"]:
            entry["resource"]["resourceType"] = "Condition"
        return httpx.Response(200, json=bundle)


@pytest.fixture
def upstream(router: respx.Router) -> Upstream:
    fake = Upstream()
    router.get("/Observation").mock(side_effect=fake.observations)
    router.get("/Condition").mock(side_effect=fake.conditions)
    return fake


async def _gateway(
    make_app: Any, dev_key_file: Path, tokens: Tokens, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app: Gateway = make_app(
        auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out", **settings
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        # p1 permits everyone but the practitioner: p1's records are hidden from dr.
        body = r5_consent(
            "Patient/p1",
            "permit",
            provision=[{"actor": [{"reference": {"reference": "Practitioner/dr"}}]}],
        )
        created = await client.post("/fhir/Consent", json=body, headers=tokens.patient("p1"))
        assert created.status_code == 201
        yield client
    await app.aclose()


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path, tokens: Tokens, upstream: Upstream
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _gateway(make_app, dev_key_file, tokens):
        yield client


@pytest.mark.parametrize(
    "query",
    [
        "code=x&_summary=count",
        "code=x&_count=0",
        "code=x&_count=0&_totalMethod=count",
        "code=x&_SUMMARY=COUNT",
        "code=x&_summary=count&_total=accurate&_include=Observation:subject",
    ],
    ids=["summary-count", "count-zero", "fhirpy-count", "upper-case", "with-result-params"],
)
async def test_a_count_is_of_what_the_caller_may_see(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: Upstream, query: str
) -> None:
    """The upstream would say 99 (its ``total``, hidden matches included); the gateway walks
    every page, judges every match and answers 5: a Bundle with ``total``, no entries."""
    got = await gateway.get(f"/fhir/Observation?{query}", headers=doctor(tokens))
    assert got.status_code == 200
    body = got.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "searchset"
    assert body["total"] == VISIBLE
    assert "entry" not in body
    assert [link["relation"] for link in body["link"]] == ["self"]  # no next: nothing to page
    # The gateway ran the search itself: every page, its own page size, no count asked for.
    offsets = [dict(sent).get("_offset", "0") for sent in upstream.sent]
    assert offsets == ["0", "3", "6"]
    first = dict(upstream.sent[0])
    assert first["_count"] == "1000"
    assert first["code"] == "x"
    names = {name.lower() for name, _ in upstream.sent[0]}
    assert not names & {"_summary", "_total", "_totalmethod", "_include"}


async def test_total_accurate_releases_the_page_with_the_counted_total(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """``_total=accurate``: the normal first page (full, sealed next link) and ``total`` 5; the
    next page, redeemed with its cursor, is counted again."""
    headers = doctor(tokens)
    got = await gateway.get("/fhir/Observation?code=x&_count=3&_total=accurate", headers=headers)
    assert got.status_code == 200
    first = got.json()
    assert ids(first) == ["o2", "o3", "o4"]
    assert first["total"] == VISIBLE
    assert list(first)[:3] == ["resourceType", "type", "total"]
    url = next_url(first)
    assert url is not None
    assert UPSTREAM not in url
    assert "_cursor=" in url
    second = (await gateway.get(url, headers=headers)).json()
    assert ids(second) == ["o6", "o7"]
    assert second["total"] == VISIBLE


async def test_a_total_cursor_cannot_be_turned_into_a_count(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """A cursor is bound to its query: the ``_total=accurate`` page's cursor does not redeem
    under ``_summary=count``."""
    headers = doctor(tokens)
    first = (
        await gateway.get("/fhir/Observation?code=x&_count=3&_total=accurate", headers=headers)
    ).json()
    url = next_url(first)
    assert url is not None
    token = url.rpartition("_cursor=")[2]
    got = await gateway.get(
        f"/fhir/Observation?code=x&_count=3&_summary=count&_cursor={token}", headers=headers
    )
    assert got.status_code == 400


async def test_total_only_when_exact(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: Upstream
) -> None:
    """A page that is not the whole result has no ``total`` (the upstream's 99 never passes);
    a first page holding the whole result, every match judged, has the released count."""
    headers = doctor(tokens)
    paged = (await gateway.get("/fhir/Observation?code=x&_count=3", headers=headers)).json()
    assert "total" not in paged
    whole = (await gateway.get("/fhir/Condition?code=x", headers=headers)).json()
    assert ids(whole) == ["c2", "c3"]
    assert whole["total"] == 2
    before = len(upstream.sent)
    counted = (await gateway.get("/fhir/Condition?code=x&_total=accurate", headers=headers)).json()
    assert counted["total"] == 2
    assert len(upstream.sent) == before + 1  # the whole page was its own count
    for query in ("code=x&_offset=1", "code=x&_total=none", "code=x&_count=1"):
        got = (await gateway.get(f"/fhir/Condition?{query}", headers=headers)).json()
        assert "total" not in got, query


async def test_a_patient_context_count_is_pinned_to_its_compartment(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: Upstream
) -> None:
    got = await gateway.get(
        "/fhir/Observation?code=x&_summary=count", headers=tokens.patient("p2", "patient/*.rs")
    )
    assert got.status_code == 200
    assert got.json()["total"] == VISIBLE  # p2's own; p1's withheld
    assert ("patient", "Patient/p2") in upstream.sent[0]
    other = await gateway.get(
        "/fhir/Observation?subject=Patient/p1&_summary=count",
        headers=tokens.patient("p2", "patient/*.rs"),
    )
    assert other.status_code == 403  # as the same search without the count


@pytest.mark.parametrize(
    "limits",
    [
        {"count_max_resources": 4},
        {"count_max_resources": 5, "count_max_walked": 6},
        {"count_max_pages": 2},
    ],
    ids=["released", "walked", "pages"],
)
async def test_beyond_the_cap_a_count_is_too_costly(
    make_app: Any, dev_key_file: Path, tokens: Tokens, upstream: Upstream, limits: dict[str, int]
) -> None:
    async for client in _gateway(make_app, dev_key_file, tokens, **limits):
        for query in ("code=x&_summary=count", "code=x&_total=accurate&_count=3"):
            got = await client.get(f"/fhir/Observation?{query}", headers=doctor(tokens))
            assert got.status_code == 422
            issue = got.json()["issue"][0]
            assert issue["code"] == "too-costly"
            assert "o1" not in got.text
            assert "p1" not in got.text


async def test_a_paging_link_off_the_upstream_is_not_followed(
    gateway: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    bundle = page([("o2", "p2")], None)
    bundle["link"].append({"relation": "next", "url": "http://elsewhere.test/fhir/Observation"})
    router.get("/Encounter").mock(return_value=httpx.Response(200, json=bundle))
    got = await gateway.get("/fhir/Encounter?_summary=count", headers=doctor(tokens))
    assert got.status_code == 502


async def test_a_count_is_recorded_for_the_patients_counted(
    gateway: httpx.AsyncClient, tokens: Tokens, store: LogStore, signer: SigningKey
) -> None:
    """The count discloses a number about p2 (a disclosure entry) and none about p1, whose
    records were judged and withheld (an access decision, not permitted)."""
    before = len(await ledger_entries(store, signer))
    got = await gateway.get("/fhir/Observation?code=x&_summary=count", headers=doctor(tokens))
    assert got.status_code == 200
    new = (await ledger_entries(store, signer))[before:]
    by_patient = {
        patient: entry
        for entry in new
        for patient in ("Patient/p1", "Patient/p2")
        if patient.encode() in entry.text
    }
    assert set(by_patient) == {"Patient/p1", "Patient/p2"}
    assert by_patient["Patient/p2"].kind is EntryKind.DISCLOSURE
    assert by_patient["Patient/p1"].kind is EntryKind.ACCESS_DECISION
    assert not by_patient["Patient/p1"].permitted
