"""The audit trail's HTTP exports over real parts: ``Patient/<id>/$accounting`` (FHIR Bundle,
CSV, PDF) and FHIR Bulk Data export of AuditEvent (kick-off, status, download, cancel). The
traffic is known, so what each export must hold is known independently of the gateway."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from fhir.resources.R4B.auditevent import AuditEvent
from pypdf import PdfReader

from middleware.app import Gateway
from middleware.audit.row import AuditQuery
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.storage.consent_base import LOOKUP_PURPOSE, lookup_of
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, auth_settings

AUDITOR_ROLE = "ledger-auditor"
Headers = dict[str, str]


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    for pid in ("p1", "p2"):
        router.get(f"/Patient/{pid}").respond(200, json={"resourceType": "Patient", "id": pid})
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def auditor(tokens: Tokens, sub: str = "officer") -> Headers:
    return tokens.bearer(
        sub, "user/AuditEvent.rs", fhir_user=f"Practitioner/{sub}", roles=[AUDITOR_ROLE]
    )


def clinician(tokens: Tokens, sub: str, purpose: str) -> Headers:
    return tokens.bearer(
        sub, "user/Patient.rs", fhir_user=f"Practitioner/{sub}", purpose_of_use=[purpose]
    )


async def traffic(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """dr-treat reads p1 for treatment (exempt, 164.528(a)(1)(i)); dr-research reads p1 for
    research (accountable); dr-research reads p2 for research (another patient's)."""
    treat, research = (
        clinician(tokens, "dr-treat", "TREAT"),
        clinician(tokens, "dr-research", "HRESCH"),
    )
    for path, who in (("p1", treat), ("p1", research), ("p2", research)):
        assert (await client.get(f"/fhir/Patient/{path}", headers=who)).status_code == 200


# --- $accounting ------------------------------------------------------------------------------


async def test_accounting_bundle_lists_the_accountable_disclosure_only(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    got = await client.get("/fhir/Patient/p1/$accounting", headers=auditor(tokens))
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("application/fhir+json")
    bundle = got.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "document"
    text = json.dumps(bundle)
    assert "Practitioner/dr-research" in text
    assert "dr-treat" not in text  # treatment is exempt
    assert "Patient/p2" not in text  # another patient's disclosure


@pytest.mark.parametrize(
    ("how", "kind"),
    [
        ({"params": {"_format": "csv"}}, "text/csv"),
        ({"headers": {"accept": "text/csv"}}, "text/csv"),
        ({"headers": {"accept": "application/pdf"}}, "application/pdf"),
        ({"params": {"_format": "pdf"}}, "application/pdf"),
    ],
    ids=["csv-format", "csv-accept", "pdf-accept", "pdf-format"],
)
async def test_accounting_as_csv_and_pdf(
    client: httpx.AsyncClient, tokens: Tokens, how: dict[str, Any], kind: str
) -> None:
    await traffic(client, tokens)
    headers = {**auditor(tokens), **how.get("headers", {})}
    got = await client.get(
        "/fhir/Patient/p1/$accounting", headers=headers, params=how.get("params")
    )
    assert got.status_code == 200
    assert got.headers["content-type"].startswith(kind)
    if kind == "text/csv":
        assert "dr-research" in got.text
        assert "dr-treat" not in got.text
    else:
        pdf = PdfReader(io.BytesIO(got.content))
        text = "".join(page.extract_text() for page in pdf.pages)
        assert "Accounting of disclosures" in text
        assert "dr-treat" not in text


ACCOUNTING_ACCESS: list[tuple[str, Callable[[Tokens], Headers], str, int]] = [
    ("auditor", auditor, "p1", 200),
    ("patient own", lambda t: t.patient("p1", "patient/AuditEvent.r"), "p1", 200),
    ("patient other", lambda t: t.patient("p2", "patient/AuditEvent.r"), "p1", 403),
    ("patient without scope", lambda t: t.patient("p1", "patient/Patient.r"), "p1", 403),
    ("clinician", lambda t: clinician(t, "dr-treat", "TREAT"), "p1", 403),
    ("no token", lambda t: {}, "p1", 401),
]


@pytest.mark.parametrize(
    ("caller", "pid", "status"),
    [a[1:] for a in ACCOUNTING_ACCESS],
    ids=[a[0] for a in ACCOUNTING_ACCESS],
)
async def test_who_may_read_an_accounting(
    client: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    caller: Callable[[Tokens], Headers],
    pid: str,
    status: int,
) -> None:
    await traffic(client, tokens)
    before = await store.size()
    got = await client.get(f"/fhir/Patient/{pid}/$accounting", headers=caller(tokens))
    assert got.status_code == status
    if status != 200:
        assert "dr-research" not in got.text
    # every access by a verified caller is recorded; an unauthenticated one costs nothing
    assert await store.size() == before + (0 if status == 401 else 1)


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"since": "2024"}, {}, 400),
        ({"_format": "xml"}, {}, 406),
        ({}, {"accept": "application/xml"}, 406),
    ],
    ids=["unknown-param", "format-xml", "accept-xml"],
)
async def test_accounting_refuses_what_it_cannot_answer(
    client: httpx.AsyncClient,
    tokens: Tokens,
    params: dict[str, str],
    headers: Headers,
    status: int,
) -> None:
    got = await client.get(
        "/fhir/Patient/p1/$accounting", params=params, headers={**auditor(tokens), **headers}
    )
    assert got.status_code == status
    assert got.json()["resourceType"] == "OperationOutcome"


# --- bulk export ------------------------------------------------------------------------------

ASYNC = {"prefer": "respond-async"}


async def finished(client: httpx.AsyncClient, url: str, headers: Headers) -> httpx.Response:
    """Poll ``url`` until the job is no longer running (202 with X-Progress meanwhile)."""
    for _ in range(500):
        got = await client.get(url, headers=headers)
        if got.status_code != 202:
            return got
        assert "x-progress" in got.headers
        await asyncio.sleep(0.01)
    raise AssertionError("the export never finished")


async def test_bulk_export_flow(client: httpx.AsyncClient, tokens: Tokens, wall: WallClock) -> None:
    await traffic(client, tokens)
    officer = auditor(tokens)
    searched = (
        await client.get("/fhir/AuditEvent", params={"type": "rest"}, headers=officer)
    ).json()
    traffic_ids = {e["resource"]["id"] for e in searched["entry"]}
    assert len(traffic_ids) == 3  # the three reads' RESTful events
    wall.now += 1
    kick = await client.get("/fhir/AuditEvent/$export", headers={**officer, **ASYNC})
    assert kick.status_code == 202
    status_url = kick.headers["content-location"]
    assert status_url.startswith("http://gateway.test/fhir/AuditEvent/$export-status/")
    wall.now += 1
    got = await finished(client, status_url, officer)
    assert got.status_code == 200
    manifest = got.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == "http://gateway.test/fhir/AuditEvent/$export"
    assert manifest["error"] == []
    assert {o["type"] for o in manifest["output"]} == {"AuditEvent"}
    lines: list[dict[str, Any]] = []
    for output in manifest["output"]:
        part = await client.get(output["url"], headers=officer)
        assert part.status_code == 200
        assert part.headers["content-type"] == "application/fhir+ndjson"
        got_lines = [json.loads(line) for line in part.text.splitlines()]
        assert len(got_lines) == output["count"]
        lines += got_lines
    for line in lines:
        AuditEvent.model_validate(line)
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids))
    assert traffic_ids <= set(ids)  # every traffic event, and the searches before the kick-off
    indexes = sorted({int(i.split("-")[0]) for i in ids})
    assert indexes == list(range(len(indexes)))  # no entry skipped


async def test_bulk_export_is_the_auditors_own(client: httpx.AsyncClient, tokens: Tokens) -> None:
    await traffic(client, tokens)
    kick = await client.get("/fhir/AuditEvent/$export", headers={**auditor(tokens), **ASYNC})
    status_url = kick.headers["content-location"]
    done = await finished(client, status_url, auditor(tokens))
    file_url = done.json()["output"][0]["url"]
    other = auditor(tokens, "officer-2")
    assert (await client.get(status_url, headers=other)).status_code == 404
    assert (await client.get(file_url, headers=other)).status_code == 404
    assert (await client.delete(status_url, headers=other)).status_code == 404
    assert (await client.delete(status_url, headers=auditor(tokens))).status_code == 202
    assert (await client.get(status_url, headers=auditor(tokens))).status_code == 404
    assert (await client.get(file_url, headers=auditor(tokens))).status_code == 404


KICK_OFFS: list[tuple[str, str, dict[str, str], Callable[[Tokens], Headers], Headers, int]] = [
    ("without Prefer", "/fhir/AuditEvent/$export", {}, auditor, {}, 400),
    (
        "by a patient",
        "/fhir/AuditEvent/$export",
        {},
        lambda t: t.patient("p1", "patient/AuditEvent.rs"),
        ASYNC,
        403,
    ),
    (
        "by a clinician",
        "/fhir/AuditEvent/$export",
        {},
        lambda t: clinician(t, "d", "TREAT"),
        ASYNC,
        403,
    ),
    ("no token", "/fhir/AuditEvent/$export", {}, lambda t: {}, ASYNC, 401),
    ("another type", "/fhir/AuditEvent/$export", {"_type": "Patient"}, auditor, ASYNC, 403),
    ("system level without _type", "/fhir/$export", {}, auditor, ASYNC, 403),
    ("system level of AuditEvent", "/fhir/$export", {"_type": "AuditEvent"}, auditor, ASYNC, 202),
    (
        "with _since",
        "/fhir/AuditEvent/$export",
        {"_since": "2024-01-01T00:00:00Z"},
        auditor,
        ASYNC,
        202,
    ),
    (
        "_since without time",
        "/fhir/AuditEvent/$export",
        {"_since": "2024-01-01"},
        auditor,
        ASYNC,
        400,
    ),
    ("unknown parameter", "/fhir/AuditEvent/$export", {"_typeFilter": "x"}, auditor, ASYNC, 400),
    (
        "another output format",
        "/fhir/AuditEvent/$export",
        {"_outputFormat": "text/csv"},
        auditor,
        ASYNC,
        400,
    ),
]


@pytest.mark.parametrize(
    ("path", "params", "caller", "headers", "status"),
    [k[1:] for k in KICK_OFFS],
    ids=[k[0] for k in KICK_OFFS],
)
async def test_kick_off(
    client: httpx.AsyncClient,
    tokens: Tokens,
    path: str,
    params: dict[str, str],
    caller: Callable[[Tokens], Headers],
    headers: Headers,
    status: int,
) -> None:
    got = await client.get(path, params=params, headers={**caller(tokens), **headers})
    assert got.status_code == status
    if status == 202:
        await finished(client, got.headers["content-location"], caller(tokens))
    else:
        assert got.json()["resourceType"] == "OperationOutcome"


async def test_since_after_everything_exports_nothing(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    kick = await client.get(
        "/fhir/AuditEvent/$export",
        params={"_since": "2999-01-01T00:00:00Z"},
        headers={**auditor(tokens), **ASYNC},
    )
    done = await finished(client, kick.headers["content-location"], auditor(tokens))
    assert done.json()["output"] == []


async def test_bulk_clients_headers_are_accepted(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """A Bulk Data client asks the status with ``Accept: application/json`` and the files with
    ``Accept: application/fhir+ndjson`` (FHIR Bulk Data IG v2)."""
    await traffic(client, tokens)
    officer = auditor(tokens)
    kick = await client.get(
        "/fhir/AuditEvent/$export",
        headers={**officer, **ASYNC, "accept": "application/fhir+json"},
    )
    status_url = kick.headers["content-location"]
    done = await finished(client, status_url, {**officer, "accept": "application/json"})
    assert done.status_code == 200
    assert done.headers["content-type"].startswith("application/json")
    url = done.json()["output"][0]["url"]
    got = await client.get(url, headers={**officer, "accept": "application/fhir+ndjson"})
    assert got.status_code == 200
    assert got.text.endswith("\n")


async def test_reviewing_the_audit_trail_is_not_an_accountable_disclosure(
    client: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    """The auditor's and the patient's own reviews of p1's audit trail are recorded (as access
    decisions naming p1), yet the next accounting of p1 lists neither: compliance oversight
    and the individual's own review are exempt (45 CFR 164.528(a)(1)(i), (ii))."""
    await traffic(client, tokens)
    officer = auditor(tokens)
    own = tokens.patient("p1", "patient/AuditEvent.rs")
    before = await store.size()
    assert (await client.get("/fhir/AuditEvent?patient=p1", headers=officer)).status_code == 200
    assert (await client.get("/fhir/AuditEvent", headers=own)).status_code == 200
    assert (await client.get("/fhir/Patient/p1/$accounting", headers=officer)).status_code == 200
    leaves = [decode_leaf(raw) for raw in await store.leaves(before, await store.size())]
    assert [leaf.kind for leaf in leaves] == [EntryKind.ACCESS_DECISION] * 3
    accounting = await client.get(
        "/fhir/Patient/p1/$accounting", params={"_format": "csv"}, headers=officer
    )
    assert "officer" not in accounting.text
    assert "user-p1" not in accounting.text
    assert "dr-research" in accounting.text


async def test_the_accounting_covers_the_look_back_period_only(
    client: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    """A research read seven years ago is past the six-year look-back (164.528(a)(3))."""
    now = wall.now
    wall.now = now - 7 * 366 * 86400
    research = clinician(tokens, "dr-old-research", "HRESCH")
    assert (await client.get("/fhir/Patient/p1", headers=research)).status_code == 200
    wall.now = now
    await traffic(client, tokens)
    got = await client.get(
        "/fhir/Patient/p1/$accounting", params={"_format": "csv"}, headers=auditor(tokens)
    )
    assert "dr-research" in got.text
    assert "dr-old-research" not in got.text


async def test_after_a_shred_the_accounting_names_the_shredded_period(
    client: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, signer: SigningKey,
    wall: WallClock,
) -> None:  # fmt: skip
    """p1 is crypto-shredded as ``consentry audit shred`` does it (tombstone linked by the
    keyed digest of ``Patient/p1`` under the ledger key's pseudonym-lookup key): the
    accounting no longer lists the research disclosure and says which period was erased;
    p2's accounting is untouched and names no shredded period."""
    await traffic(client, tokens)
    (row, *_) = await store.audit_rows(AuditQuery(patient="Patient/p1"))
    assert row.pseudonym is not None
    link = lookup_of(derive_box_key(signer, LOOKUP_PURPOSE), "Patient/p1")
    assert await store.shred(row.pseudonym, link=link) > 0
    officer = auditor(tokens)
    got = await client.get("/fhir/Patient/p1/$accounting", headers=officer)
    assert got.status_code == 200
    text = json.dumps(got.json())
    day = datetime.fromtimestamp(wall.now, UTC).date().isoformat()
    assert f"Records from {day} to {day} were permanently erased" in text
    assert "dr-research" not in text
    other = json.dumps((await client.get("/fhir/Patient/p2/$accounting", headers=officer)).json())
    assert "dr-research" in other
    assert "permanently erased" not in other


async def test_a_gateway_that_cached_the_patient_writes_nothing_readable_after_a_shred(
    client: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    """The running gateway cached p1's pseudonym and key before the shred. Its next entries
    for p1 (within the caches' minute) land on the shredded chain, yet the store writes their
    index rows shredded and stores no key again: no search by p1 finds them, the accounting
    lists no disclosure, and the key table holds nothing for the chain."""
    await traffic(client, tokens)
    (row, *_) = await store.audit_rows(AuditQuery(patient="Patient/p1"))
    assert row.pseudonym is not None
    await store.shred(row.pseudonym)
    before = await store.size()
    research = clinician(tokens, "dr-research", "HRESCH")
    assert (await client.get("/fhir/Patient/p1", headers=research)).status_code == 200
    after = await store.audit_rows(AuditQuery(include_shredded=True, limit=1000))
    late = [r for r in after if r.index >= before and r.pseudonym == row.pseudonym]
    assert late, "the cached pseudonym was used: entries on the shredded chain"
    assert all(r.shredded and r.patient is None for r in late)
    assert await store.audit_rows(AuditQuery(patient="Patient/p1")) == []
    assert await store.audit_key_get(row.pseudonym) is None
    got = await client.get(
        "/fhir/Patient/p1/$accounting", params={"_format": "csv"}, headers=auditor(tokens)
    )
    assert "dr-research" not in got.text
