"""The compliance dashboard through the gateway: an auditor signs in (the development
authorization endpoint, the real SMART flow), and every page reads the gateway's own audit
and ledger APIs in-process with that token. Traffic through the proxy makes the events the
pages show; the expected numbers come from that traffic."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.web.render import CSP
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, auth_settings, observation
from tests.app.test_break_glass import BTG_SCOPE
from tests.app.test_web_compliance_api import MORNING, auditor, queue, tokens, traffic
from tests.app.web_signin import ORIGIN, SAME_ORIGIN, sign_in

__all__ = ["tokens"]  # the fixture, shared with the API tests

PAGES = ["/compliance/", "/compliance/search", "/compliance/reports", "/compliance/review",
         "/compliance/ledger"]  # fmt: skip


@pytest.fixture
async def web(
    make_app: Any, dev_key_file: Path, router: respx.Router, wall: WallClock
) -> AsyncIterator[httpx.AsyncClient]:
    wall.now = MORNING
    for patient in ("p1", "p2"):
        router.get(f"/Observation/o-{patient}").respond(
            200,
            json={**observation(f"Patient/{patient}"), "id": f"o-{patient}"},
            headers={"content-type": "application/fhir+json"},
        )
    app: Gateway = make_app(
        auth=auth_settings(dev_key_file, break_glass_scope=BTG_SCOPE, dev_signin_remote=True),
        consent_jurisdiction="opt-out",
        break_glass_minutes=10,
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
        yield client
    await app.aclose()


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_renders_for_an_auditor(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock, path: str
) -> None:
    await traffic(web, tokens, wall)
    await sign_in(web, "auditor")
    answer = await web.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["cache-control"] == "no-store"
    assert answer.text.count("<h1>") == 1
    assert 'aria-current="page"' in answer.text
    assert "<script" not in answer.text
    assert " style=" not in answer.text  # CSP has no 'unsafe-inline' for styles either


@pytest.mark.parametrize("path", [*PAGES, "/compliance/download?report=date-range&format=csv"])
async def test_no_session_and_a_patient_session_are_sent_to_sign_in(
    web: httpx.AsyncClient, path: str
) -> None:
    assert (await web.get(path)).status_code == 303
    await sign_in(web, "patient", "p1")
    answer = await web.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/compliance/signin")


async def test_overview_shows_the_counts_as_charts_and_tables(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(web, tokens, wall)
    await sign_in(web, "auditor")
    html = (await web.get("/compliance/", params={"from": "2026-03-01"})).text
    # the traffic's four, and the auditor's own look at the overview on signing in
    assert "5 accesses" in html
    assert "1 after hours" in html
    assert "1 break the glass" in html
    assert "Break-the-glass accesses waiting for review: 1" in html
    assert html.count('<svg class="chart"') == 2
    assert 'role="img"' in html
    # the text alternative: the day's row of the table, and the people table
    assert re.search(r'<th scope="row">03-10</th><td>3</td><td>1</td><td>1</td>', html)
    assert re.search(r'<th scope="row" class="mono">Practitioner/dr</th><td>3</td>', html)
    bad = await web.get("/compliance/", params={"from": "yesterday"})
    assert bad.status_code == 200
    assert "Type each day as a date" in bad.text


async def test_review_through_the_page_is_recorded(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(web, tokens, wall)
    csrf = await sign_in(web, "auditor")
    page = await web.get("/compliance/review")
    (entry,) = re.findall(r'name="entry" value="(\d+)"', page.text)
    form = {"csrf": csrf, "entry": entry, "note": "Checked with the ED."}
    done = await web.post("/compliance/review", data=form, headers=SAME_ORIGIN)
    assert done.status_code == 303
    listed = await web.get(done.headers["location"])
    assert "Review saved on the ledger as entry" in listed.text
    assert "Nothing is waiting for review." in listed.text
    assert "Checked with the ED." in listed.text
    assert (await queue(web, auditor(tokens)))["awaiting"] == []


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({}, SAME_ORIGIN),
        ({"csrf": "forged"}, SAME_ORIGIN),
        ("CSRF", {"origin": "https://evil.example"}),
        ("CSRF", {}),
    ],
    ids=["no-token", "wrong-token", "foreign-origin", "no-origin"],
)
async def test_a_forged_review_is_refused_and_records_nothing(
    web: httpx.AsyncClient,
    tokens: Tokens,
    wall: WallClock,
    form: dict[str, str] | str,
    headers: dict[str, str],
) -> None:
    """Another site cannot make a signed-in auditor's browser mark an access reviewed."""
    await traffic(web, tokens, wall)
    csrf = await sign_in(web, "auditor")
    (waiting,) = (await queue(web, auditor(tokens)))["awaiting"]
    sent = {"csrf": csrf} if form == "CSRF" else dict(form)  # type: ignore[arg-type]
    sent.update(entry=str(waiting["entry"]), note="looks fine")
    answer = await web.post("/compliance/review", data=sent, headers=headers)
    assert answer.status_code == 403
    assert len((await queue(web, auditor(tokens)))["awaiting"]) == 1


async def test_review_needs_a_note(web: httpx.AsyncClient, tokens: Tokens, wall: WallClock) -> None:
    await traffic(web, tokens, wall)
    csrf = await sign_in(web, "auditor")
    (waiting,) = (await queue(web, auditor(tokens)))["awaiting"]
    form = {"csrf": csrf, "entry": str(waiting["entry"]), "note": "  "}
    answer = await web.post("/compliance/review", data=form, headers=SAME_ORIGIN)
    assert answer.status_code == 400
    assert "Write a note" in answer.text
    assert len((await queue(web, auditor(tokens)))["awaiting"]) == 1


# --- downloads ---


async def test_downloads_pass_the_apis_bytes_through(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(web, tokens, wall)
    await sign_in(web, "auditor")
    pdf = await web.get(
        "/compliance/download", params={"report": "accounting", "patient": "p1", "format": "pdf"}
    )
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == 'attachment; filename="accounting.pdf"'
    accounting = await web.get(
        "/compliance/download",
        params={"report": "accounting", "patient": "Patient/p1", "format": "csv"},
    )
    assert accounting.status_code == 200
    # the verifiable export (consentry-audit-export/v1), not a plain listing
    header, *records = accounting.text.splitlines()
    assert json.loads(header.removeprefix("#"))["format"] == "consentry-audit-export/v1"
    assert "dr-b" in "\n".join(records)  # p1 was disclosed to dr-b
    access = await web.get(
        "/compliance/download", params={"report": "access", "patient": "p1", "format": "ndjson"}
    )
    lines = [json.loads(line) for line in access.text.splitlines()]
    assert {line["patient"] for line in lines} == {"Patient/p1"}
    ranged = await web.get(
        "/compliance/download",
        params={"report": "date-range", "from": "2026-03-10", "to": "2026-03-10",
                "sort": "-agent", "format": "csv"},
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(ranged.text)))
    agents = [row["agent"] for row in rows if row["agent"]]
    assert agents
    assert agents == sorted(agents, reverse=True)


@pytest.mark.parametrize(
    "params",
    [
        {"report": "accounting", "patient": "../p1", "format": "pdf"},
        # dot segments: Patient/.. would be collapsed by the HTTP client to the FHIR base
        {"report": "accounting", "patient": "..", "format": "pdf"},
        {"report": "access", "patient": "Patient/.", "format": "csv"},
        {"report": "accounting", "patient": "p1", "format": "exe"},
        {"report": "date-range", "from": "tomorrow", "format": "csv"},
        {"report": "date-range", "sort": "secret", "format": "csv"},
        {"report": "everything", "format": "csv"},
    ],
    ids=["patient-path", "patient-dots", "patient-dot", "format", "day", "sort", "report"],
)
async def test_a_malformed_download_is_refused_before_the_api(
    web: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await sign_in(web, "auditor")
    answer = await web.get("/compliance/download", params=params)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")


# --- search: filters, sort and paging reach the API ---


async def test_search_filters_sort_and_pages(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(web, tokens, wall)
    await sign_in(web, "auditor")
    found = await web.get("/compliance/search", params={"run": "1", "patient": "p2"})
    assert found.status_code == 200
    patients = set(re.findall(r'<td class="mono">(Patient/[^<]+)</td>', found.text))
    assert patients == {"Patient/p2"}
    oldest = await web.get("/compliance/search", params={"run": "1", "sort": "date"})
    newest = await web.get("/compliance/search", params={"run": "1", "sort": "-date"})
    ids_old = re.findall(r'<td class="mono">(\d+-\d+)</td>', oldest.text)
    ids_new = re.findall(r'<td class="mono">(\d+-\d+)</td>', newest.text)
    assert ids_old
    assert int(ids_old[0].split("-")[0]) < int(ids_new[0].split("-")[0])
    bad = await web.get("/compliance/search", params={"run": "1", "outcome": "99"})
    assert bad.status_code == 400
    assert "could not use these filters" in bad.text


async def test_search_pages_through_the_apis_cursor(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    reader = tokens.bearer("dr", "user/*.rs", fhir_user="Practitioner/dr")
    for _ in range(60):
        assert (await web.get("/fhir/Observation/o-p2", headers=reader)).status_code == 200
    await sign_in(web, "auditor")
    first = await web.get("/compliance/search", params={"run": "1", "subtype": "read"})
    link = re.search(r'<a class="button secondary" href="([^"]+)">Next page', first.text)
    assert link is not None
    target = link.group(1).replace("&amp;", "&")
    assert "cursor=" in target
    assert "subtype=read" in target
    second = await web.get(target)
    assert second.status_code == 200
    seen_first = set(re.findall(r'<td class="mono">(\d+-\d+)</td>', first.text))
    seen_second = set(re.findall(r'<td class="mono">(\d+-\d+)</td>', second.text))
    assert seen_second
    assert not seen_first & seen_second
    # a cursor is bound to its filters: the same cursor with another filter is refused
    moved = target.replace("subtype=read", "subtype=search-type")
    assert (await web.get(moved)).status_code == 400


async def test_ledger_page_shows_the_latest_checkpoint(web: httpx.AsyncClient) -> None:
    await sign_in(web, "auditor")
    checkpoint = await web.get("/ledger/checkpoint")
    html = (await web.get("/compliance/ledger")).text
    if checkpoint.status_code == 200:
        origin, size, root = checkpoint.text.split("\n")[:3]
        assert origin in html
        assert f"{size} entries" in html
        assert root in html
    else:
        assert "no signed checkpoint yet" in html
    assert "No witness has signed this checkpoint." in html
