"""Gateways in this process that share one fresh PostgreSQL schema: the replicas of the
"two replicas are one system" tests (ARCHITECTURE "Scale").

:func:`gateways_on_one_schema` creates the schema, opens a ledger store and a consent store
per gateway (their own pools, ``max_size=2``; the consent lookup key derived from the shared
ledger key) and builds each gateway on them; on exit it closes the gateways, then the
injected stores (ours to close), then drops the schema. :func:`clients_of` gives each gateway
an in-process client and closes them on exit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from middleware.app import Gateway, create_app
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.settings import Settings
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.ledger_postgres import PostgresLogStore
from tests.contract.backends import PostgresBackend

__all__ = ["SharedSchema", "clients_of", "gateways_on_one_schema"]


@dataclass
class SharedSchema:
    """The gateways, the schema they share, and the first gateway's ledger store."""

    apps: list[Gateway]
    backend: PostgresBackend
    log: PostgresLogStore


@asynccontextmanager
async def gateways_on_one_schema(
    settings_for: Callable[[str], Settings],
    signer: SigningKey,
    upstream: httpx.AsyncBaseTransport,
    count: int = 2,
    **app_options: Any,
) -> AsyncIterator[SharedSchema]:
    """``count`` gateways on one fresh schema; ``settings_for`` gets the schema's DSN and
    ``app_options`` go to every ``create_app`` (``wall_clock=``, say)."""
    backend = await PostgresBackend.create()
    settings = settings_for(backend.dsn)
    apps: list[Gateway] = []
    logs: list[PostgresLogStore] = []
    opened: list[PostgresLogStore | PostgresConsentStore] = []
    try:
        for _ in range(count):
            log = await PostgresLogStore.open(backend.dsn, schema=backend.schema, max_size=2)
            consents = await PostgresConsentStore.open(
                backend.dsn,
                lookup_key=derive_box_key(signer, LOOKUP_PURPOSE),
                schema=backend.schema,
                max_size=2,
            )
            logs.append(log)
            opened += [log, consents]
            apps.append(
                create_app(
                    settings,
                    upstream=upstream,
                    signer=signer,
                    store=log,
                    consents=consents,
                    **app_options,
                )
            )
        yield SharedSchema(apps, backend, logs[0])
    finally:
        for app in apps:
            await app.aclose()
        for store in opened:  # injected: ours to close (closing twice is harmless)
            await store.close()
        await backend.cleanup()


@asynccontextmanager
async def clients_of(
    apps: Sequence[Gateway], peer: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """An in-process client of each gateway, seen from TCP ``peer`` (httpx's default)."""
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=peer), base_url="http://gateway.test"
        )
        for app in apps
    ]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()
