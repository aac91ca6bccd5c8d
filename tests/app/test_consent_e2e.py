"""End to end, through a real gateway process: a patient creates, changes and revokes a consent
with a token from ``consentry token issue``; each change is on the ledger file and verifies.

The gateway runs ``consentry serve --config`` with the development issuer on a key file that
``consentry token issue --key-file`` shares; no upstream is needed (consent paths never reach
it). When the ``consentry ledger verify`` command is present, the ledger is verified offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from middleware.consent.records import canonical_consent
from middleware.ledger.leaf import EntryKind
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.app.consenting import ledger_entries, r5_consent, treat_only
from tests.support import GatewayServer
from tests.support.peers import repo_root

ISSUER = "http://127.0.0.1/dev-issuer"
AUDIENCE = "consentry-e2e"
ORIGIN = "consentry.e2e/fhir/ledger"


def consentry(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(repo_root())}
    return subprocess.run(
        [sys.executable, "-m", "middleware.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def gateway(workdir: Path) -> Iterator[GatewayServer]:
    config = workdir / "consentry.toml"
    config.write_text(
        f"""
ledger_key_file = "{workdir / "ledger.key"}"
ledger_origin = "{ORIGIN}"
access_log = false

[auth]
dev_issuer_enabled = true
dev_issuer_url = "{ISSUER}"
dev_issuer_key_file = "{workdir / "dev-issuer.jwk"}"
audiences = ["{AUDIENCE}"]
""",
        encoding="utf-8",
    )
    args = ["--config", str(config), "--store", f"sqlite:{workdir / 'consentry.db'}"]
    with GatewayServer("http://127.0.0.1:9/fhir", args=args) as server:
        yield server


def issue_token(workdir: Path, patient: str) -> str:
    done = consentry(
        "token",
        "issue",
        *("--sub", f"user-{patient}", "--patient", patient),
        *("--scope", "launch/patient patient/Consent.cruds"),
        *("--key-file", str(workdir / "dev-issuer.jwk"), "--issuer", ISSUER),
        *("--audience", AUDIENCE),
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_patient_changes_a_consent_through_the_gateway_and_the_ledger_verifies(
    gateway: GatewayServer, workdir: Path
) -> None:
    headers = {
        "authorization": f"Bearer {issue_token(workdir, 'p1')}",
        "content-type": "application/fhir+json",
    }
    base = gateway.base_url
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
        created = await http.post(f"{base}/Consent", json=r5_consent())
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        changed = await http.put(f"{base}/Consent/{cid}", json=treat_only(id=cid))
        assert changed.status_code == 200, changed.text
        revoked = await http.post(f"{base}/Consent/{cid}/$revoke")
        assert revoked.status_code == 200, revoked.text
        final = (await http.get(f"{base}/Consent/{cid}")).json()
        assert final["status"] == "inactive"
        assert final["meta"]["versionId"] == "3"
        indexes = [int(r.headers["x-consentry-ledger-index"]) for r in (created, changed, revoked)]
    gateway.stop()

    log = await SqliteLogStore.open(workdir / "consentry.db")
    try:
        entries = {e.index: e for e in await ledger_entries(log)}
    finally:
        await log.close()
    assert all(e.verified for e in entries.values())
    assert [entries[i].kind for i in indexes] == [
        EntryKind.CONSENT,
        EntryKind.CONSENT,
        EntryKind.CONSENT_REVOKE,
    ]
    assert entries[indexes[-1]].evidence == canonical_consent(final)
    attempts = [e.json() for e in entries.values() if e.kind is EntryKind.ADMIN]
    assert [a["operation"] for a in attempts] == ["create", "update", "revoke", "read"]

    if importlib.util.find_spec("middleware.ledger.cli") is None:
        return  # `consentry ledger verify` is not part of this build
    trust = workdir / "trust.toml"
    policy = consentry(
        "keys", "policy", "--key-file", str(workdir / "ledger.key"), "--origin", ORIGIN, cwd=workdir
    )
    assert policy.returncode == 0, policy.stderr
    trust.write_text(policy.stdout, encoding="utf-8")
    verified = consentry(
        "ledger",
        "verify",
        "--store",
        f"sqlite:{workdir / 'consentry.db'}",
        "--trust",
        str(trust),
        cwd=workdir,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
