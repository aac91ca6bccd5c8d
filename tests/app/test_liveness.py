"""Ledger liveness through the app: ``/readyz`` proves the ledger can commit, a crashed writer
is replaced, a full ledger queue pushes back before the upstream call, every 503 says when to
retry.

The attacks: ``/readyz`` answered 200 while the ledger could not commit (it pinged the store,
which a full disk or a held write lock still answers); a crashed writer stayed cached (every
audited request 503 for good, ``/readyz`` still 200); with the ledger's queue full, each
request still cost an upstream call and the pipeline's work before its 503; 503s carried no
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.sequencer import CheckpointSigner
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.app.consenting import auth_settings

CAPABILITY = {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance"}
PATIENT = {"resourceType": "Patient", "id": "p1"}


class GatedStore(MemoryLogStore):
    """A memory log whose non-empty appends wait for :attr:`gate` (a commit that stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        if batch:
            await self.gate.wait()
        return await super().append(batch, sign=sign)


@pytest.fixture
def store() -> GatedStore:
    return GatedStore()


@pytest.fixture
def routes(router: respx.Router) -> respx.Route:
    router.get("/metadata").respond(200, json=CAPABILITY)
    return router.get("/Patient/p1").respond(200, json=PATIENT)


@asynccontextmanager
async def serving(
    app: Gateway, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.test", headers=headers or {}
    ) as client:
        yield client
    await app.aclose()


@pytest.fixture
def backend_app(make_app: Callable[..., Gateway], dev_key_file: Path) -> Callable[..., Gateway]:
    def make(**overrides: Any) -> Gateway:
        return make_app(
            auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out", **overrides
        )

    return make


def assert_retry_after(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert int(response.headers["retry-after"]) >= 1


async def test_readyz_is_503_while_the_ledger_cannot_commit_then_recovers(
    backend_app: Callable[..., Gateway],
    routes: respx.Route,
    store: GatedStore,
    system_bearer: dict[str, str],
) -> None:
    """A store that reads but cannot commit (a full disk): the store still answers a ping,
    yet ``/readyz`` is 503 and an audited read is 503 with ``Retry-After``; once the store
    commits again, both recover."""
    async with serving(backend_app(), system_bearer) as client:
        assert (await client.get("/fhir/Patient/p1")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        store.writable = False
        await store.ping()  # what readiness used to ask: still fine
        assert_retry_after(await client.get("/fhir/Patient/p1"))
        ready = await client.get("/readyz")
        assert_retry_after(ready)
        assert ready.json()["checks"]["store"] == "unavailable"
        store.writable = True
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/fhir/Patient/p1")).status_code == 200


async def test_readyz_probes_when_no_commit_is_recent(
    backend_app: Callable[..., Gateway], routes: respx.Route, store: GatedStore
) -> None:
    """No traffic: nothing recent proves a commit, so readiness writes a probe (which then
    counts as proof for ``ready_commit_age``); once the proof is older, a store that cannot
    commit is not ready although no request has failed."""
    async with serving(backend_app(ready_commit_age=0.05)) as client:
        assert (await client.get("/readyz")).status_code == 200
        store.writable = False
        await asyncio.sleep(0.1)
        assert_retry_after(await client.get("/readyz"))


async def test_readyz_on_sqlite_with_its_write_lock_held_elsewhere(
    make_settings: Callable[..., Settings],
    router: respx.Router,
    routes: respx.Route,
    signer: SigningKey,
    tmp_path: Path,
) -> None:
    """A real SQLite ledger whose write lock another process holds: reads answer, commits
    cannot happen; ``/readyz`` is 503 (it was 200), and 200 again once the lock is gone."""
    path = tmp_path / "ledger.sqlite3"
    sqlite_store = await SqliteLogStore.open(path, busy_timeout=0.2)
    app = create_app(
        make_settings(ready_commit_age=0.05),
        upstream=httpx.MockTransport(router.async_handler),
        store=sqlite_store,
        signer=signer,
    )
    async with serving(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(0.1)  # the last probe's proof has aged
            await sqlite_store.ping()  # what readiness used to ask: still fine
            assert_retry_after(await client.get("/readyz"))
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert (await client.get("/readyz")).status_code == 200


async def test_a_crashed_writer_is_replaced_and_requests_are_served(
    backend_app: Callable[..., Gateway], routes: respx.Route, system_bearer: dict[str, str]
) -> None:
    """The writer's task dies (here: cancelled from outside, as a stray cancel or a bug in it
    would end it). It used to stay cached: every audited request 503 while ``/readyz`` said
    ready. Now the next caller gets a new writer."""
    app = backend_app()
    async with serving(app, system_bearer) as client:
        assert (await client.get("/fhir/Patient/p1")).status_code == 200
        dead = await app.ledger.writer()
        dead._task.cancel()  # type: ignore[union-attr]
        await asyncio.sleep(0)
        assert dead._task is not None
        assert dead._task.done()
        assert (await client.get("/fhir/Patient/p1")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await app.ledger.writer()) is not dead


async def test_a_full_ledger_queue_refuses_before_the_upstream_is_called(
    backend_app: Callable[..., Gateway],
    routes: respx.Route,
    store: GatedStore,
    system_bearer: dict[str, str],
) -> None:
    """The ledger's commits stall; one request's entries are in the stalled batch, another's
    fill the queue (``ledger_max_pending = 1``). A third request is refused at once with 503
    and ``Retry-After``, and the upstream never hears of it (it used to be forwarded, its
    answer filtered, and only then refused)."""
    app = backend_app(ledger_max_pending=1)
    async with serving(app, system_bearer) as client:
        assert (await client.get("/fhir/Patient/p1")).status_code == 200
        store.gate.clear()
        first = asyncio.create_task(client.get("/fhir/Patient/p1"))
        await _until(lambda: app.ledger.pending == 0 and routes.call_count == 2)
        second = asyncio.create_task(client.get("/fhir/Patient/p1"))
        await _until(lambda: app.ledger.pending == 1)
        assert routes.call_count == 3
        refused = await client.get("/fhir/Patient/p1")
        assert_retry_after(refused)
        assert routes.call_count == 3  # the refused request reached no upstream
        store.gate.set()
        assert [(await t).status_code for t in (first, second)] == [200, 200]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110  # polls state the app owns, no event to wait on
            await asyncio.sleep(0.005)
