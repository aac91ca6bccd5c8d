"""The compliance reviewer's operations of the AuditEvent API (``$overview``, ``$review``,
``$date-range``, ``Patient/<id>/$access-report``) over real parts: traffic through the proxy
is recorded on a memory ledger, then counted, reviewed and reported through the gateway. The
expected counts come from the traffic the test sent."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pypdf import PdfReader

from middleware.app import Gateway
from middleware.audit import report_http
from middleware.audit.reviews import REVIEW_TYPE
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import (
    DEV_ISSUER,
    Recorded,
    Tokens,
    auth_settings,
    ledger_entries,
    observation,
)
from tests.app.test_break_glass import BTG_SCOPE, deny_dr, doctor

AUDITOR_ROLE = "ledger-auditor"
# A Tuesday at 10:00 UTC: inside business hours (the default window is 19:00-07:00 UTC).
MORNING = datetime(2026, 3, 10, 10, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def gateway(
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
        auth=auth_settings(dev_key_file, break_glass_scope=BTG_SCOPE),
        consent_jurisdiction="opt-out",
        break_glass_minutes=10,
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client
    await app.aclose()


def auditor(tokens: Tokens, sub: str = "officer") -> dict[str, str]:
    headers = tokens.bearer(
        sub, "user/AuditEvent.rs", fhir_user=f"Practitioner/{sub}", roles=[AUDITOR_ROLE]
    )
    return {"authorization": headers["authorization"]}  # a form's own content type


async def traffic(client: httpx.AsyncClient, tokens: Tokens, wall: WallClock) -> None:
    """Two ordinary reads of p2 by dr, one read of p1 by dr-b early in the morning, and one
    emergency read of p1 (which refused dr) by dr."""
    plain = doctor(tokens, glass=False)
    for _ in range(2):
        assert (await client.get("/fhir/Observation/o-p2", headers=plain)).status_code == 200
    await deny_dr(client, tokens, "p1")
    wall.now = MORNING - 4 * 3600  # 06:00 UTC: after hours
    other = tokens.bearer("dr-b", "user/*.rs", fhir_user="Practitioner/dr-b")
    assert (await client.get("/fhir/Observation/o-p1", headers=other)).status_code == 200
    wall.now = MORNING + 3600
    asked = {**doctor(tokens, glass=True), "x-break-glass-reason": "unconscious patient"}
    assert (await client.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    wall.now = MORNING + 2 * 3600


async def overview(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    answer = await client.get(
        "/fhir/AuditEvent/$overview", params={"date": "ge2026-03-01"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body: dict[str, Any] = answer.json()
    return body


async def test_overview_counts_the_periods_accesses(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(gateway, tokens, wall)
    body = await overview(gateway, auditor(tokens))
    totals = body["totals"]
    assert totals["accesses"] == 4
    assert totals["after_hours"] == 1
    assert totals["break_glass"] == 1
    assert totals["awaiting_review"] == 1
    assert body["users"][0] == {"agent": "Practitioner/dr", "accesses": 3}
    assert {"agent": "Practitioner/dr-b", "accesses": 1} in body["users"]
    (day,) = body["buckets"]
    assert (day["business"], day["after_hours"], day["break_glass"]) == (2, 1, 1)
    assert body["truncated"] is False


async def test_overview_is_refused_to_anybody_but_an_auditor(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """A patient (even with its AuditEvent scope) and a clinician are 403; no token is 401."""
    patient = tokens.patient("p1", "patient/AuditEvent.rs")
    assert (await gateway.get("/fhir/AuditEvent/$overview", headers=patient)).status_code == 403
    clinician = tokens.bearer("dr", "user/AuditEvent.rs", fhir_user="Practitioner/dr")
    assert (await gateway.get("/fhir/AuditEvent/$overview", headers=clinician)).status_code == 403
    assert (await gateway.get("/fhir/AuditEvent/$overview")).status_code == 401


async def test_every_overview_is_itself_recorded(
    gateway: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, signer: SigningKey
) -> None:
    before = len(await ledger_entries(store, signer))
    await overview(gateway, auditor(tokens))
    after = await ledger_entries(store, signer)
    assert len(after) == before + 1
    assert b"Practitioner/officer" in after[-1].text


def reviewing(entry: Recorded) -> bool:
    """Whether ``entry`` is a review's admin entry."""
    return entry.kind == EntryKind.ADMIN and REVIEW_TYPE.encode() in entry.evidence


async def queue(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    answer = await client.get("/fhir/AuditEvent/$review", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_review_is_recorded_on_the_ledger_and_leaves_the_queue(
    gateway: httpx.AsyncClient,
    tokens: Tokens,
    wall: WallClock,
    store: MemoryLogStore,
    signer: SigningKey,
) -> None:
    await traffic(gateway, tokens, wall)
    officer = auditor(tokens)
    (waiting,) = (await queue(gateway, officer))["awaiting"]
    assert waiting["patient"] == "Patient/p1"
    assert waiting["agent"] == "Practitioner/dr"
    form = {"entry": str(waiting["entry"]), "note": "Checked with the ED:\r\nunconscious."}
    answer = await gateway.post("/fhir/AuditEvent/$review", data=form, headers=officer)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["reviewer"] == "Practitioner/officer"  # from the token, not the form

    entries = await ledger_entries(store, signer)
    (admin,) = [e for e in entries if reviewing(e)]
    assert admin.index == made["review"]
    recorded = json.loads(admin.evidence)
    assert recorded == {
        "type": REVIEW_TYPE,
        "entry": waiting["entry"],
        "reviewer": "Practitioner/officer",
        "note": form["note"],
    }
    after = await queue(gateway, officer)
    assert after["awaiting"] == []
    assert after["reviewed"][0]["entry"] == waiting["entry"]
    assert (await overview(gateway, officer))["totals"]["awaiting_review"] == 0
    # The same access cannot be reviewed twice.
    again = await gateway.post("/fhir/AuditEvent/$review", data=form, headers=officer)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"note": "fine"}, 400),
        ({"entry": "x1", "note": "fine"}, 400),
        ({"entry": "9" * 19, "note": "fine"}, 400),
        ({"entry": "ENTRY", "note": ""}, 400),
        ({"entry": "ENTRY", "note": "a" * 1001}, 400),
        ({"entry": "ENTRY", "note": "fine", "reviewer": "Practitioner/someone-else"}, 400),
        ({"entry": "0", "note": "fine"}, 404),
        ({"entry": "999999", "note": "fine"}, 404),
    ],
    ids=[
        "no-entry",
        "bad-entry",
        "huge-entry",
        "empty-note",
        "long-note",
        "reviewer-field",
        "not-btg",
        "none",
    ],
)
async def test_a_malformed_review_is_refused(
    gateway: httpx.AsyncClient,
    tokens: Tokens,
    wall: WallClock,
    store: MemoryLogStore,
    signer: SigningKey,
    form: dict[str, str],
    status: int,
) -> None:
    await traffic(gateway, tokens, wall)
    officer = auditor(tokens)
    (waiting,) = (await queue(gateway, officer))["awaiting"]
    sent = {k: str(waiting["entry"]) if v == "ENTRY" else v for k, v in form.items()}
    answer = await gateway.post("/fhir/AuditEvent/$review", data=sent, headers=officer)
    assert answer.status_code == status, answer.text
    assert not [e for e in await ledger_entries(store, signer) if reviewing(e)]


async def test_only_an_auditor_may_record_a_review(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    """The clinician who broke the glass cannot mark its own access reviewed."""
    await traffic(gateway, tokens, wall)
    (waiting,) = (await queue(gateway, auditor(tokens)))["awaiting"]
    form = {"entry": str(waiting["entry"]), "note": "all fine, trust me"}
    headers = {"authorization": tokens.practitioner("user/*.cruds")["authorization"]}
    answer = await gateway.post("/fhir/AuditEvent/$review", data=form, headers=headers)
    assert answer.status_code == 403
    assert len((await queue(gateway, auditor(tokens)))["awaiting"]) == 1


async def test_the_clinician_who_broke_the_glass_cannot_review_it_as_an_auditor(
    gateway: httpx.AsyncClient,
    tokens: Tokens,
    wall: WallClock,
    store: MemoryLogStore,
    signer: SigningKey,
) -> None:
    """Attack: dr broke the glass and also holds the audit role; dr marked the own emergency
    access reviewed (201). Separation of duties: refused (403), nothing recorded, still in
    the queue; another auditor may review it."""
    await traffic(gateway, tokens, wall)
    dr = auditor(tokens, "dr")
    (waiting,) = (await queue(gateway, dr))["awaiting"]
    assert waiting["agent"] == "Practitioner/dr"
    form = {"entry": str(waiting["entry"]), "note": "fine"}
    answer = await gateway.post("/fhir/AuditEvent/$review", data=form, headers=dr)
    assert answer.status_code == 403, answer.text
    assert not [e for e in await ledger_entries(store, signer) if reviewing(e)]
    assert len((await queue(gateway, dr))["awaiting"]) == 1
    other = await gateway.post("/fhir/AuditEvent/$review", data=form, headers=auditor(tokens))
    assert other.status_code == 201, other.text


async def test_two_reviews_of_one_access_at_once_record_one(
    gateway: httpx.AsyncClient,
    tokens: Tokens,
    wall: WallClock,
    store: MemoryLogStore,
    signer: SigningKey,
) -> None:
    """Attack (race): two reviews of the same access sent together both passed the "already
    reviewed?" check before either was recorded, and both were accepted (two review entries).
    Checked and recorded under one lock per entry: one 201, the other 409."""
    await traffic(gateway, tokens, wall)
    (waiting,) = (await queue(gateway, auditor(tokens)))["awaiting"]
    entry = str(waiting["entry"])
    answers = await asyncio.gather(
        *(
            gateway.post(
                "/fhir/AuditEvent/$review",
                data={"entry": entry, "note": f"note {who}"},
                headers=auditor(tokens, who),
            )
            for who in ("officer", "officer-b", "officer-c")
        )
    )
    assert sorted(a.status_code for a in answers) == [201, 409, 409]
    assert len([e for e in await ledger_entries(store, signer) if reviewing(e)]) == 1


async def test_date_range_report_as_csv_and_ndjson(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(gateway, tokens, wall)
    officer = auditor(tokens)
    params = {"date": "ge2026-03-10", "_sort": "-agent"}
    answer = await gateway.get("/fhir/AuditEvent/$date-range", params=params, headers=officer)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert rows
    assert {"index", "agent", "patient", "date"} <= set(rows[0])
    agents = [r["agent"] for r in rows if r["agent"]]
    assert agents == sorted(agents, reverse=True)
    params["_format"] = "ndjson"
    answer = await gateway.get("/fhir/AuditEvent/$date-range", params=params, headers=officer)
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert len(lines) == len(rows) + 1  # the first report's own access is a row now
    bad = await gateway.get(
        "/fhir/AuditEvent/$date-range", params={"_sort": "secret"}, headers=officer
    )
    assert bad.status_code == 400
    params["_format"] = "pdf"
    pdf = await gateway.get("/fhir/AuditEvent/$date-range", params=params, headers=officer)
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Audit trail by date" in text
    assert rows[0]["agent"] in text


async def test_a_date_range_pdf_over_its_row_cap_is_too_costly(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await traffic(gateway, tokens, wall)
    monkeypatch.setattr(report_http, "MAX_PDF_ROWS", 2)
    got = await gateway.get(
        "/fhir/AuditEvent/$date-range", params={"_format": "pdf"}, headers=auditor(tokens)
    )
    assert got.status_code == 422
    assert got.json()["issue"][0]["code"] == "too-costly"


async def test_access_report_for_the_auditor_and_the_patient_only(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(gateway, tokens, wall)
    path = "/fhir/Patient/p1/$access-report"
    pdf = await gateway.get(path, params={"_format": "pdf"}, headers=auditor(tokens))
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    own = tokens.patient("p1", "patient/AuditEvent.rs")
    answer = await gateway.get(path, headers=own)
    assert answer.status_code == 200
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert {r["agent"] for r in rows} == {"Practitioner/dr", "Practitioner/dr-b"}
    other = tokens.patient("p2", "patient/AuditEvent.rs")
    assert (await gateway.get(path, headers=other)).status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/AuditEvent/$review"),
        ("POST", "/fhir/AuditEvent/$review"),
        ("GET", "/fhir/AuditEvent/$date-range"),
        ("GET", "/fhir/AuditEvent/$overview"),
    ],
)
async def test_a_patient_is_refused_the_reviewers_operations(
    gateway: httpx.AsyncClient, tokens: Tokens, method: str, path: str
) -> None:
    """Even with every AuditEvent scope of its own: these name other patients."""
    headers = {"authorization": tokens.patient("p1", "patient/AuditEvent.rs")["authorization"]}
    data = {"entry": "0", "note": "x"} if method == "POST" else None
    answer = await gateway.request(method, path, data=data, headers=headers)
    assert answer.status_code == 403


async def test_access_report_keeps_its_look_back_with_only_an_end_day(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    """``date=le...`` alone bounds the end; the start is the report's look-back (three
    years), as without any date: a read four years ago is not in it."""
    reader = tokens.bearer("dr", "user/*.rs", fhir_user="Practitioner/dr")
    wall.now = MORNING - 4 * 365 * 86400
    assert (await gateway.get("/fhir/Observation/o-p2", headers=reader)).status_code == 200
    wall.now = MORNING
    assert (await gateway.get("/fhir/Observation/o-p2", headers=reader)).status_code == 200
    path = "/fhir/Patient/p2/$access-report"
    for params in ({}, {"date": "le2026-03-11"}):
        answer = await gateway.get(path, params=params, headers=auditor(tokens))
        assert answer.status_code == 200, answer.text
        assert len(list(csv.DictReader(io.StringIO(answer.text)))) == 1
