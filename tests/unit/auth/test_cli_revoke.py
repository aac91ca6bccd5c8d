"""``consentry auth revoke``: a governed action (an admin ledger entry naming it, then the
store's list), which every process on the store enforces; usage errors exit 2 and record
nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest

from middleware.auth.cli_revoke import REVOCATION_TYPE
from middleware.auth.identity import Identity
from middleware.cli import main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.storage.revocations_postgres import PostgresRevocations
from middleware.storage.revocations_sqlite import SqliteRevocations
from tests.contract.backends import PostgresBackend

ORIGIN = "gateway.test/ledger"
STOLEN = Identity(subject="dr", issuer="iss", expires_at=9e9, client_id="app", token_id="t-1")


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.key"
    write_ledger_key(path, LedgerKey(SigningKey.from_seed(ORIGIN, bytes(range(32))), ORIGIN))
    return path


async def _admin_entries(db: Path) -> list[dict[str, object]]:
    store = await SqliteLogStore.open(db)
    try:
        found = []
        size = await store.size()
        for index, leaf in enumerate(await store.leaves(0, size)):
            evidence = await store.evidence(index)
            if decode_leaf(leaf).kind is EntryKind.ADMIN and evidence is not None:
                found.append(json.loads(evidence.data))
        return found
    finally:
        await store.close()


def test_a_revocation_is_recorded_on_the_ledger_then_enforced(
    tmp_path: Path, key_file: Path
) -> None:
    db = tmp_path / "c.db"
    base = ("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file))
    status, text = _run(*base, "--jti", "t-1", "--reason", "stolen laptop", "--operator", "sec")
    assert status == 0, text
    assert json.loads(text) == {"admin_entry": 0, "kind": "jti", "value": "t-1", "before": None}
    (entry,) = asyncio.run(_admin_entries(db))
    assert entry == {
        "type": REVOCATION_TYPE,
        "kind": "jti",
        "value": "t-1",
        "before": None,
        "reason": "stolen laptop",
        "operator": "sec",
    }
    listed = SqliteRevocations(Path(f"{db}.revocations"))
    assert asyncio.run(listed.revoked(STOLEN, 0.0))

    status, text = _run(
        *base, "--client", "app", "--before", "2026-01-01T00:00:00Z", "--reason", "x"
    )
    assert status == 0, text
    assert json.loads(text)["before"] == 1767225600.0
    later = Identity(subject="n", issuer="iss", expires_at=9e9, client_id="app")
    assert asyncio.run(listed.revoked(later, 1767225599.0))
    assert not asyncio.run(listed.revoked(later, 1767225600.0))
    asyncio.run(listed.aclose())


@pytest.mark.parametrize(
    "argv",
    [
        ("--jti", "t-1", "--reason", " "),
        ("--jti", "t-1", "--before", "2026-01-01", "--reason", "x"),
        ("--subject", "dr", "--before", "yesterday", "--reason", "x"),
        ("--jti", "", "--reason", "x"),
    ],
    ids=["empty-reason", "jti-with-time", "bad-time", "empty-jti"],
)
def test_usage_errors_record_nothing(tmp_path: Path, key_file: Path, argv: tuple[str, ...]) -> None:
    db = tmp_path / "c.db"
    base = ("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file))
    status, _ = _run(*base, *argv)
    assert status == 2
    assert not db.exists()
    assert not Path(f"{db}.revocations").exists()


@pytest.mark.integration
def test_on_postgresql_the_revocation_reaches_the_stores_schema(key_file: Path) -> None:
    """``--store postgresql://... --schema S``: the admin entry on S's ledger, the row in S's
    list, which a replica's list on S reports."""

    async def check(backend: PostgresBackend) -> tuple[int, bool]:
        async def named() -> str:
            return backend.schema

        listed = PostgresRevocations(backend.dsn, schema=named)
        log = await PostgresLogStore.open(backend.dsn, schema=backend.schema)
        try:
            return await log.size(), await listed.revoked(STOLEN, 0.0)
        finally:
            await listed.aclose()
            await log.close()

    backend = asyncio.run(PostgresBackend.create())
    try:
        status, text = _run(
            *("auth", "revoke", "--store", backend.dsn, "--schema", backend.schema),
            *("--key-file", str(key_file), "--jti", "t-1", "--reason", "stolen"),
        )
        assert status == 0, text
        assert asyncio.run(check(backend)) == (1, True)
    finally:
        asyncio.run(backend.cleanup())
