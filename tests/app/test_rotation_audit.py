"""A signing-key rotation keeps the audit trail: what a gateway stored before ``consentry keys
rotate`` (wrapped evidence keys, the pseudonym table, the no-patient key) still opens with the
rotated key file, because every stored secret derives from the key file's data secret, which
the rotation carries over (``middleware.ledger.keyfile``), not from the signing seed.

Real parts: one SQLite file holds the ledger, its audit index and the consent store; the key
file is written and rotated by the ``consentry`` commands an operator runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.audit.row import AuditQuery
from middleware.cli import main
from middleware.ledger.keyfile import read_ledger_key
from middleware.settings import Settings
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.app.conftest import FakeClock, WallClock
from tests.app.consenting import Tokens, auth_settings

ORIGIN = "gateway.test/fhir/ledger"
AUDITOR_ROLE = "ledger-auditor"
Headers = dict[str, str]


def clinician(tokens: Tokens) -> Headers:
    return tokens.bearer(
        "dr-a",
        "user/Patient.rs user/Practitioner.rs",
        fhir_user="Practitioner/dr-a",
        purpose_of_use=["TREAT"],
    )


def auditor(tokens: Tokens) -> Headers:
    return tokens.bearer(
        "officer", "user/AuditEvent.rs", fhir_user="Practitioner/officer", roles=[AUDITOR_ROLE]
    )


async def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> dict[str, Any]:
    """Run ``consentry ARGV`` (in a thread: it runs an event loop of its own); its JSON answer
    (the command must succeed)."""
    capsys.readouterr()  # the gateway's log lines so far
    status = await asyncio.to_thread(main, [str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    answer: dict[str, Any] = json.loads(captured.out)
    return answer


@pytest.fixture
def gateway(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    router: respx.Router,
    key_file: Path,
    wall: WallClock,
    clock: FakeClock,
) -> Callable[[], Gateway]:
    """A new gateway on the same SQLite file and ledger key file each call (one per key)."""
    router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    router.get("/Practitioner/dr-b").respond(
        200, json={"resourceType": "Practitioner", "id": "dr-b"}
    )

    def make() -> Gateway:
        settings = make_settings(
            store=f"sqlite:{tmp_path / 'consentry.db'}",
            ledger_key_file=str(tmp_path / "ledger.key"),
            auth=auth_settings(key_file),
            consent_jurisdiction="opt-out",
        )
        upstream = httpx.MockTransport(router.async_handler)
        return create_app(settings, upstream=upstream, wall_clock=wall, clock=clock)

    return make


async def exchange(app: Gateway, path: str, headers: Headers) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        return await c.get(path, headers=headers)


async def pseudonym_of_p1(db: Path) -> set[bytes | None]:
    """The pseudonyms the audit index names Patient/p1 with."""
    store = await SqliteLogStore.open(db)
    try:
        return {row.pseudonym for row in await store.audit_rows(AuditQuery(patient="Patient/p1"))}
    finally:
        await store.close()


async def test_the_audit_trail_survives_a_key_rotation(
    tmp_path: Path,
    gateway: Callable[[], Gateway],
    tokens: Tokens,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, trust, db = tmp_path / "ledger.key", tmp_path / "trust.toml", tmp_path / "consentry.db"
    await cli(capsys, "keys", "generate", "--key-file", key, "--origin", ORIGIN, "--trust", trust)
    before = read_ledger_key(key)

    first = gateway()
    for path in ("/fhir/Patient/p1", "/fhir/Practitioner/dr-b"):  # a patient, and none
        assert (await exchange(first, path, clinician(tokens))).status_code == 200
    await first.aclose()
    (chain,) = await pseudonym_of_p1(db)
    assert chain is not None

    await cli(
        capsys, "keys", "rotate", "--key-file", key, "--store", f"sqlite:{db}", "--trust", trust
    )
    after = read_ledger_key(key)
    assert after.key.vkey() != before.key.vkey()

    second = gateway()
    try:
        # The no-patient key stored before the rotation still unwraps: no 503.
        answer = await exchange(second, "/fhir/Practitioner/dr-b", clinician(tokens))
        assert answer.status_code == 200
        answer = await exchange(second, "/fhir/Patient/p1", clinician(tokens))
        assert answer.status_code == 200
        # The entries recorded under the retired key open for the auditor.
        found = await exchange(second, "/fhir/AuditEvent?_count=50", auditor(tokens))
        assert found.status_code == 200, found.text
        ids = [e["resource"]["id"] for e in found.json().get("entry", [])]
        read = [await exchange(second, f"/fhir/AuditEvent/{i}", auditor(tokens)) for i in ids]
        assert [r.status_code for r in read] == [200] * len(ids)
        patients = await exchange(second, "/fhir/AuditEvent?patient=Patient/p1", auditor(tokens))
        assert patients.status_code == 200
        assert len(patients.json().get("entry", [])) >= 2  # one read before, one after
    finally:
        await second.aclose()
    # The patient keeps one chain across the rotation.
    assert await pseudonym_of_p1(db) == {chain}

    report = await cli(capsys, "audit", "reindex", "--store", f"sqlite:{db}", "--key-file", key)
    assert report["unreadable"] == 0
    assert report["rows"] >= 4  # two exchanges before the rotation, two after
