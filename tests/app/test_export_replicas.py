"""Bulk Data ``$export`` jobs are shared by replicas on one PostgreSQL store (ARCHITECTURE
"Scale": nothing in a replica's memory is needed to serve the next request). Two gateways in
this process, each with its own pools on one fresh schema and the same ledger key: a job
kicked off through A is polled, downloaded and deleted through B, for its owner only (anyone
else gets the 404 of an unknown job on B too). Failed before the PostgreSQL board: B answered
404 for A's job (it lived in A's memory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from middleware.audit.bulk import LAPSE_SECONDS, PRODUCER_GONE
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens, auth_settings
from tests.app.shared_schema import clients_of, gateways_on_one_schema
from tests.app.test_export import ASYNC, FHIR, STATUS_URL, finished, lines, patient, searchset

pytestmark = pytest.mark.integration

PEOPLE = ("p1", "p2", "p3")
AUDITOR = "ledger-auditor"


class Upstream:
    """Three patients; a search for ``Group`` (``_type=Group``) waits until ``release`` is
    set: a producer that hangs mid-export."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Group"):
            self.waiting.set()
            await self.release.wait()
            return httpx.Response(200, json=searchset(), headers=FHIR)
        if request.url.path.endswith("/Patient"):
            body = searchset(*(patient(p) for p in PEOPLE))
            return httpx.Response(200, json=body, headers=FHIR)
        return httpx.Response(404)


@dataclass
class Replicas:
    clients: list[httpx.AsyncClient]
    upstream: Upstream


@pytest.fixture
async def replicas(
    key_file: Path, make_settings: Callable[..., Settings], signer: SigningKey, wall: WallClock
) -> AsyncIterator[Replicas]:
    def settings(dsn: str) -> Settings:
        return make_settings(
            store=dsn, auth=auth_settings(key_file), consent_jurisdiction="opt-out"
        )

    upstream = Upstream()
    transport = httpx.MockTransport(upstream.handler)
    async with (
        gateways_on_one_schema(settings, signer, transport, wall_clock=wall) as shared,
        clients_of(shared.apps, peer=("203.0.113.7", 50000)) as clients,
    ):
        yield Replicas(clients, upstream)
        upstream.release.set()


async def test_a_job_kicked_off_on_a_is_polled_downloaded_and_deleted_on_b(
    replicas: Replicas, tokens: Tokens
) -> None:
    a, b = replicas.clients
    mine = tokens.bearer("ehr-backend", "system/*.rs")
    other = tokens.bearer("another-backend", "system/*.rs")
    kick = await a.get("/fhir/$export?_type=Patient", headers={**mine, **ASYNC})
    assert kick.status_code == 202, kick.text
    location = kick.headers["content-location"]
    assert STATUS_URL.fullmatch(location), location
    done = await finished(b, location, mine)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert [item["type"] for item in manifest["output"]] == ["Patient"]
    found = await lines(b, manifest, mine)
    assert sorted(r["id"] for r in found) == list(PEOPLE)
    # Another caller learns nothing on either replica: the 404 of an unknown job.
    file_url = manifest["output"][0]["url"]
    for client in (a, b):
        assert (await client.get(location, headers=other)).status_code == 404
        assert (await client.get(file_url, headers=other)).status_code == 404
        assert (await client.delete(location, headers=other)).status_code == 404
    # Deleted through B: gone on both, files included.
    assert (await b.delete(location, headers=mine)).status_code == 202
    for client in (a, b):
        assert (await client.get(location, headers=mine)).status_code == 404
        assert (await client.get(file_url, headers=mine)).status_code == 404


async def test_an_auditevent_export_kicked_off_on_a_is_served_by_b(
    replicas: Replicas, tokens: Tokens
) -> None:
    """The AuditEvent bulk export shares its own board the same way (tables of its own)."""
    a, b = replicas.clients
    await a.get("/fhir/$export?_type=Patient", headers=tokens.bearer("ehr", "system/*.rs"))
    officer = tokens.bearer(
        "officer", "user/AuditEvent.rs", fhir_user="Practitioner/officer", roles=[AUDITOR]
    )
    kick = await a.get("/fhir/AuditEvent/$export", headers={**officer, **ASYNC})
    assert kick.status_code == 202, kick.text
    location = kick.headers["content-location"]
    done = await finished(b, location, officer)
    assert done.status_code == 200, done.text
    outputs = done.json()["output"]
    assert outputs
    part = await b.get(outputs[0]["url"], headers=officer)
    assert part.status_code == 200
    assert all('"resourceType":"AuditEvent"' in line for line in part.text.splitlines())
    other = tokens.bearer(
        "officer-2", "user/AuditEvent.rs", fhir_user="Practitioner/officer-2", roles=[AUDITOR]
    )
    assert (await b.get(location, headers=other)).status_code == 404
    assert (await b.delete(location, headers=officer)).status_code == 202
    assert (await a.get(location, headers=officer)).status_code == 404


async def test_a_job_whose_replica_stopped_renewing_is_failed_on_b_not_in_progress(
    replicas: Replicas, tokens: Tokens, wall: WallClock
) -> None:
    """A's producer hangs (as on a replica that died, it renews nothing): once its lease has
    lapsed, B answers the status with an OperationOutcome saying to start again, not 202
    forever; A's producer, released later, writes nothing more (the job is no longer
    running)."""
    a, b = replicas.clients
    mine = tokens.bearer("ehr-backend", "system/*.rs")
    kick = await a.get("/fhir/$export?_type=Group", headers={**mine, **ASYNC})
    assert kick.status_code == 202, kick.text
    location = kick.headers["content-location"]
    await asyncio.wait_for(replicas.upstream.waiting.wait(), 10)
    assert (await b.get(location, headers=mine)).status_code == 202
    wall.now += LAPSE_SECONDS + 1
    lost = await b.get(location, headers=mine)
    assert lost.status_code == 500, lost.text
    outcome = lost.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert PRODUCER_GONE in outcome["issue"][0]["diagnostics"]
    replicas.upstream.release.set()
    await asyncio.sleep(0.05)
    again = await a.get(location, headers=mine)
    assert again.status_code == 500
