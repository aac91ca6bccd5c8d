"""``kill -9`` of a replica between the ledger append of a consent change and its store write:
every replica enforces what the ledger says on its very next request (architecture
invariant 3).

The attack, as it was seen: a replica appends a revocation to the ledger and dies before it
writes the consent store; the other replicas go on permitting what the ledger says was
revoked until some replica restarts. Here three in-process gateways share one database
(SQLite file, or a PostgreSQL schema) and have each just enforced the current version; a
separate process (``tests.crash.consent_changer``) records a change with the consent API's
own code and is SIGKILLed once its ledger append has committed and before its store write
begins. The ledger then holds the change and the store does not (checked through a store
object no replica uses); the next ``$explain`` on every replica must give the ledger's
answer, and the consent API must read back the ledger's version. Revocations and re-grants
alternate, six kills per backend.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.settings import Settings
from middleware.storage.consent_base import LOOKUP_PURPOSE, ConsentStore
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.consent_sqlite import SqliteConsentStore
from middleware.storage.ledger_postgres import PostgresLogStore
from tests.app.consenting import (
    ACT_REASON,
    DEV_ISSUER,
    Tokens,
    auth_settings,
    observation,
    treat_only,
)
from tests.contract.backends import POSTGRES, PostgresBackend
from tests.crash.consent_changer import ORIGIN

ROOT = Path(__file__).resolve().parents[2]
SEED = bytes(range(100, 132))
ROUNDS = 3  # two kills each: a revocation, then a re-grant
REPLICAS = 3

pytestmark = pytest.mark.timeout(180)


class Shared:
    """The database the replicas share, as the changer process and a bystander reach it."""

    def __init__(self, backend: str, target: str, cleanup: PostgresBackend | None) -> None:
        self.backend, self.target, self._cleanup = backend, target, cleanup

    async def bystander(self) -> ConsentStore:
        """A consent store object no replica uses: what the store holds, unrepaired."""
        lookup_key = derive_box_key(SigningKey.from_seed(ORIGIN, SEED), LOOKUP_PURPOSE)
        if self.backend == "sqlite":
            return await SqliteConsentStore.open(Path(self.target), lookup_key=lookup_key)
        dsn, _, schema = self.target.partition("#")
        return await PostgresConsentStore.open(
            dsn, lookup_key=lookup_key, schema=schema, max_size=1
        )


@pytest.fixture(params=["sqlite", POSTGRES])
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[Shared, list[Gateway]]]:
    key = SigningKey.from_seed(ORIGIN, SEED)
    auth = auth_settings(tmp_path / "dev.jwk")
    upstream = httpx.MockTransport(lambda _request: httpx.Response(599))
    made: list[Gateway] = []
    opened: list[Any] = []
    if request.param == "sqlite":
        path = tmp_path / "shared.db"
        settings = make_settings(store=f"sqlite:{path}", auth=auth)
        made = [create_app(settings, upstream=upstream, signer=key) for _ in range(REPLICAS)]
        shared = Shared("sqlite", str(path), None)
    else:
        backend = await PostgresBackend.create()
        settings = make_settings(store=backend.dsn, auth=auth)
        for _ in range(REPLICAS):
            log = await PostgresLogStore.open(backend.dsn, schema=backend.schema, max_size=2)
            consents = await PostgresConsentStore.open(
                backend.dsn,
                lookup_key=derive_box_key(key, LOOKUP_PURPOSE),
                schema=backend.schema,
                max_size=2,
            )
            opened += [log, consents]
            made.append(
                create_app(settings, upstream=upstream, signer=key, store=log, consents=consents)
            )
        shared = Shared("postgres", f"{backend.dsn}#{backend.schema}", backend)
    yield shared, made
    for app in made:
        await app.aclose()
    for store in opened:  # injected: ours to close
        await store.close()
    if shared._cleanup is not None:
        await shared._cleanup.cleanup()


def _kill_between_append_and_store(shared: Shared, resource: dict[str, Any]) -> int:
    """Run the changer until its append committed, SIGKILL it; the ledger index it appended."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crash.consent_changer",
            shared.backend,
            shared.target,
            SEED.hex(),
            json.dumps(resource),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert line.startswith("appended "), f"the changer died early: {line!r}"
    return int(line.split()[1])


async def effect(client: httpx.AsyncClient, headers: dict[str, str], patient: str) -> str:
    ask = {
        "principal": {"reference": "Practitioner/dr"},
        "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
        "resource": observation(patient),
    }
    answer = await client.post("/fhir/Consent/$explain", json=ask, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["effect"])


async def test_every_replica_enforces_the_ledger_after_a_kill_between_append_and_store(
    cluster: tuple[Shared, list[Gateway]], tmp_path: Path
) -> None:
    shared, replicas = cluster
    tokens = Tokens(
        UnsafeDevelopmentIssuer.from_key_file(tmp_path / "dev.jwk", DEV_ISSUER, enabled=True)
    )
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        for app in replicas
    ]
    bystander = await shared.bystander()
    log = await replicas[0].ledger.store()
    divergent = 0
    try:
        for round_ in range(ROUNDS):
            patient = f"Patient/k{round_}"
            me = tokens.patient(patient.removeprefix("Patient/"))
            created = await clients[round_ % REPLICAS].post(
                "/fhir/Consent", json=treat_only(patient), headers=me
            )
            assert created.status_code == 201, created.text
            cid = created.json()["id"]
            # Every replica has enforced the current version (its caches are warm).
            for client in clients:
                assert await effect(client, me, patient) == "permit"

            for version, (status, expected, kind) in enumerate(
                [
                    ("inactive", "deny", EntryKind.CONSENT_REVOKE),
                    ("active", "permit", EntryKind.CONSENT),
                ],
                start=2,
            ):
                resource = {**treat_only(patient, id=cid), "status": status}
                index = await asyncio.to_thread(_kill_between_append_and_store, shared, resource)
                # The ledger holds the change; the store, untouched by any replica, does not.
                (raw,) = await log.leaves(index, index + 1)
                assert decode_leaf(raw).kind is kind
                current = await bystander.current(cid)
                assert current is not None
                assert current.ledger_index < index, "the kill came after the store write"

                for n, client in enumerate(clients):
                    seen = await effect(client, me, patient)
                    divergent += seen != expected
                    assert seen == expected, f"replica {n} enforces a version the ledger replaced"
                read = await clients[(round_ + version) % REPLICAS].get(
                    f"/fhir/Consent/{cid}", headers=me
                )
                assert read.status_code == 200, read.text
                assert read.json()["status"] == status
                assert read.json()["meta"]["versionId"] == str(version)
                stored = await bystander.current(cid)
                assert stored is not None
                assert (stored.ledger_index, stored.version) == (index, version)
    finally:
        for client in clients:
            await client.aclose()
        await bystander.close()
    assert divergent == 0
