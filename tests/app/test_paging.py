"""Paging through the gateway: full pages (no count oracle), sealed cursors, every page judged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.conftest import UPSTREAM, WallClock
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, observation, r5_consent

DR = "Practitioner/dr"


def page(ids: list[tuple[str, str]], next_offset: int | None) -> dict[str, Any]:
    """An upstream searchset page of Observations ``(id, patient)``."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 99,
        "link": [{"relation": "self", "url": f"{UPSTREAM}/Observation?code=x&_count=3"}],
        "entry": [
            {
                "fullUrl": f"{UPSTREAM}/Observation/{oid}",
                "resource": {**observation(f"Patient/{pid}"), "id": oid},
                "search": {"mode": "match"},
            }
            for oid, pid in ids
        ],
    }
    if next_offset is not None:
        bundle["link"].append(
            {
                "relation": "next",
                "url": f"{UPSTREAM}/Observation?code=x&_count=3&_offset={next_offset}",
            }
        )
    return bundle


PAGES = {
    "0": page([("o1", "p1"), ("o2", "p2"), ("o3", "p2")], 3),
    "3": page([("o4", "p2"), ("o5", "p1"), ("o6", "p2")], 6),
    "6": page([("o7", "p2")], None),
}


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path, router: respx.Router, tokens: Tokens
) -> AsyncIterator[httpx.AsyncClient]:
    def serve(request: httpx.Request) -> httpx.Response:
        offset = parse_qs(request.url.query.decode()).get("_offset", ["0"])[0]
        return httpx.Response(200, json=PAGES[offset])

    router.get("/Observation").mock(side_effect=serve)
    app: Gateway = make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        body = r5_consent(
            "Patient/p1", "permit", provision=[{"actor": [{"reference": {"reference": DR}}]}]
        )
        created = await client.post("/fhir/Consent", json=body, headers=tokens.patient("p1"))
        assert created.status_code == 201
        yield client
    await app.aclose()


def doctor(tokens: Tokens, sub: str = "dr") -> dict[str, str]:
    return tokens.bearer(sub, "user/*.rs", fhir_user=DR)


def ids(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def next_url(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


async def test_pages_stay_full_and_continue_where_they_stopped(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Count oracle: if the page shrank to the entries left after filtering, a practitioner
    would learn how many hidden records matched. Every page holds ``_count`` matches, made up
    from later upstream pages, and paging resumes exactly after the last one released."""
    headers = doctor(tokens)
    first = (await gateway.get("/fhir/Observation?code=x&_count=3", headers=headers)).json()
    assert ids(first) == ["o2", "o3", "o4"]
    assert "total" not in first
    seen = ids(first)
    url = next_url(first)
    while url is not None:
        assert UPSTREAM not in url
        assert "_offset" not in url
        answer = await gateway.get(url, headers=headers)
        assert answer.status_code == 200
        body = answer.json()
        seen += ids(body)
        url = next_url(body)
    assert seen == ["o2", "o3", "o4", "o6", "o7"]  # every visible match once, none of p1's


async def test_a_cursor_is_bound_to_its_caller(gateway: httpx.AsyncClient, tokens: Tokens) -> None:
    """Stolen cursor: another principal replaying a practitioner's next link gets 400."""
    first = (await gateway.get("/fhir/Observation?code=x&_count=3", headers=doctor(tokens))).json()
    url = next_url(first)
    assert url is not None
    stolen = await gateway.get(url, headers=doctor(tokens, sub="mallory"))
    assert stolen.status_code == 400


async def test_a_cursor_is_bound_to_its_query_and_cannot_be_altered(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    headers = doctor(tokens)
    first = (await gateway.get("/fhir/Observation?code=x&_count=3", headers=headers)).json()
    url = next_url(first)
    assert url is not None
    token = parse_qs(urlsplit(url).query)["_cursor"][0]
    other_query = await gateway.get(
        f"/fhir/Observation?code=y&_count=3&_cursor={token}", headers=headers
    )
    assert other_query.status_code == 400
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    altered = await gateway.get(
        f"/fhir/Observation?code=x&_count=3&_cursor={flipped}", headers=headers
    )
    assert altered.status_code == 400


async def test_a_cursor_expires(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    headers = doctor(tokens)
    first = (await gateway.get("/fhir/Observation?code=x&_count=3", headers=headers)).json()
    url = next_url(first)
    assert url is not None
    wall.now += 900  # cursor_ttl_seconds
    assert (await gateway.get(url, headers=headers)).status_code == 400


async def test_every_page_is_judged_again(gateway: httpx.AsyncClient, tokens: Tokens) -> None:
    """A consent recorded between two pages applies to the next page: p2 now refuses too."""
    headers = doctor(tokens)
    first = (await gateway.get("/fhir/Observation?code=x&_count=3", headers=headers)).json()
    url = next_url(first)
    assert url is not None
    body = r5_consent(
        "Patient/p2", "permit", provision=[{"actor": [{"reference": {"reference": DR}}]}]
    )
    created = await gateway.post("/fhir/Consent", json=body, headers=tokens.patient("p2"))
    assert created.status_code == 201
    second = (await gateway.get(url, headers=headers)).json()
    assert ids(second) == []
    assert next_url(second) is None
