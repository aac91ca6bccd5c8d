"""``consentry auth revocations`` and ``consentry auth revoke --lift`` on SQLite and
PostgreSQL: the list as stored (a subject only as its keyed digest); a lift is appended to the
ledger before the row goes, and every process on the store accepts the token again; no
ledger entry, no lift; lifting what is not revoked appends nothing; a lift and a revocation
end as the ledger orders them, whatever order the list sees them in; ``--prune`` drops only
jti revocations whose recorded token expired past the margin; a list made by an earlier
version (no ``admin_entry``/``expires`` columns) is upgraded by the first command."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.auth.cli_lift import LIFT_TYPE
from middleware.auth.identity import Identity
from middleware.auth.revocation import PRUNE_MARGIN, Lifted, Revocation, RevocationList
from middleware.cli import main
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_open import open_log_store
from middleware.storage.revocations_open import lift, record
from middleware.storage.revocations_postgres import PostgresRevocations
from middleware.storage.revocations_sqlite import SqliteRevocations
from tests.contract.backends import POSTGRES, PostgresBackend

ORIGIN = "gateway.test/ledger"
KEY = LedgerKey(SigningKey.from_seed(ORIGIN, bytes(range(32))), ORIGIN)
TOKEN = Identity(subject="dr", issuer="iss", expires_at=9e9, client_id="app", token_id="t-1")


def _digest(data: str) -> str:
    key = derive_box_key(KEY.data_secret, "token-revocation")
    return hmac.new(key, data.encode(), hashlib.sha256).hexdigest()


class Gateway:
    """A gateway's store (its ledger has an entry) and the CLI run against it."""

    def __init__(self, url: str, schema: str, key_file: Path) -> None:
        self.url, self.schema, self.key_file = url, schema, key_file
        self.opened: list[RevocationList] = []
        self.sql: Callable[[str], Awaitable[None]] | None = None

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """``consentry auth ARGV --store ...``: status, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        store = ("--store", self.url, "--schema", self.schema, "--key-file", str(self.key_file))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["auth", *argv, *store])
        return status, out.getvalue(), err.getvalue()

    async def run(self, *argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(self.cli, *argv)

    def process(self) -> RevocationList:
        """The list another gateway process on the store holds."""
        if self.url.startswith("sqlite:"):
            made: RevocationList = SqliteRevocations(Path(self.url[7:] + ".revocations"))
        else:
            schema = self.schema

            async def named() -> str:
                return schema

            made = PostgresRevocations(self.url, schema=named, heartbeat=0.2)
        self.opened.append(made)
        return made

    async def log(self) -> LogStore:
        return await open_log_store(self.url, schema=self.schema)

    async def entries(self) -> list[dict[str, object]]:
        store = await self.log()
        try:
            found = []
            for index in range(await store.size()):
                evidence = await store.evidence(index)
                if evidence is not None:
                    found.append(json.loads(evidence.data) | {"index": index})
            return found
        finally:
            await store.close()

    async def execute(self, sql: str) -> None:
        """Run ``sql`` on the store (SQLite: the ledger's file)."""
        if self.url.startswith("sqlite:"):
            db = sqlite3.connect(self.url[7:])
            try:
                db.executescript(sql)
            finally:
                db.close()
            return
        conn = await asyncpg.connect(self.url, server_settings={"search_path": self.schema})
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def execute_list(self, sql: str) -> None:
        """Run ``sql`` on the revocation list (SQLite: its own file)."""
        if not self.url.startswith("sqlite:"):
            await self.execute(sql)
            return
        db = sqlite3.connect(self.url[7:] + ".revocations")
        try:
            db.executescript(sql)
        finally:
            db.close()


@pytest.fixture(params=["sqlite", POSTGRES])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    key_file = tmp_path / "ledger.key"
    write_ledger_key(key_file, KEY)
    backend: PostgresBackend | None = None
    if request.param == "sqlite":
        made = Gateway(f"sqlite:{tmp_path / 'c.db'}", "public", key_file)
    else:
        backend = await PostgresBackend.create()
        made = Gateway(backend.dsn, backend.schema, key_file)
    store = await made.log()
    try:
        entry = NewEntry.create(EntryKind.ADMIN, b'{"type":"test/first"}', recorded_us=1)
        await store.append([entry], sign=checkpoint_signer(KEY.key, ORIGIN))
    finally:
        await store.close()
    yield made
    for opened in made.opened:
        await opened.aclose()
    if backend is not None:
        await backend.cleanup()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_the_list_shows_each_revocation_and_a_subject_only_as_its_digest(
    gateway: Gateway,
) -> None:
    status, _, err = await gateway.run(
        "revoke", "--jti", "t-1", "--expires", "4102444800", "--reason", "stolen"
    )
    assert status == 0, err
    await gateway.run(
        "revoke", "--subject", "patient-1234", "--before", "2026-01-01", "--reason", "left"
    )
    await gateway.run(
        "revoke", "--client", "app", "--before", "2026-01-02T00:00:00Z", "--reason", "typo"
    )
    status, text, err = await gateway.run("revocations")
    assert status == 0, err
    assert "patient-1234" not in text
    body = json.loads(text)
    assert body["count"] == 3
    rows = {row["kind"]: row for row in body["revocations"]}
    assert rows["jti"] | {"revoked_at": 0} == {
        "kind": "jti",
        "value": "t-1",
        "before": None,
        "revoked_at": 0,
        "expires": 4102444800.0,
        "reason": "stolen",
        "admin_entry": 1,
    }
    assert rows["subject"]["subject_digest"] == _digest("patient-1234")
    assert (rows["subject"]["admin_entry"], rows["subject"]["before"]) == (2, 1767225600.0)
    assert (rows["client"]["value"], rows["client"]["admin_entry"]) == ("app", 3)
    assert abs(rows["client"]["revoked_at"] - time.time()) < 60
    entries = await gateway.entries()
    assert entries[2]["subject_digest"] == rows["subject"]["subject_digest"]  # matched up


async def test_a_lift_is_on_the_ledger_and_every_process_accepts_the_token_again(
    gateway: Gateway,
) -> None:
    a, b = gateway.process(), gateway.process()
    for listed in (a, b):
        assert not await listed.revoked(TOKEN, 500.0)
    status, _, err = await gateway.run("revoke", "--jti", "t-1", "--reason", "stolen")
    assert status == 0, err
    for listed in (a, b):
        await _until(lambda: listed.revoked(TOKEN, 500.0))  # noqa: B023  # awaited here
    status, text, err = await gateway.run(
        "revoke", "--lift", "--jti", "t-1", "--reason", "found again", "--operator", "sec"
    )
    assert status == 0, err
    out = json.loads(text)
    assert (out["admin_entry"], out["appended"], out["removed"], out["revoked_by"]) == (
        2,
        True,
        True,
        1,
    )
    for listed in (a, b):
        await _until(lambda: _not(listed.revoked(TOKEN, 500.0)))  # noqa: B023  # awaited here
    lifted = (await gateway.entries())[2]
    assert lifted == {
        "index": 2,
        "type": LIFT_TYPE,
        "kind": "jti",
        "value": "t-1",
        "lifts": _digest('{"kind":"jti","value":"t-1"}'),
        "revoked_by": 1,
        "reason": "found again",
        "operator": "sec",
    }
    status, text, _ = await gateway.run("revocations")
    assert json.loads(text)["count"] == 0


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_a_subjects_lift_names_it_on_the_ledger_only_as_its_digest(gateway: Gateway) -> None:
    await gateway.run("revoke", "--subject", "patient-1234", "--reason", "x")
    listed = gateway.process()
    await _until(
        lambda: listed.revoked(Identity(subject="patient-1234", issuer="i", expires_at=9e9), 0.0)
    )
    status, text, err = await gateway.run(
        "revoke", "--lift", "--subject", "patient-1234", "--reason", "y"
    )
    assert status == 0, err
    assert "patient-1234" not in text  # red before: the output named it
    assert json.loads(text)["subject_digest"] == _digest("patient-1234")
    entry = (await gateway.entries())[2]
    assert "patient-1234" not in json.dumps(entry)
    assert entry["subject_digest"] == _digest("patient-1234")
    await _until(
        lambda: _not(
            listed.revoked(Identity(subject="patient-1234", issuer="i", expires_at=9e9), 0.0)
        )
    )


async def test_lifting_what_is_not_revoked_is_refused_and_appends_nothing(
    gateway: Gateway,
) -> None:
    await gateway.run("revoke", "--client", "app", "--reason", "x")
    for selector in (("--jti", "t-9"), ("--client", "other"), ("--subject", "patient-1234")):
        status, text, err = await gateway.run("revoke", "--lift", *selector, "--reason", "y")
        assert (status, text) == (2, "")
        assert "is not revoked" in err
        assert "patient-1234" not in err
    assert len(await gateway.entries()) == 2


async def test_no_ledger_entry_no_lift(gateway: Gateway) -> None:
    """The ledger refuses the append (a trigger): exit 2, and the revocation stays in force."""
    await gateway.run("revoke", "--jti", "t-1", "--reason", "stolen")
    if gateway.url.startswith("sqlite:"):
        await gateway.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON consentry_ledger_leaves "
            "BEGIN SELECT RAISE(ABORT, 'read only'); END;"
        )
    else:
        await gateway.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'read only'; END $$; "
            "CREATE TRIGGER refuse BEFORE INSERT ON consentry_ledger_leaves "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    status, text, err = await gateway.run("revoke", "--lift", "--jti", "t-1", "--reason", "y")
    assert (status, text) == (2, ""), err
    assert "nothing lifted, the revocation is in force" in err
    assert "--ledger-entry N" in err  # the append may have committed all the same
    assert len(await gateway.entries()) == 2
    assert await gateway.process().revoked(TOKEN, 0.0)


async def test_a_list_that_cannot_be_written_names_the_lift_and_ledger_entry_applies_it(
    gateway: Gateway,
) -> None:
    await gateway.run("revoke", "--jti", "t-1", "--reason", "stolen")
    await gateway.execute_list(
        "CREATE TRIGGER refuse BEFORE INSERT ON consentry_token_revocation_lifts "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
        if gateway.url.startswith("sqlite:")
        else "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON consentry_token_revocation_lifts "
        "FOR EACH ROW EXECUTE FUNCTION refuse()"
    )
    status, _, err = await gateway.run("revoke", "--lift", "--jti", "t-1", "--reason", "y")
    assert status == 2
    assert "admin entry 2 records the lift" in err
    assert "STILL in force" in err
    assert "--ledger-entry 2" in err
    listed = gateway.process()
    assert await listed.revoked(TOKEN, 0.0)
    await gateway.execute_list(
        "DROP TRIGGER refuse"
        + ("" if gateway.url.startswith("sqlite:") else " ON consentry_token_revocation_lifts")
    )
    status, _, err = await gateway.run(
        "revoke", "--lift", "--jti", "t-2", "--reason", "y", "--ledger-entry", "2"
    )
    assert (status, "another lift" in err) == (2, True)
    status, _, err = await gateway.run(
        "revoke", "--lift", "--jti", "t-1", "--reason", "y", "--ledger-entry", "1"
    )
    assert (status, "not a revocation lift" in err) == (2, True)
    status, text, err = await gateway.run(
        "revoke", "--lift", "--jti", "t-1", "--reason", "y", "--ledger-entry", "2"
    )
    assert status == 0, err
    assert (json.loads(text)["appended"], json.loads(text)["removed"]) == (False, True)
    assert len(await gateway.entries()) == 3
    await _until(lambda: _not(listed.revoked(TOKEN, 0.0)))


async def test_a_lift_and_a_revocation_end_in_the_ledgers_order(gateway: Gateway) -> None:
    """Whatever order the list sees them in, the entry appended last wins."""
    jti = Revocation("jti", "t-1")

    async def revoke(entry: int) -> int | None:
        return await record(
            gateway.url, jti, reason="r", at=1.0, schema=gateway.schema, entry=entry
        )

    assert await revoke(5) is None
    # a lift appended before that revocation, applied after it: the revocation stands
    assert await lift(gateway.url, "jti", "t-1", entry=4, at=2.0, schema=gateway.schema) == Lifted(
        "kept", 5
    )
    listed = gateway.process()
    assert await listed.revoked(TOKEN, 0.0)
    # a lift appended after it: removed
    assert await lift(gateway.url, "jti", "t-1", entry=6, at=2.0, schema=gateway.schema) == Lifted(
        "removed"
    )
    await _until(lambda: _not(listed.revoked(TOKEN, 0.0)))
    # a revocation appended before that lift, applied after it (a late --ledger-entry): refused
    assert await revoke(5) == 6
    assert not await listed.revoked(TOKEN, 0.0)
    # a revocation appended after the lift: in force again
    assert await revoke(7) is None
    await _until(lambda: listed.revoked(TOKEN, 0.0))
    # and the CLI says so when its revocation lost to a later lift
    await gateway.run("revoke", "--jti", "t-2", "--reason", "r")  # entry 1
    await lift(gateway.url, "jti", "t-2", entry=9, at=3.0, schema=gateway.schema)
    status, _, err = await gateway.run(
        "revoke", "--jti", "t-2", "--reason", "r", "--ledger-entry", "1"
    )
    assert status == 2
    assert "admin entry 9, appended after it, lifts it" in err


async def test_prune_drops_only_jtis_whose_token_expired_past_the_margin(gateway: Gateway) -> None:
    now = time.time()
    gone, recent = now - PRUNE_MARGIN - 60, int(now - PRUNE_MARGIN + 60)

    async def expired(jti: str) -> None:
        """Revoked while its token was valid, which has expired since (the CLI refuses an
        --expires already past the margin)."""
        revocation = Revocation("jti", jti)
        await record(
            gateway.url, revocation, reason="r", at=1.0, schema=gateway.schema, expires=gone
        )

    await expired("gone")
    await gateway.run("revoke", "--jti", "recent", "--expires", str(recent), "--reason", "r")
    await gateway.run("revoke", "--jti", "unknown", "--reason", "r")
    # revoked again with an exp: the row's first revocation named none, so it stays unknown
    await expired("unknown")
    await gateway.run("revoke", "--subject", "old", "--before", "2001-01-01", "--reason", "r")
    await gateway.run("revoke", "--client", "app", "--before", "2001-01-01", "--reason", "r")
    status, text, err = await gateway.run("revocations", "--prune")
    assert status == 0, err
    body = json.loads(text)
    assert body["pruned"] == 1
    kept = sorted(row.get("value", row["kind"]) for row in body["revocations"])
    assert kept == ["app", "recent", "subject", "unknown"]
    status, text, _ = await gateway.run("revocations", "--prune")
    assert json.loads(text)["pruned"] == 0
    assert len(await gateway.entries()) == 5  # pruning appends nothing


async def test_usage_errors_append_nothing(gateway: Gateway) -> None:
    for argv in (
        ("--lift", "--jti", "t-1", "--before", "2026-01-01"),
        ("--lift", "--jti", "t-1", "--expires", "2026-01-01"),
        ("--subject", "dr", "--expires", "2026-01-01"),
        ("--jti", "t-1", "--expires", "soon"),
        ("--lift", "--jti", ""),
    ):
        status, text, _ = await gateway.run("revoke", *argv, "--reason", "x")
        assert (status, text) == (2, ""), argv
    assert len(await gateway.entries()) == 1


async def test_a_list_made_by_an_earlier_version_is_upgraded(gateway: Gateway) -> None:
    """The table without ``admin_entry`` and ``expires`` (as an earlier version made it):
    listed with admin_entry null, lifted, revoked again."""
    old = (
        "CREATE TABLE consentry_token_revocations (kind TEXT NOT NULL, value TEXT NOT NULL, "
        "before REAL, revoked_at REAL NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (kind, value));"
        "INSERT INTO consentry_token_revocations VALUES ('jti', 't-1', NULL, 1, 'old');"
    )
    await gateway.execute_list(old)
    status, text, err = await gateway.run("revocations")
    assert status == 0, err
    (row,) = json.loads(text)["revocations"]
    assert (row["value"], row["admin_entry"], row["expires"]) == ("t-1", None, None)
    status, text, err = await gateway.run("revoke", "--lift", "--jti", "t-1", "--reason", "y")
    assert status == 0, err
    assert json.loads(text)["revoked_by"] is None
    status, _, err = await gateway.run(
        "revoke", "--jti", "t-1", "--expires", "2030-01-01", "--reason", "z"
    )
    assert status == 0, err
    status, text, _ = await gateway.run("revocations")
    (row,) = json.loads(text)["revocations"]
    assert (row["admin_entry"], row["expires"]) == (2, 1893542399.999999)  # the day's end
