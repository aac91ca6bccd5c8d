"""``consentry auth revoke``: a governed action (an admin ledger entry naming it, then the
store's list), which every process on the store enforces; usage errors, and a store that is
not a gateway's, exit 2 and record nothing; a list that cannot be written names the entry,
and ``--ledger-entry`` then records it without a second entry; no subject in the clear."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
from pathlib import Path

import pytest

from middleware.auth.cli_revoke import REVOCATION_TYPE
from middleware.auth.identity import Identity
from middleware.cli import main
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.storage.revocations_postgres import PostgresRevocations
from middleware.storage.revocations_sqlite import SqliteRevocations
from tests.contract.backends import PostgresBackend

ORIGIN = "gateway.test/ledger"
KEY = LedgerKey(SigningKey.from_seed(ORIGIN, bytes(range(32))), ORIGIN)
STOLEN = Identity(subject="dr", issuer="iss", expires_at=9e9, client_id="app", token_id="t-1")


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.key"
    write_ledger_key(path, KEY)
    return path


async def _first_entry(store: LogStore) -> None:
    """What a running gateway's store has: a ledger with an entry."""
    try:
        entry = NewEntry.create(EntryKind.ADMIN, b'{"type":"test/first"}', recorded_us=1)
        await store.append([entry], sign=checkpoint_signer(KEY.key, ORIGIN))
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A gateway's SQLite store (its ledger has an entry)."""
    path = tmp_path / "c.db"
    asyncio.run(_first_entry_sqlite(path))
    return path


async def _first_entry_sqlite(path: Path) -> None:
    await _first_entry(await SqliteLogStore.open(path))


async def _admin_entries(db: Path) -> list[dict[str, object]]:
    store = await SqliteLogStore.open(db)
    try:
        found = []
        size = await store.size()
        for index, leaf in enumerate(await store.leaves(0, size)):
            evidence = await store.evidence(index)
            if decode_leaf(leaf).kind is EntryKind.ADMIN and evidence is not None:
                body = json.loads(evidence.data)
                if body["type"] == REVOCATION_TYPE:
                    found.append(body | {"index": index})
        return found
    finally:
        await store.close()


def _digest(data: str) -> str:
    key = derive_box_key(KEY.data_secret, "token-revocation")
    return hmac.new(key, data.encode(), hashlib.sha256).hexdigest()


def test_a_revocation_is_recorded_on_the_ledger_then_enforced(db: Path, key_file: Path) -> None:
    base = ("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file))
    status, text = _run(*base, "--jti", "t-1", "--reason", "stolen laptop", "--operator", "sec")
    assert status == 0, text
    assert json.loads(text) == {
        "admin_entry": 1,
        "appended": True,
        "kind": "jti",
        "value": "t-1",
        "before": None,
        "expires": None,
        "revocations": f"{db}.revocations",
    }
    (entry,) = asyncio.run(_admin_entries(db))
    assert entry == {
        "index": 1,
        "type": REVOCATION_TYPE,
        "kind": "jti",
        "value": "t-1",
        "before": None,
        "reason": "stolen laptop",
        "operator": "sec",
        "revocation": _digest('{"before":null,"kind":"jti","value":"t-1"}'),
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


def test_a_subject_is_on_the_ledger_only_as_a_keyed_digest(db: Path, key_file: Path) -> None:
    """A patient's token has the patient's user id as ``sub``; the evidence cannot be shredded.
    Red before: the subject was in the evidence in the clear."""
    status, text = _run(
        *("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file)),
        *("--subject", "patient-1234", "--before", "2026-01-01", "--reason", "x"),
    )
    assert status == 0, text
    assert "patient-1234" not in text  # nor in the output (red before: it was)
    assert json.loads(text)["subject_digest"] == _digest("patient-1234")
    (entry,) = asyncio.run(_admin_entries(db))
    assert "patient-1234" not in json.dumps(entry)
    assert entry["subject_digest"] == _digest("patient-1234")
    assert entry["revocation"] == _digest(
        '{"before":1767225600.0,"kind":"subject","value":"patient-1234"}'
    )


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_a_store_that_is_not_a_gateways_is_refused(
    tmp_path: Path, key_file: Path, where: str
) -> None:
    """A wrong --store (a path relative to the operator's directory) creates nothing. Red
    before: a fresh store and list were made, exit 0, and no gateway enforced it."""
    db = tmp_path / "c.db"
    if where == "empty":
        asyncio.run(_close(db))  # a store with an empty ledger
    made = sorted(p.name for p in tmp_path.iterdir())
    status, text = _run(
        *("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file)),
        *("--jti", "t-1", "--reason", "x"),
    )
    assert status == 2
    assert text == ""
    assert not Path(f"{db}.revocations").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == made


async def _close(db: Path) -> None:
    await (await SqliteLogStore.open(db)).close()


def test_a_list_write_that_fails_names_the_entry_and_is_retried_alone(
    db: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The entry is appended, then the list cannot be written: exit 2 naming the entry (red
    before: only "store unavailable"); ``--ledger-entry`` records that revocation without a
    second entry, and refuses an entry recording another one."""
    base = ("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file))
    revoked = ("--subject", "dr", "--reason", "stolen laptop")
    Path(f"{db}.revocations").mkdir()
    status, _ = _run(*base, *revoked)
    assert status == 2
    error = capsys.readouterr().err
    assert "admin entry 1" in error
    assert "NOT in force" in error
    assert "--ledger-entry 1" in error
    Path(f"{db}.revocations").rmdir()

    status, text = _run(*base, "--subject", "other", "--reason", "x", "--ledger-entry", "1")
    assert status == 2
    assert "another revocation" in capsys.readouterr().err
    status, text = _run(*base, "--jti", "t-9", "--reason", "x", "--ledger-entry", "0")
    assert status == 2
    assert "not a token revocation" in capsys.readouterr().err

    status, text = _run(*base, *revoked, "--ledger-entry", "1")  # --before: the entry's
    assert status == 0, text
    out = json.loads(text)
    assert (out["admin_entry"], out["appended"]) == (1, False)
    (entry,) = asyncio.run(_admin_entries(db))
    assert out["before"] == entry["before"]
    listed = SqliteRevocations(Path(f"{db}.revocations"))
    assert asyncio.run(listed.revoked(STOLEN, 0.0))
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
def test_usage_errors_record_nothing(db: Path, key_file: Path, argv: tuple[str, ...]) -> None:
    base = ("auth", "revoke", "--store", f"sqlite:{db}", "--key-file", str(key_file))
    status, _ = _run(*base, *argv)
    assert status == 2
    assert asyncio.run(_admin_entries(db)) == []
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
        status, _ = _run(
            *("auth", "revoke", "--store", backend.dsn, "--schema", backend.schema),
            *("--key-file", str(key_file), "--jti", "t-1", "--reason", "stolen"),
        )
        assert status == 2  # no ledger in the schema yet: not a gateway's
        asyncio.run(_first_entry_pg(backend))
        status, text = _run(
            *("auth", "revoke", "--store", backend.dsn, "--schema", backend.schema),
            *("--key-file", str(key_file), "--jti", "t-1", "--reason", "stolen"),
        )
        assert status == 0, text
        assert json.loads(text)["revocations"] == (
            f"PostgreSQL table {backend.schema}.consentry_token_revocations"
        )
        assert asyncio.run(check(backend)) == (2, True)
    finally:
        asyncio.run(backend.cleanup())


async def _first_entry_pg(backend: PostgresBackend) -> None:
    await _first_entry(await PostgresLogStore.open(backend.dsn, schema=backend.schema))
