"""The AuditEvent API when things fail: a store that raises during a search or a read answers
503 (the client may retry; nothing released), never 500; a bulk export past the export limit
answers its status request with a 4xx OperationOutcome (the client narrows it), not a 500."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import Tokens, auth_settings

AUDITOR_ROLE = "ledger-auditor"


class BrokenIndexStore(MemoryLogStore):
    """A memory log whose audit index raises ``failure`` (when set) on every read."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: Exception | None = None

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        if self.failure is not None:
            raise self.failure
        return await super().audit_rows(query)

    async def audit_row(self, index: int) -> AuditRow | None:
        if self.failure is not None:
            raise self.failure
        return await super().audit_row(index)


@pytest.fixture
def store() -> BrokenIndexStore:
    return BrokenIndexStore()


@pytest.fixture
async def app(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[Gateway]:
    router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    gateway = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    yield gateway
    await gateway.aclose()


@pytest.fixture
async def client(app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


def auditor(tokens: Tokens) -> dict[str, str]:
    return tokens.bearer(
        "officer", "user/AuditEvent.rs", fhir_user="Practitioner/officer", roles=[AUDITOR_ROLE]
    )


FAILURES: list[tuple[str, Exception]] = [
    ("sqlite locked", sqlite3.OperationalError("database is locked")),
    ("sqlite file gone", sqlite3.DatabaseError("file is not a database")),
    ("connection reset", ConnectionResetError(104, "Connection reset by peer")),
    ("timeout", TimeoutError()),
]
REQUESTS = [("search", "/fhir/AuditEvent"), ("read", "/fhir/AuditEvent/0-0")]


@pytest.mark.parametrize("failure", [f[1] for f in FAILURES], ids=[f[0] for f in FAILURES])
@pytest.mark.parametrize("path", [r[1] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
async def test_a_failing_store_is_503_not_500(
    client: httpx.AsyncClient,
    tokens: Tokens,
    store: BrokenIndexStore,
    failure: Exception,
    path: str,
) -> None:
    store.failure = failure
    got = await client.get(path, headers=auditor(tokens))
    assert got.status_code == 503, got.text
    outcome = got.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert str(failure) not in got.text or not str(failure)  # no driver detail released


async def test_a_bug_is_still_500(
    client: httpx.AsyncClient, tokens: Tokens, store: BrokenIndexStore
) -> None:
    store.failure = KeyError("a bug, not an outage")
    got = await client.get("/fhir/AuditEvent", headers=auditor(tokens))
    assert got.status_code == 500
    assert got.json()["resourceType"] == "OperationOutcome"


async def test_an_export_past_the_limit_is_a_4xx_outcome(
    app: Gateway, client: httpx.AsyncClient, tokens: Tokens
) -> None:
    dr = tokens.bearer("dr", "user/Patient.rs", fhir_user="Practitioner/dr")
    for _ in range(3):
        assert (await client.get("/fhir/Patient/p1", headers=dr)).status_code == 200
    assert app.audit is not None
    app.audit.jobs.max_events = 2  # three reads recorded: more than the limit
    headers = {**auditor(tokens), "prefer": "respond-async"}
    kick = await client.get("/fhir/AuditEvent/$export", headers=headers)
    assert kick.status_code == 202
    for _ in range(500):
        got = await client.get(kick.headers["content-location"], headers=auditor(tokens))
        if got.status_code != 202:
            break
        await asyncio.sleep(0.01)
    assert got.status_code in (413, 422), got.text
    outcome = got.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "_since" in outcome["issue"][0]["diagnostics"]
