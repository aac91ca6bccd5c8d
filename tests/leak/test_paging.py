"""Paging: upstream ``next`` links never reach the client; a cursor is redeemed only by the
caller it was issued to, for the query it was issued for, unaltered and unexpired; every page
is judged again, under the consents in force when it is fetched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from middleware.ledger.signing import SigningKey
from tests.leak.upstream import GATEWAY
from tests.leak.world import World, assert_nothing_of_p1, assert_withheld, ids_in

SEARCH = "/fhir/Observation?code=718-7&_count=1"


def next_url(answer: httpx.Response) -> str | None:
    """The ``next`` link of a search answer as a path on the gateway, or None."""
    for link in answer.json().get("link", []):
        if link["relation"] == "next":
            url: str = link["url"]
            assert url.startswith(GATEWAY + "/"), url
            return url.removeprefix("http://gateway.test")
    return None


def cursor_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["_cursor"]


def with_cursor(path_and_query: str, cursor: str) -> str:
    return f"{path_and_query}&_cursor={cursor}"


async def first_cursor(world: World) -> str:
    first = await world.http.get(SEARCH, headers=world.dr)
    url = next_url(first)
    assert url is not None
    world.router.reset()
    return cursor_of(url)


async def test_next_link_never_names_the_upstream(world: World) -> None:
    """The upstream's ``next`` link names its host and its paging state (``_getpages``): the
    client must get a gateway URL carrying an opaque cursor instead."""
    got = await world.http.get(SEARCH, headers=world.dr)
    url = next_url(got)
    assert url is not None
    assert "_getpages" not in got.text
    assert "upstream.test" not in got.text
    assert url.startswith("/fhir/Observation?code=718-7&_count=1&_cursor=")


async def test_every_page_is_judged_again(world: World) -> None:
    """Paging through ``code=718-7`` one match at a time: the upstream pages hold p1's
    Observations between p2's; no page may carry one."""
    seen: set[str] = set()
    url: str | None = SEARCH
    while url is not None:
        page = await world.http.get(url, headers=world.dr)
        assert page.status_code == 200
        assert_nothing_of_p1(page)
        seen |= ids_in(page.json())
        url = next_url(page)
    assert seen == {"Observation/obs-p2", "Observation/obs-p2b", "Observation/obs-moved"}
    assert world.upstream_answered_p1()


async def test_a_search_naming_only_p1_offers_no_next_page(world: World) -> None:
    """``Observation?subject=Patient/p1&_count=1``: an empty page that still offers a ``next``
    link tells the practitioner p1 has more hidden matches."""
    got = await world.http.get("/fhir/Observation?subject=Patient/p1&_count=1", headers=world.dr)
    assert got.status_code == 200
    assert "entry" not in got.json()
    assert next_url(got) is None


@pytest.mark.parametrize(
    "thief",
    ["patient-p2", "other-practitioner", "same-user-other-app"],
)
async def test_cursor_replayed_by_another_principal_is_refused(world: World, thief: str) -> None:
    """A cursor leaks (logs, a shared link) to someone else: redeemed by them, it would hand
    over a page searched with the practitioner's rights."""
    cursor = await first_cursor(world)
    headers = {
        "patient-p2": world.p2,
        "other-practitioner": world.tokens.bearer(
            "dr2", "user/*.cruds", fhir_user="Practitioner/dr2"
        ),
        "same-user-other-app": world.tokens.bearer(
            "dr", "user/*.cruds", fhir_user="Practitioner/dr", client_id="other-app"
        ),
    }[thief]
    got = await world.http.get(with_cursor(SEARCH, cursor), headers=headers)
    assert got.status_code == 400
    assert world.sent == []


@pytest.mark.parametrize(
    "query",
    [
        "/fhir/Observation?subject=Patient/p1&_count=1",
        "/fhir/Observation?code=718-7&_count=50",
        "/fhir/Encounter?code=718-7&_count=1",
    ],
    ids=["other-criteria", "other-count", "other-type"],
)
async def test_cursor_moved_to_another_query_is_refused(world: World, query: str) -> None:
    """The practitioner grafts a cursor of a harmless search onto another query: the page
    would be labelled with criteria it was not searched with."""
    cursor = await first_cursor(world)
    got = await world.http.get(with_cursor(query, cursor), headers=world.dr)
    assert got.status_code == 400
    assert world.sent == []


@pytest.mark.parametrize(
    "alter",
    [
        lambda c: c[:20] + ("A" if c[20] != "A" else "B") + c[21:],
        lambda c: c[:-1],
        lambda c: c + "A",
        lambda c: c[: len(c) // 2],
        lambda c: c + "&_cursor=" + c,
    ],
    ids=["flipped", "truncated", "extended", "halved", "doubled"],
)
async def test_altered_cursor_is_refused(world: World, alter: Callable[[str], str]) -> None:
    """The practitioner edits the cursor, hoping to point it at another upstream page or
    another search (an upstream link it chose)."""
    cursor = await first_cursor(world)
    got = await world.http.get(with_cursor(SEARCH, alter(cursor)), headers=world.dr)
    assert got.status_code == 400
    assert world.sent == []


async def test_expired_cursor_is_refused(world: World) -> None:
    """A cursor kept past its lifetime (15 minutes by default): paging state must not outlive
    the session it was issued in."""
    cursor = await first_cursor(world)
    world.wall.now += 15 * 60 + 1
    got = await world.http.get(with_cursor(SEARCH, cursor), headers=world.dr)
    assert got.status_code == 400
    assert world.sent == []


async def test_cursor_sealed_by_another_gateway_is_refused(
    world: World, make_world: Callable[..., Awaitable[World]]
) -> None:
    """A cursor from another deployment (another ledger key, so another cursor key) names
    that deployment's upstream pages: it must mean nothing here."""
    elsewhere = await make_world(signer=SigningKey.generate("elsewhere.test/fhir/ledger"))
    first = await elsewhere.http.get(SEARCH, headers=elsewhere.dr)
    url = next_url(first)
    assert url is not None
    got = await world.http.get(with_cursor(SEARCH, cursor_of(url)), headers=world.dr)
    assert got.status_code == 400
    assert world.sent == []


async def test_a_cursor_does_not_carry_a_permission_since_withdrawn(world: World) -> None:
    """The practitioner takes page 1 while p2 permits, then p2 records a consent denying it:
    the cursor must not carry the old permission to page 2."""
    first = await world.http.get(SEARCH, headers=world.dr)
    url = next_url(first)
    assert url is not None
    assert "Observation/obs-p2" in ids_in(first.json())
    denial = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": "Patient/p2"},
        "decision": "deny",
    }
    made = await world.http.post("/fhir/Consent", json=denial, headers=world.tokens.patient("p2"))
    assert made.status_code == 201, made.text
    page = await world.http.get(url, headers=world.dr)
    assert page.status_code == 200
    assert {i for i in ids_in(page.json()) if i.startswith("Observation/")} == set()


async def test_patient_p2_paging_stays_in_its_compartment(world: World) -> None:
    """Patient p2 pages through its own Observations: the pages behind the cursor come from
    the pinned search, and are judged again."""
    url: str | None = "/fhir/Observation?_count=1"
    seen: set[str] = set()
    while url is not None:
        page = await world.http.get(url, headers=world.p2)
        assert page.status_code == 200
        assert_nothing_of_p1(page)
        seen |= ids_in(page.json())
        url = next_url(page)
    assert "Observation/obs-p2" in seen
    assert world.sent_params()[0][-1] == ("patient", "Patient/p2")


async def test_count_zero_does_not_tell_whether_p1_has_matches(world: World) -> None:
    """``_count=0`` asks for no entries: its ``total`` or ``next`` link would count p1's
    hidden matches. It is answered by counting what the practitioner may see, in the same
    bytes for p1 (whose records exist, and are judged) and for a patient without records,
    with no ``next`` link and without the upstream ever being asked for a page of nothing.

    The test this replaces checked the links only under ``if status == 200``, a branch a
    refusal never reached: with the guard deleted, it still passed."""
    hidden = await world.http.get("/fhir/Observation?subject=Patient/p1&_count=0", headers=world.dr)
    assert_withheld(world, hidden)
    nobody = await world.http.get(
        "/fhir/Observation?subject=Patient/nobody&_count=0", headers=world.dr
    )
    for answer in (hidden, nobody):
        assert answer.status_code == 200
        assert answer.json()["total"] == 0
        assert [link["relation"] for link in answer.json()["link"]] == ["self"]
    assert hidden.json()["link"][0]["url"].endswith("Patient/p1&_count=0")
    assert hidden.json() | {"link": []} == nobody.json() | {"link": []}
    assert all(("_count", "0") not in sent for sent in world.sent_params())
