"""Which requests the gateway's AuditEvent API takes from the proxy: a system-level
``$export`` only when its ``_type`` names AuditEvent; any other system export goes to the
normal pipeline, which refuses or forwards it by its own rules (the upstream sees it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.audit.http import serves
from tests.app.consenting import Tokens, auth_settings

AUDITOR_ROLE = "ledger-auditor"

ROUTES: list[tuple[str, str, bytes, bool]] = [
    ("type search", "/fhir/AuditEvent", b"", True),
    ("read", "/fhir/AuditEvent/1-0", b"", True),
    ("type export", "/fhir/AuditEvent/$export", b"", True),
    ("system export of AuditEvent", "/fhir/$export", b"_type=AuditEvent", True),
    ("system export, AuditEvent among types", "/fhir/$export", b"_type=Patient,AuditEvent", True),
    ("system export, second _type", "/fhir/$export", b"_type=Patient&_type=AuditEvent", True),
    ("system export without _type", "/fhir/$export", b"", False),
    ("system export of Patient", "/fhir/$export", b"_type=Patient", False),
    ("system export, AuditEvent elsewhere", "/fhir/$export", b"_typeFilter=AuditEvent", False),
    ("system export, undecodable", "/fhir/$export", b"_type=\xff", False),
    ("accounting", "/fhir/Patient/p1/$accounting", b"", True),
    ("patient export", "/fhir/Patient/$export", b"_type=AuditEvent", False),
]


@pytest.mark.parametrize(
    ("path", "query", "served"), [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES]
)
def test_serves(path: str, query: bytes, served: bool) -> None:
    assert serves(path, "/fhir", query) is served


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def auditor(tokens: Tokens) -> dict[str, str]:
    return tokens.bearer(
        "officer",
        "user/AuditEvent.rs system/*.rs",
        fhir_user="Practitioner/officer",
        roles=[AUDITOR_ROLE],
    )


async def test_a_system_export_of_audit_events_is_the_audit_apis(
    client: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    headers = {**auditor(tokens), "prefer": "respond-async"}
    got = await client.get("/fhir/$export", params={"_type": "AuditEvent"}, headers=headers)
    assert got.status_code == 202
    assert "/fhir/AuditEvent/$export-status/" in got.headers["content-location"]
    for _ in range(500):  # let the job finish before the app closes
        done = await client.get(got.headers["content-location"], headers=auditor(tokens))
        if done.status_code != 202:
            break
        await asyncio.sleep(0.01)
    assert not router.calls  # never forwarded


@pytest.mark.parametrize("params", [{}, {"_type": "Patient"}], ids=["without _type", "of Patient"])
async def test_another_system_export_is_the_pipelines(
    client: httpx.AsyncClient, tokens: Tokens, params: dict[str, str]
) -> None:
    """Not the audit API's 403 "the gateway exports only its audit trail": the pipeline
    decides, and its export half admits a system-level export to a system token only (this
    auditor's token is a user's: its own refusal)."""
    headers = {**auditor(tokens), "prefer": "respond-async"}
    got = await client.get("/fhir/$export", params=params, headers=headers)
    assert got.status_code == 403
    assert "audit trail" not in got.text
    diagnostics = got.json()["issue"][0]["diagnostics"]
    assert diagnostics == "a system-level bulk export needs a system token"
