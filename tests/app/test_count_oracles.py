"""Counts and pages that must not become oracles the caller tunes (pipeline.counting,
pipeline.release): the caller's cap counts released matches only; a refused count is recorded
with the patients it judged; a walk has a deadline and a per-process limit; a page is refilled
to the end of the result, so an empty page looks the same for a patient with hidden records and
one with none; a record's history is never counted upstream.

p1's records are hidden from the practitioner (tests.app.test_counting's consent); p2's are
visible; p3 has none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_base import LogStore
from tests.app.conftest import UPSTREAM
from tests.app.consenting import Tokens, ledger_entries
from tests.app.test_counting import _gateway, tokens
from tests.app.test_paging import doctor, page

__all__ = ["tokens"]  # the fixture, shared with test_counting

RECORDS = {
    "p1": [("o1", "p1"), ("o5", "p1")],
    "p2": [("o2", "p2"), ("o3", "p2"), ("o4", "p2"), ("o6", "p2"), ("o7", "p2")],
    "p3": [],
}


def by_patient(request: httpx.Request) -> httpx.Response:
    """One page of the records of every patient the ``patient`` criterion names."""
    params = dict(parse_qsl(request.url.query.decode()))
    wanted = [v.removeprefix("Patient/") for v in params.get("patient", "").split(",")]
    return httpx.Response(200, json=page([r for p in wanted for r in RECORDS.get(p, [])], None))


# -- the caller's cap counts released matches only -------------------------------------------


async def test_padding_a_count_to_the_cap_tells_nothing_of_a_hidden_patient(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """The attack: with a cap of 5, ``patient=p2`` alone counts 5 (p2's visible records);
    ``patient=p2,p1`` walks 7 upstream matches. A cap on matches walked answered it 422 and
    ``patient=p2,p3`` 200: whether hidden p1 has records, one bit a query. The cap counts
    released matches: both are 200 with total 5."""
    router.get("/Observation").mock(side_effect=by_patient)
    async for client in _gateway(make_app, dev_key_file, tokens, count_max_resources=5):
        answers = {}
        for query in ("patient=p2,p1", "patient=p2,p3", "patient=p1", "patient=p3"):
            got = await client.get(
                f"/fhir/Observation?{query}&_summary=count", headers=doctor(tokens)
            )
            answers[query] = (got.status_code, got.json().get("total"))
        assert answers["patient=p2,p1"] == answers["patient=p2,p3"] == (200, 5)
        assert answers["patient=p1"] == answers["patient=p3"] == (200, 0)


async def test_the_cap_is_of_released_matches(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """More released matches than the cap is the caller's 422 ``too-costly`` (its own data)."""
    router.get("/Observation").mock(side_effect=by_patient)
    async for client in _gateway(make_app, dev_key_file, tokens, count_max_resources=4):
        got = await client.get(
            "/fhir/Observation?patient=p2&_summary=count", headers=doctor(tokens)
        )
        assert got.status_code == 422
        assert got.json()["issue"][0]["code"] == "too-costly"


# -- a refused count is recorded with the patients it judged ---------------------------------


async def test_a_refused_count_is_recorded_for_the_patients_it_judged(
    make_app: Any,
    dev_key_file: Path,
    tokens: Tokens,
    router: respx.Router,
    store: LogStore,
    signer: SigningKey,
) -> None:
    """A count refused after judging (422 beyond the cap) probed p1's records: p1's audit
    must show it. Its entries name p1 and p2 (access decisions, nothing disclosed), not one
    entry naming no patient."""
    router.get("/Observation").mock(side_effect=by_patient)
    async for client in _gateway(make_app, dev_key_file, tokens, count_max_resources=4):
        before = len(await ledger_entries(store, signer))
        got = await client.get(
            "/fhir/Observation?patient=p2,p1&_summary=count", headers=doctor(tokens)
        )
        assert got.status_code == 422
        new = (await ledger_entries(store, signer))[before:]
        named = {p for e in new for p in ("Patient/p1", "Patient/p2") if p.encode() in e.text}
        assert named == {"Patient/p1", "Patient/p2"}
        assert all(e.kind is EntryKind.ACCESS_DECISION and not e.permitted for e in new)


async def test_a_count_failing_upstream_midway_is_recorded_for_the_patients_judged(
    make_app: Any,
    dev_key_file: Path,
    tokens: Tokens,
    router: respx.Router,
    store: LogStore,
    signer: SigningKey,
) -> None:
    """The upstream fails on the second page (502): the first page, p1's record on it, was
    judged; the refusal's entries name p1."""

    def failing(request: httpx.Request) -> httpx.Response:
        if dict(parse_qsl(request.url.query.decode())).get("_offset") == "1":
            return httpx.Response(500, json={"resourceType": "OperationOutcome"})
        bundle = page([("o1", "p1")], None)
        bundle["link"].append({"relation": "next", "url": f"{UPSTREAM}/Observation?_offset=1"})
        return httpx.Response(200, json=bundle)

    router.get("/Observation").mock(side_effect=failing)
    async for client in _gateway(make_app, dev_key_file, tokens):
        before = len(await ledger_entries(store, signer))
        got = await client.get("/fhir/Observation?_summary=count", headers=doctor(tokens))
        assert got.status_code == 502
        new = (await ledger_entries(store, signer))[before:]
        assert any(b"Patient/p1" in e.text for e in new)


# -- a walk's deadline and the counts at once ------------------------------------------------


async def test_a_count_beyond_its_deadline_is_503_with_retry_after(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """An upstream that answers each page slowly, with a next page each time: the walk stops
    at the deadline (each page within the upstream timeouts, the whole walk not)."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        offset = int(dict(parse_qsl(request.url.query.decode())).get("_offset", "0"))
        bundle = page([(f"o{offset}", "p2")], None)
        url = f"{UPSTREAM}/Observation?_offset={offset + 1}"
        bundle["link"].append({"relation": "next", "url": url})
        return httpx.Response(200, json=bundle)

    router.get("/Observation").mock(side_effect=slow)
    async for client in _gateway(make_app, dev_key_file, tokens, count_deadline_seconds=0.2):
        for query in ("_summary=count", "_total=accurate&_count=1"):
            got = await client.get(f"/fhir/Observation?{query}", headers=doctor(tokens))
            assert got.status_code == 503
            assert got.headers["retry-after"] == "1"


async def test_counts_beyond_the_process_limit_are_429(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """One count at a time: a second count while the first walks is 429 with Retry-After,
    not queued; once the first is done, counting works again."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return httpx.Response(200, json=page([("o2", "p2")], None))

    router.get("/Observation").mock(side_effect=held)
    async for client in _gateway(make_app, dev_key_file, tokens, count_max_concurrent=1):
        h = doctor(tokens)
        first = asyncio.create_task(client.get("/fhir/Observation?_summary=count", headers=h))
        await asyncio.wait_for(entered.wait(), 5)
        second = await client.get("/fhir/Observation?_summary=count", headers=h)
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        release.set()
        assert (await first).json()["total"] == 1
        again = await client.get("/fhir/Observation?_summary=count", headers=h)
        assert again.status_code == 200


# -- refilling a page to the end of the result -----------------------------------------------

MANY = {"p1": [(f"h{i}", "p1") for i in range(12)], "p3": []}


def paged(request: httpx.Request) -> httpx.Response:
    """A patient's records ``_count`` at a time (``_offset`` in the next link)."""
    q = dict(parse_qsl(request.url.query.decode()))
    pid = q.get("subject", "").removeprefix("Patient/")
    offset, size = int(q.get("_offset", "0")), int(q.get("_count", "1000"))
    records = MANY.get(pid, [])
    bundle = page(records[offset : offset + size], None)
    if offset + size < len(records):
        url = f"{UPSTREAM}/Observation?subject=Patient/{pid}&_count={size}&_offset={offset + size}"
        bundle["link"].append({"relation": "next", "url": url})
    return httpx.Response(200, json=bundle)


def shape(got: httpx.Response) -> tuple[int, Any, list[str], int]:
    body = got.json()
    relations = [link["relation"] for link in body.get("link", [])]
    return got.status_code, body.get("total"), relations, len(body.get("entry", []))


async def test_an_empty_page_looks_the_same_with_hidden_records_or_none(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """The attack: ``_count=1`` on p1 (12 hidden records, one an upstream page) came back
    empty with a ``next`` cursor and no total once the refill stopped after 8 pages; p3 (no
    records) gets total 0 and no next. The page is refilled to the end of the result: both
    are an empty page, total 0, no next."""
    router.get("/Observation").mock(side_effect=paged)
    async for client in _gateway(make_app, dev_key_file, tokens):
        hidden, none = [
            await client.get(
                f"/fhir/Observation?subject=Patient/{p}&_count=1", headers=doctor(tokens)
            )
            for p in ("p1", "p3")
        ]
        assert shape(hidden) == shape(none) == (200, 0, ["self"], 0)


async def test_a_refill_stops_at_the_walks_hard_limit(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """The remaining bit: beyond ``count_max_pages`` upstream pages the page is released short
    with its cursor (more hidden matches than the walk's limit follow)."""
    router.get("/Observation").mock(side_effect=paged)
    async for client in _gateway(make_app, dev_key_file, tokens, count_max_pages=4):
        got = await client.get(
            "/fhir/Observation?subject=Patient/p1&_count=1", headers=doctor(tokens)
        )
        assert shape(got) == (200, None, ["self", "next"], 0)
        assert len(router.calls) == 4


async def test_a_refill_stops_at_the_walks_deadline(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """A page refill is bounded in time like a count: an upstream answering each page slowly
    holds one ``_count=1`` search no longer than ``count_deadline_seconds`` (it walked up to
    count_max_pages round trips), then the page is released short with its cursor."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return paged(request)

    router.get("/Observation").mock(side_effect=slow)
    async for client in _gateway(make_app, dev_key_file, tokens, count_deadline_seconds=0.12):
        got = await client.get(
            "/fhir/Observation?subject=Patient/p1&_count=1", headers=doctor(tokens)
        )
        assert shape(got) == (200, None, ["self", "next"], 0)
        assert 2 <= len(router.calls) <= 5  # 12 pages without the deadline


# -- a record's history is never counted upstream --------------------------------------------


@pytest.mark.parametrize("query", ["_summary=count", "_count=0", "_total=accurate"])
async def test_a_count_of_a_records_history_is_refused_unforwarded(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router, query: str
) -> None:
    """The upstream would count every version of o2, withheld ones included: 400, and nothing
    reaches the upstream."""
    history = router.get("/Observation/o2/_history").mock(
        return_value=httpx.Response(200, json={"resourceType": "Bundle", "type": "history"})
    )
    async for client in _gateway(make_app, dev_key_file, tokens):
        got = await client.get(f"/fhir/Observation/o2/_history?{query}", headers=doctor(tokens))
        assert got.status_code == 400
        assert not history.called


async def test_an_upstream_paging_loop_ends_the_count(
    make_app: Any, dev_key_file: Path, tokens: Tokens, router: respx.Router
) -> None:
    """An upstream whose ``next`` link leads back to a page already walked: 502 at once, not
    the walk's whole page limit of upstream calls."""

    def loop(request: httpx.Request) -> httpx.Response:
        bundle = page([("o2", "p2")], None)
        bundle["link"].append({"relation": "next", "url": f"{UPSTREAM}/Observation?_offset=1"})
        return httpx.Response(200, json=bundle)

    route = router.get("/Observation").mock(side_effect=loop)
    async for client in _gateway(make_app, dev_key_file, tokens):
        got = await client.get("/fhir/Observation?_summary=count", headers=doctor(tokens))
        assert got.status_code == 502
        assert route.call_count == 2
