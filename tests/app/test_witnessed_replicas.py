"""Gateways with a witness quorum on one store (one SQLite file, as worker processes share it;
one PostgreSQL schema, as replicas do) publish the witnessed checkpoint the store keeps:

- at once, with every witness down (a restart answered 503 until a round got a quorum again,
  forever with the witnesses down; two replicas published checkpoints a round apart);
- the same note on every gateway, the newest as soon as it is kept (never one going back);
- not a kept row that does not verify (here a size the log never signed): the gateways keep
  what they published, and count it (the other refusals: ``tests/unit/ledger/
  test_witnessing_kept.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from middleware.app import Gateway, create_app
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.ledger.note import parse_note
from middleware.ledger.signing import Cosigner, SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.settings import Settings
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.app.consenting import auth_settings
from tests.app.shared_schema import gateways_on_one_schema
from tests.support.peers import free_port

W1 = Cosigner.generate("w1.test")
W2 = Cosigner.generate("w2.test")
Gateways = Callable[[int], AbstractAsyncContextManager[tuple[list[Gateway], LogStore]]]


def _witnesses() -> list[dict[str, str]]:
    """Both witnesses at ports nothing listens on: every round fails."""
    return [
        {"name": w.name, "url": f"http://127.0.0.1:{free_port()}", "vkey": w.vkey()}
        for w in (W1, W2)
    ]


@asynccontextmanager
async def _on_sqlite(
    path: Path, settings: Settings, signer: SigningKey, count: int
) -> AsyncIterator[tuple[list[Gateway], LogStore]]:
    stores = [await SqliteLogStore.open(path) for _ in range(count)]
    upstream = httpx.MockTransport(lambda _: httpx.Response(404))
    apps = [create_app(settings, upstream=upstream, signer=signer, store=s) for s in stores]
    try:
        yield apps, stores[0]
    finally:
        for app in apps:
            await app.aclose()
        for store in stores:
            await store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def gateways(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    key_file: Path,
    make_settings: Callable[..., Settings],
    signer: SigningKey,
) -> Gateways:
    """``gateways(n)``: n gateways on one store, each wanting both witnesses' cosignatures."""
    witnesses = _witnesses()

    def settings(store: str) -> Settings:
        return make_settings(
            store=store,
            auth=auth_settings(key_file),
            witnesses=witnesses,
            witness_quorum=2,
            witness_timeout_seconds=1.0,
        )

    def made(count: int) -> AbstractAsyncContextManager[tuple[list[Gateway], LogStore]]:
        if request.param == "sqlite":
            path = tmp_path / "shared.db"
            return _on_sqlite(path, settings(f"sqlite:{path}"), signer, count)
        return _pg(settings, signer, count)

    return made


@asynccontextmanager
async def _pg(
    settings: Callable[[str], Settings], signer: SigningKey, count: int
) -> AsyncIterator[tuple[list[Gateway], LogStore]]:
    upstream = httpx.MockTransport(lambda _: httpx.Response(404))
    async with gateways_on_one_schema(settings, signer, upstream, count=count) as shared:
        yield shared.apps, shared.log


async def _grow(store: LogStore, signer: SigningKey, size: int) -> str:
    """Grow the log to ``size``; its checkpoint cosigned by both witnesses, now."""
    have = await store.size()
    batch = [
        NewEntry.create(
            EntryKind.ACCESS_DECISION, b"evidence", recorded_us=n, flags=EntryFlag.PERMIT
        )
        for n in range(have, size)
    ]
    await store.append(batch, sign=checkpoint_signer(signer))
    logged = await store.checkpoint(size)
    assert logged is not None
    text, now = parse_note(logged.note).text, int(time.time())
    return logged.note + W1.cosign(text, now).line() + W2.cosign(text, now).line()


async def _published(apps: list[Gateway]) -> list[tuple[int, str]]:
    answers = []
    for app in apps:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            answer = await c.get("/ledger/checkpoint")
        answers.append((answer.status_code, answer.text))
    return answers


async def test_gateways_on_one_store_publish_what_it_keeps_at_once_and_alike(
    gateways: Gateways, signer: SigningKey
) -> None:
    async with gateways(2) as (apps, store):
        assert [status for status, _ in await _published(apps)] == [503, 503]  # nothing yet
        witnessed = await _grow(store, signer, 3)
        assert await store.keep_witnessed(witnessed)  # as a replica's round keeps it
        assert await _published(apps) == [(200, witnessed)] * 2  # no witness answered
        newer = await _grow(store, signer, 5)
        assert await store.keep_witnessed(newer)
        assert await _published(apps) == [(200, newer)] * 2  # the next request, on each
        for app in apps:  # a round with the witnesses down changes nothing
            assert app.witnessing is not None
            await app.witnessing.submit_latest()
        assert await _published(apps) == [(200, newer)] * 2

        forged = signer.sign_checkpoint(Checkpoint(signer.name, 9, bytes(32)))
        text = parse_note(forged).text
        now = int(time.time())
        assert await store.keep_witnessed(
            forged + W1.cosign(text, now).line() + W2.cosign(text, now).line()
        )
        assert await _published(apps) == [(200, newer)] * 2  # never the forged row
        for app in apps:
            assert app.witnessing is not None
            assert app.witnessing.failures.get("kept-not-logged") == 1
