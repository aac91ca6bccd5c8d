"""Break-the-glass through the gateway: allowed only by the token, time-boxed, refused by a
patient's "no break-the-glass" consent, and recorded as reviewed emergency-override events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.audit.searchset import BREAK_GLASS_TAG
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryFlag
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.web.access_rows import rows
from tests.app.conftest import WallClock
from tests.app.consenting import (
    ACT_REASON,
    DEV_ISSUER,
    Tokens,
    auth_settings,
    ledger_entries,
    observation,
    r5_consent,
)

BTG_SCOPE = "consentry/break-glass"
DR = "Practitioner/dr"


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
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


async def deny_dr(client: httpx.AsyncClient, tokens: Tokens, patient: str, **extra: Any) -> None:
    """``patient`` refuses Practitioner/dr (R5: an exception to a permitting base)."""
    provision: dict[str, Any] = {"actor": [{"reference": {"reference": DR}}]}
    body = r5_consent(f"Patient/{patient}", "permit", provision=[provision, *extra.get("more", [])])
    answer = await client.post("/fhir/Consent", json=body, headers=tokens.patient(patient))
    assert answer.status_code == 201, answer.text


def doctor(tokens: Tokens, *, glass: bool) -> dict[str, str]:
    scopes = "user/*.rs" + (f" {BTG_SCOPE}" if glass else "")
    return tokens.bearer("dr", scopes, fhir_user=DR)


async def test_emergency_access_needs_the_tokens_permission(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """A clinician without the break-the-glass scope cannot talk its way past a denial."""
    await deny_dr(gateway, tokens, "p1")
    headers = {**doctor(tokens, glass=False), "x-break-glass-reason": "unconscious patient"}
    answer = await gateway.get("/fhir/Observation/o-p1", headers=headers)
    assert answer.status_code == 403


async def test_emergency_access_overrides_a_denial_for_a_time_box_and_is_recorded(
    gateway: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    wall: WallClock,
    signer: SigningKey,
) -> None:
    await deny_dr(gateway, tokens, "p1")
    plain = doctor(tokens, glass=True)
    assert (await gateway.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404

    before = len(await ledger_entries(store, signer))
    asked = {**plain, "x-break-glass-reason": "unconscious patient in ED"}
    answer = await gateway.get("/fhir/Observation/o-p1", headers=asked)
    assert answer.status_code == 200
    new = (await ledger_entries(store, signer))[before:]
    started = [e for e in new if b"110127" in e.text]
    assert len(started) == 1
    assert started[0].leaf.flags & EntryFlag.BREAK_THE_GLASS
    assert b"review" in started[0].text.lower()
    assert b"unconscious patient in ED" in started[0].text
    assert b"unconscious" not in started[0].evidence  # sealed: the stored bytes hide it
    disclosed = [e for e in new if e.leaf.flags & EntryFlag.BREAK_THE_GLASS and e not in started]
    assert disclosed, "the exchange itself is flagged"

    # Within the session the header is not needed again; no second start is recorded.
    wall.now += 5 * 60
    assert (await gateway.get("/fhir/Observation/o-p1", headers=plain)).status_code == 200
    assert sum(b"110127" in e.text for e in await ledger_entries(store, signer)) == 1

    # After the time box the denial stands again, and the session's stop is recorded.
    wall.now += 6 * 60
    assert (await gateway.get("/fhir/Observation/o-p1", headers=plain)).status_code == 404
    stopped = [e for e in await ledger_entries(store, signer) if b"110138" in e.text]
    assert len(stopped) == 1
    assert stopped[0].leaf.flags & EntryFlag.BREAK_THE_GLASS


async def test_a_patients_no_break_the_glass_consent_is_honoured(
    gateway: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, signer: SigningKey
) -> None:
    """p2 refused emergency access in advance (a provision denying purpose BTG): the
    emergency request gets the same 404 as any denied read, and no override is recorded."""
    refuse_btg = {"purpose": [{"system": ACT_REASON, "code": "BTG"}]}
    await deny_dr(gateway, tokens, "p2", more=[refuse_btg])
    asked = {**doctor(tokens, glass=True), "x-break-glass-reason": "unconscious patient"}
    answer = await gateway.get("/fhir/Observation/o-p2", headers=asked)
    assert answer.status_code == 404
    assert not any(b"110127" in e.text for e in await ledger_entries(store, signer))


async def test_writes_are_never_overridden(
    gateway: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    """Emergency access is for reading: a write to a refusing patient's record stays refused."""
    await deny_dr(gateway, tokens, "p1")
    created = router.post("/Observation").respond(201)
    headers = {
        **tokens.bearer("dr", f"user/*.cruds {BTG_SCOPE}", fhir_user=DR),
        "x-break-glass-reason": "unconscious patient",
    }
    answer = await gateway.post(
        "/fhir/Observation", json=observation("Patient/p1"), headers=headers
    )
    assert answer.status_code == 403
    assert not created.called


async def test_a_session_board_that_cannot_take_the_claim_answers_503_and_releases_nothing(
    make_app: Any, dev_key_file: Path, router: respx.Router, tokens: Tokens, tmp_path: Path
) -> None:
    """Workers of a SQLite store share sessions through ``<store>.sessions``; when that file
    cannot be written the emergency read fails closed with a retryable 503 (red before: the
    raw sqlite3.Error answered 500)."""
    router.get("/Observation/o-p1").respond(
        200,
        json={**observation("Patient/p1"), "id": "o-p1"},
        headers={"content-type": "application/fhir+json"},
    )
    (tmp_path / "x.db.sessions").write_bytes(b"not a database, " * 512)
    app: Gateway = make_app(
        auth=auth_settings(dev_key_file, break_glass_scope=BTG_SCOPE),
        consent_jurisdiction="opt-out",
        break_glass_minutes=10,
        store=f"sqlite:{tmp_path / 'x.db'}",
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        await deny_dr(client, tokens, "p1")
        asked = {**doctor(tokens, glass=True), "x-break-glass-reason": "unconscious patient"}
        answer = await client.get("/fhir/Observation/o-p1", headers=asked)
        assert answer.status_code == 503
        assert answer.headers["retry-after"]
        assert "o-p1" not in answer.text
    await app.aclose()


async def test_the_patient_sees_the_emergency_read_tagged_as_such(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """The leaf's break-the-glass flag is not in the rendered events (the decision event says
    deny, the RESTful event success), so the patient's "who looked at my record" showed the
    emergency read as refused. Served events of a flagged entry carry BREAK_GLASS_TAG; a plain
    refused read's events do not."""
    await deny_dr(gateway, tokens, "p1")
    glass = doctor(tokens, glass=True)
    assert (await gateway.get("/fhir/Observation/o-p1", headers=glass)).status_code == 404
    asked = {**glass, "x-break-glass-reason": "unconscious patient in ED"}
    assert (await gateway.get("/fhir/Observation/o-p1", headers=asked)).status_code == 200
    found = await gateway.get(
        "/fhir/AuditEvent",
        params={"patient": "Patient/p1"},
        headers=tokens.patient("p1", "patient/AuditEvent.rs"),
    )
    assert found.status_code == 200, found.text
    events = [e["resource"] for e in found.json()["entry"]]
    tagged = {e["id"].partition("-")[0] for e in events if BREAK_GLASS_TAG in e["meta"]["tag"]}
    reads = {
        e["id"].partition("-")[0]
        for e in events
        if {"code": "read"} in [{"code": s.get("code")} for s in e.get("subtype", [])]
    }
    assert len(reads) == 2  # the refused read and the emergency read
    assert len(reads & tagged) == 1
    page = rows(found.json(), "Patient/p1")
    emergency = [r for r in page if r.index is not None and str(r.index) in reads & tagged]
    refused = [r for r in page if r.index is not None and str(r.index) in reads - tagged]
    assert emergency[0].allowed
    assert emergency[0].break_glass
    assert not refused[0].allowed
    assert not refused[0].break_glass
