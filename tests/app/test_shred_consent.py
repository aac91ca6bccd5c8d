"""After ``consentry audit shred --patient P`` no PHI of P is left in the SQLite file.

The attack: a shred deleted P's evidence key (their sealed audit facts became unreadable) and
shredded their index rows, but P's Consents stayed in the clear, twice: as the evidence of
their ``consent`` entries on the ledger ("consent and key entries never expire") and in the
consent store's versions table (patient column, Consent bytes). Whoever copied the file after
the shred read P's name, identifier and consent choices. Now the shred removes both, the
ledger still verifies (the leaves and commitments stay), P has no consent on file (an opt-in
gateway denies their data), a gateway started afterwards does not fail on the consent entries
left without evidence, and another patient's consent and evidence are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.cli import main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from middleware.settings import Settings
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.ledger_postgres import PostgresLogStore
from tests.app.conftest import UPSTREAM
from tests.app.consenting import (
    DEV_ISSUER,
    Tokens,
    auth_settings,
    observation,
    r5_consent,
    treat_only,
)
from tests.contract.backends import PostgresBackend

ORIGIN = "gateway.test/fhir/ledger"
SHREDDED = "zq7731-shred-me"  # P's id
KEPT = "kp4410-keep-me"  # another patient's
# What P's Consent says about P, besides the reference.
P_SECRETS = (b"Xaviera Quixote-Zanzibar", b"MRN-ZANZIBAR-44719")
Q_SECRETS = (b"Konstantin Keepwell", b"MRN-KEEPWELL-88123")
FHIR = {"content-type": "application/fhir+json"}


def consent_of(pid: str, secrets: tuple[bytes, bytes]) -> dict[str, Any]:
    name, mrn = (s.decode() for s in secrets)
    body = treat_only(f"Patient/{pid}")
    body["subject"]["display"] = name
    body["identifier"] = [{"system": "urn:example:mrn", "value": mrn}]
    return body


class World:
    """One store (SQLite, or a fresh PostgreSQL schema with ``pg``), the ledger key file the
    CLI reads, and gateways on both."""

    def __init__(
        self,
        tmp: Path,
        make_settings: Callable[..., Settings],
        jurisdiction: str = "opt-in",
        pg: PostgresBackend | None = None,
    ) -> None:
        self.db = tmp / "gateway.db"
        self.pg = pg
        self.store = f"sqlite:{self.db}" if pg is None else pg.dsn
        # What the CLI is told: the store, and PostgreSQL's schema.
        self.where = ("--store", self.store) + (() if pg is None else ("--schema", pg.schema))
        self.signer = SigningKey.generate(ORIGIN)
        self.key = tmp / "ledger.key"
        write_ledger_key(self.key, LedgerKey(self.signer, ORIGIN))
        self.trust = tmp / "trust.toml"
        self.trust.write_text(format_policy(TrustPolicy(ORIGIN, (TrustedKey(self.signer.vkey()),))))
        dev_key = tmp / "dev-issuer.jwk"
        self.tokens = Tokens(
            UnsafeDevelopmentIssuer.from_key_file(dev_key, DEV_ISSUER, enabled=True)
        )
        self.settings = make_settings(
            store=self.store, auth=auth_settings(dev_key), consent_jurisdiction=jurisdiction
        )
        self.router = respx.Router(assert_all_called=False, base_url=UPSTREAM)
        for pid in (SHREDDED, KEPT):
            self.router.get(f"/Observation/o-{pid}").respond(
                200, json={**observation(f"Patient/{pid}"), "id": f"o-{pid}"}, headers=FHIR
            )

    @contextlib.asynccontextmanager
    async def gateway(self) -> AsyncIterator[httpx.AsyncClient]:
        log: PostgresLogStore | None = None
        consents: PostgresConsentStore | None = None
        if self.pg is not None:  # the schema is not a setting: stores are injected
            log = await PostgresLogStore.open(self.pg.dsn, schema=self.pg.schema, max_size=2)
            consents = await PostgresConsentStore.open(
                self.pg.dsn,
                lookup_key=derive_box_key(self.signer, LOOKUP_PURPOSE),
                schema=self.pg.schema,
                max_size=2,
            )
        app: Gateway = create_app(
            self.settings,
            upstream=httpx.MockTransport(self.router.async_handler),
            signer=self.signer,
            store=log,
            consents=consents,
        )
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
                yield c
        finally:
            await app.aclose()
            for store in (log, consents):
                if store is not None:
                    await store.close()

    async def read(self, client: httpx.AsyncClient, pid: str) -> int:
        headers = self.tokens.bearer(
            "dr", "user/Observation.rs", fhir_user="Practitioner/dr", purpose_of_use=["TREAT"]
        )
        return (await client.get(f"/fhir/Observation/o-{pid}", headers=headers)).status_code

    async def run(self, *argv: str) -> tuple[int, str]:
        """``consentry *argv`` (status, standard output); on a thread, as the CLI runs its
        own event loop."""

        def call() -> tuple[int, str]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                status = main(list(argv))
            return status, out.getvalue()

        return await asyncio.to_thread(call)

    def raw(self) -> bytes:
        """The bytes a copy of the store holds: the file and its write-ahead log."""
        wal = self.db.with_name(self.db.name + "-wal")
        return self.db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.fixture
def world(tmp_path: Path, make_settings: Callable[..., Settings]) -> World:
    return World(tmp_path, make_settings)


def _named(raw: bytes, pid: str, secrets: tuple[bytes, bytes]) -> list[bytes]:
    return [s for s in (pid.encode(), *secrets) if s in raw]


async def test_a_shred_leaves_no_phi_of_the_patient_in_the_sqlite_file(world: World) -> None:
    async with world.gateway() as gw:
        for pid, secrets in ((SHREDDED, P_SECRETS), (KEPT, Q_SECRETS)):
            made = await gw.post(
                "/fhir/Consent",
                json=consent_of(pid, secrets),
                headers=world.tokens.patient(pid),
            )
            assert made.status_code == 201, made.text
            assert await world.read(gw, pid) == 200  # permitted for treatment: traffic
    before = world.raw()
    assert _named(before, SHREDDED, P_SECRETS) == [SHREDDED.encode(), *P_SECRETS]  # can fail

    status, text = await world.run(
        "audit", "shred", *world.where, "--key-file", str(world.key),
        "--patient", f"Patient/{SHREDDED}", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    after = world.raw()
    assert _named(after, SHREDDED, P_SECRETS) == []
    assert _named(after, KEPT, Q_SECRETS) == [KEPT.encode(), *Q_SECRETS]  # untouched
    result = json.loads(text)
    erased = ("consent_versions_erased", "consent_evidence_removed", "admin_evidence_removed")
    assert [result[k] for k in erased] == [1, 1, 1]  # the consent, its entry, the API attempt
    status, text = await world.run("ledger", "verify", *world.where, "--trust", str(world.trust))
    assert status == 0, text

    # A gateway started now: P has no consent on file (opt-in: denied), Q still has theirs;
    # the consent entry left without evidence does not make it fail.
    async with world.gateway() as gw:
        assert await world.read(gw, SHREDDED) == 404
        assert await world.read(gw, KEPT) == 200
        mine = await gw.get("/fhir/Consent", headers=world.tokens.patient(SHREDDED))
        assert mine.status_code == 200, mine.text
        assert mine.json().get("total", 0) == 0
        assert not mine.json().get("entry")


async def test_a_patient_callers_refused_attempts_do_not_name_their_account(
    world: World,
) -> None:
    """The consent API's attempts the shred cannot reach named the patient's account: a body
    that is not JSON (400) and a Consent naming nobody (422) carry no patient of their own,
    and a Consent for another patient (403) lands on that patient's chain, so their evidence
    kept ``user-<pid>`` (and so P's id) after P's shred. A patient caller's account is now
    left out of every attempt, which goes on their own chain when it names no patient."""
    p = world.tokens.patient(SHREDDED)
    async with world.gateway() as gw:
        made = await gw.post("/fhir/Consent", json=consent_of(SHREDDED, P_SECRETS), headers=p)
        assert made.status_code == 201, made.text
        attempts = [
            await gw.post("/fhir/Consent", content=b"{not json", headers=p),
            await gw.post("/fhir/Consent", json={"resourceType": "Consent"}, headers=p),
            await gw.post("/fhir/Consent", json=consent_of(KEPT, Q_SECRETS), headers=p),
        ]
        assert [r.status_code for r in attempts] == [400, 422, 403]
    status, text = await world.run(
        "audit", "shred", *world.where, "--key-file", str(world.key),
        "--patient", f"Patient/{SHREDDED}", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    # The create's attempt and the two naming no patient were on P's chain; the 403 is Q's.
    assert json.loads(text)["admin_evidence_removed"] == 3
    after = world.raw()
    assert f"user-{SHREDDED}".encode() not in after
    assert _named(after, SHREDDED, P_SECRETS) == []


async def shred_p(world: World) -> dict[str, Any]:
    status, text = await world.run(
        "audit", "shred", *world.where, "--key-file", str(world.key),
        "--patient", f"Patient/{SHREDDED}", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    result: dict[str, Any] = json.loads(text)
    return result


async def test_running_gateways_stop_releasing_at_the_next_request(world: World) -> None:
    """A gateway running during the shred kept P's compiled permit until some consent changed
    anywhere or it restarted, so it went on releasing P's data. The shred's last entry moves
    the ledger's consent position: both gateways on the store (separate registries) deny P
    at their very next request, with no restart and no other consent change; Q is served."""
    async with world.gateway() as one, world.gateway() as two:
        made = await one.post(
            "/fhir/Consent",
            json=consent_of(SHREDDED, P_SECRETS),
            headers=world.tokens.patient(SHREDDED),
        )
        assert made.status_code == 201, made.text
        made = await two.post(
            "/fhir/Consent", json=consent_of(KEPT, Q_SECRETS), headers=world.tokens.patient(KEPT)
        )
        assert made.status_code == 201, made.text
        for gw in (one, two):
            assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (200, 200)
        result = await shred_p(world)
        assert result["consent_marker"] > max(result["admin_entries"])
        for gw in (one, two):
            assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)
        again = await shred_p(world)  # a second run keeps the first one's marker
        assert again["consent_evidence_removed"] == 0
        for gw in (one, two):
            assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)


async def test_under_opt_out_a_running_gateway_closes_a_patient_without_consent(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """A patient who never recorded a consent is open under opt-out; after their shred a new
    gateway judges them by the erased policy (closed), and so does one that was running and
    had cached their no-consent default (their consent mark did not move)."""
    world = World(tmp_path, make_settings, jurisdiction="opt-out")
    async with world.gateway() as gw:
        assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (200, 200)
        await shred_p(world)
        assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)
    async with world.gateway() as gw:
        assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)


async def test_under_opt_out_a_shredded_patient_stays_closed(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """The fail-open this guards against: under opt-out the no-consent default permits, so
    erasing a patient's opt-out (a deny consent) would release their data at once. A patient
    a shred erased, with no consent since, is judged closed (consent.shredded.erased_policy);
    another patient without a consent keeps the opt-out default; a new consent of the
    shredded patient is enforced as any other."""
    world = World(tmp_path, make_settings, jurisdiction="opt-out")
    opted_out = r5_consent(f"Patient/{SHREDDED}", "deny")
    async with world.gateway() as gw:
        made = await gw.post(
            "/fhir/Consent", json=opted_out, headers=world.tokens.patient(SHREDDED)
        )
        assert made.status_code == 201, made.text
        assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)
    status, text = await world.run(
        "audit", "shred", *world.where, "--key-file", str(world.key),
        "--patient", f"Patient/{SHREDDED}", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    async with world.gateway() as gw:
        assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)
        again = await gw.post(
            "/fhir/Consent",
            json=treat_only(f"Patient/{SHREDDED}"),
            headers=world.tokens.patient(SHREDDED),
        )
        assert again.status_code == 201, again.text
        assert await world.read(gw, SHREDDED) == 200  # their new consent permits treatment


@pytest.mark.integration
async def test_on_postgresql_the_shred_erases_the_patients_consents(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """The same on PostgreSQL (live rows only: a deleted row's bytes last until VACUUM, and
    backups keep them): no consent version and no evidence row holds P's reference, name or
    MRN; Q's are all there; the ledger verifies; a new gateway denies P and serves Q."""
    backend = await PostgresBackend.create()
    try:
        world = World(tmp_path, make_settings, pg=backend)
        async with world.gateway() as gw:
            for pid, secrets in ((SHREDDED, P_SECRETS), (KEPT, Q_SECRETS)):
                made = await gw.post(
                    "/fhir/Consent",
                    json=consent_of(pid, secrets),
                    headers=world.tokens.patient(pid),
                )
                assert made.status_code == 201, made.text
                assert await world.read(gw, pid) == 200
        assert await _live(backend, SHREDDED, P_SECRETS) == [SHREDDED.encode(), *P_SECRETS]
        status, text = await world.run(
            "audit", "shred", *world.where, "--key-file", str(world.key),
            "--patient", f"Patient/{SHREDDED}", "--reason", "patient request",
        )  # fmt: skip
        assert status == 0, text
        assert await _live(backend, SHREDDED, P_SECRETS) == []
        assert await _live(backend, KEPT, Q_SECRETS) == [KEPT.encode(), *Q_SECRETS]
        status, text = await world.run(
            "ledger", "verify", *world.where, "--trust", str(world.trust)
        )
        assert status == 0, text
        async with world.gateway() as gw:
            assert (await world.read(gw, SHREDDED), await world.read(gw, KEPT)) == (404, 200)
    finally:
        await backend.cleanup()


async def _live(backend: PostgresBackend, pid: str, secrets: tuple[bytes, bytes]) -> list[bytes]:
    """Which of the patient's strings a live row of the consent versions or the ledger
    evidence holds."""
    conn = await asyncpg.connect(backend.dsn, server_settings={"search_path": backend.schema})
    try:
        found = []
        for needle in (pid.encode(), *secrets):
            hits = await conn.fetchval(
                "SELECT (SELECT count(*) FROM consentry_consent_versions "
                "WHERE position($1::bytea IN data) > 0 OR patient LIKE '%' || $2 || '%') + "
                "(SELECT count(*) FROM consentry_ledger_evidence WHERE position($1::bytea IN data) > 0)",
                needle,
                needle.decode(),
            )
            if hits:
                found.append(needle)
        return found
    finally:
        await conn.close()
