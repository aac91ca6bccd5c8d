"""Token revocations shared by the processes of one store (storage.revocations_*): a revocation
recorded anywhere binds every process's next check; on PostgreSQL a process whose listener is
down reads the table instead of trusting its set, and reloads the whole set on reconnect, so a
notification lost meanwhile cannot leave a revoked token usable."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation, RevocationList, RevocationSet
from middleware.errors import ServiceUnavailable, SettingsError
from middleware.storage import revocations_sqlite
from middleware.storage.revocations_open import record, token_revocations
from middleware.storage.revocations_postgres import CHANNEL, LISTENER_NAME, PostgresRevocations
from middleware.storage.revocations_sqlite import _SCHEMA as _SQLITE_SCHEMA
from middleware.storage.revocations_sqlite import SqliteRevocations, record_sqlite_revocation
from tests.contract.backends import POSTGRES, PostgresBackend

BuiltSet = tuple[RevocationSet, int]
TOKEN = Identity(subject="dr", issuer="iss", expires_at=9e9, client_id="app", token_id="t-1")
OTHER = Identity(subject="nurse", issuer="iss", expires_at=9e9, client_id="app2", token_id="t-2")


async def _until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


class Store:
    """Lists on one store, and recording into it (as ``consentry auth revoke`` does)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.opened: list[RevocationList] = []

    def list(self) -> RevocationList:
        schema = self.schema

        async def named() -> str:
            return schema

        if self.url.startswith("postgresql://"):
            made: RevocationList = PostgresRevocations(self.url, schema=named, heartbeat=0.2)
        else:
            made = SqliteRevocations(Path(self.url.removeprefix("sqlite:") + ".revocations"))
        self.opened.append(made)
        return made

    async def revoke(self, revocation: Revocation) -> None:
        await record(self.url, revocation, reason="stolen laptop", at=1000.0, schema=self.schema)


@pytest.fixture(params=["sqlite", POSTGRES])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: PostgresBackend | None = None
    if request.param == "sqlite":
        made = Store(f"sqlite:{tmp_path / 'x.db'}", "public")
    else:
        backend = await PostgresBackend.create()
        made = Store(backend.dsn, backend.schema)
    yield made
    for opened in made.opened:
        await opened.aclose()
    if backend is not None:
        await backend.cleanup()


async def _settled(listed: RevocationList) -> None:
    """Wait until a PostgreSQL list listens (so the test exercises the pushed set)."""
    if isinstance(listed, PostgresRevocations):
        await listed.revoked(OTHER, None)  # starts it
        await _until(lambda: listed.live)


# Behaviour on both stores.


async def test_a_revocation_binds_every_process_on_its_next_check(store: Store) -> None:
    a, b = store.list(), store.list()
    for listed in (a, b):
        await _settled(listed)
        assert not await listed.revoked(TOKEN, 500.0)
    await store.revoke(Revocation("jti", "t-1"))
    for listed in (a, b):
        if isinstance(listed, PostgresRevocations):  # pushed: at once, not synchronously
            held: PostgresRevocations = listed
            await _until(lambda: held._set.revokes(TOKEN, 500.0))  # noqa: B023  # awaited here
    assert await b.revoked(TOKEN, 500.0)
    assert await a.revoked(TOKEN, 500.0)
    assert not await a.revoked(OTHER, 500.0)


@pytest.mark.parametrize(
    ("revocation", "token", "issued_at", "revoked"),
    [
        # jti: that token only, whenever issued
        (Revocation("jti", "t-1"), TOKEN, 500.0, True),
        (Revocation("jti", "t-1"), OTHER, 500.0, False),
        # subject: its tokens issued before the time; one without iat counts as before
        (Revocation("subject", "dr", 600.0), TOKEN, 500.0, True),
        (Revocation("subject", "dr", 600.0), TOKEN, 600.0, False),
        (Revocation("subject", "dr", 600.0), TOKEN, None, True),
        (Revocation("subject", "dr", 600.0), OTHER, 500.0, False),
        # client: likewise, by client_id
        (Revocation("client", "app", 600.0), TOKEN, 599.0, True),
        (Revocation("client", "app", 600.0), TOKEN, 700.0, False),
        (Revocation("client", "app", 600.0), OTHER, 500.0, False),
    ],
    ids=[
        "jti-hit",
        "jti-other-token",
        "subject-before",
        "subject-at-the-time",
        "subject-no-iat",
        "subject-other",
        "client-before",
        "client-after",
        "client-other",
    ],
)
async def test_what_a_revocation_covers(
    store: Store, revocation: Revocation, token: Identity, issued_at: float | None, revoked: bool
) -> None:
    """Asked from the table (a list that is not live yet) and from the pushed set alike."""
    await store.revoke(revocation)
    cold = store.list()
    assert await cold.revoked(token, issued_at) is revoked
    await _settled(cold)
    assert await cold.revoked(token, issued_at) is revoked


async def test_a_later_time_for_a_subject_only_widens_it(store: Store) -> None:
    await store.revoke(Revocation("subject", "dr", 600.0))
    await store.revoke(Revocation("subject", "dr", 400.0))  # an older order does not narrow it
    assert await store.list().revoked(TOKEN, 500.0)


# PostgreSQL: the listener, and what happens while it is down.


async def _kill_listeners(dsn: str, schema: str) -> int:
    """Terminate the listening sessions of ``schema``'s lists (named by application_name)."""
    conn = await asyncpg.connect(dsn)
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"{LISTENER_NAME}:{schema}",
        )
    finally:
        await conn.close()
    return len(killed)


@pytest.mark.integration
async def test_a_notification_lost_while_the_listener_is_down_never_lets_a_token_through() -> None:
    """The listener is killed and a revocation recorded right away, before the listener task
    wakes from its heartbeat; it is not pushed to it. Every check from then reads the table,
    and the reconnect reloads the whole set (red if the set were trusted once its connection
    closed, as it was until the next heartbeat, or not reloaded on reconnect)."""
    backend = await PostgresBackend.create()
    store = Store(backend.dsn, backend.schema)
    try:
        listed = store.list()
        assert isinstance(listed, PostgresRevocations)
        await _settled(listed)
        listed._heartbeat = 2.0  # the task wakes long after the revocation below
        await asyncio.sleep(0.3)  # the task is inside its (now longer) heartbeat sleep
        assert await _kill_listeners(backend.dsn, backend.schema) == 1
        await store.revoke(Revocation("jti", "t-1"))  # nobody listens: no notification
        assert await listed.revoked(TOKEN, 500.0)  # read from the table
        await _until(lambda: listed.live)
        assert await listed.revoked(TOKEN, 500.0)  # from the reloaded set
    finally:
        for opened in store.opened:
            await opened.aclose()
        await backend.cleanup()


@pytest.mark.integration
async def test_an_older_reload_finishing_last_never_replaces_a_newer_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two reloads in flight: the first (one row) is slow to build, the second (two rows)
    is applied meanwhile; the first's older snapshot is then discarded, not applied. Red
    before: it replaced the newer set and the list stayed live on it (t-2 accepted)."""
    backend = await PostgresBackend.create()
    store = Store(backend.dsn, backend.schema)
    built = RevocationSet.of_rows
    entered = threading.Event()

    def slow_for_the_older(rows: Iterable[tuple[object, object, object]]) -> BuiltSet:
        rows = list(rows)
        if len(rows) == 1:  # the first reload's snapshot: t-1 only
            entered.set()
            time.sleep(0.5)
        return built(rows)

    try:
        listed = store.list()
        assert isinstance(listed, PostgresRevocations)
        await _settled(listed)
        monkeypatch.setattr(RevocationSet, "of_rows", slow_for_the_older)
        await store.revoke(Revocation("jti", "t-1"))
        assert await asyncio.to_thread(entered.wait, 10)  # the first reload is building
        await store.revoke(Revocation("jti", "t-2"))
        await _until(lambda: listed._generation == 3 and not listed._reloads)
        assert listed.live
        assert await listed.revoked(TOKEN, 500.0)
        assert await listed.revoked(OTHER, 500.0)
    finally:
        for opened in store.opened:
            await opened.aclose()
        await backend.cleanup()


async def test_a_database_it_cannot_reach_is_a_503() -> None:
    """Fail closed: no listener and no table means no answer, not "not revoked"."""

    async def named() -> str:
        return "public"

    dead = PostgresRevocations("postgresql://127.0.0.1:1/none", schema=named)
    with pytest.raises(ServiceUnavailable):
        await dead.revoked(TOKEN, 500.0)
    await dead.aclose()


async def test_another_schemas_notifications_are_ignored() -> None:
    async def named() -> str:
        return "mine"

    listed = PostgresRevocations("postgresql://127.0.0.1:1/none", schema=named)
    listed._schema = "mine"
    listed._notified(None, 0, CHANNEL, "theirs")
    assert not listed._reloads
    await listed.aclose()


def test_each_store_has_its_list(tmp_path: Path) -> None:
    assert isinstance(token_revocations(f"sqlite:{tmp_path / 'x.db'}"), SqliteRevocations)
    assert isinstance(token_revocations("postgresql://db/x"), PostgresRevocations)
    assert token_revocations("memory:") is None


async def test_a_memory_store_keeps_no_revocations() -> None:
    with pytest.raises(SettingsError):
        await record("memory:", Revocation("jti", "t"), reason="r", at=1.0)


# SQLite: the file replaced, a bad row, and a closed list.


def _delete(path: Path, *suffixes: str) -> None:
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_sqlite_a_replaced_file_is_followed_at_once(tmp_path: Path) -> None:
    """The file (and its -wal, -shm) deleted and recreated by a revocation: the running list
    enforces the new file. Red before: it kept reading the unlinked file (not revoked)."""
    path = tmp_path / "x.db.revocations"
    listed = SqliteRevocations(path)
    try:
        assert not await listed.revoked(TOKEN, 500.0)
        _delete(path, "", "-wal", "-shm")
        await record(f"sqlite:{tmp_path / 'x.db'}", Revocation("jti", "t-1"), reason="r", at=1.0)
        assert await listed.revoked(TOKEN, 500.0)
    finally:
        await listed.aclose()


async def test_sqlite_a_deleted_file_is_a_503_until_it_is_back(tmp_path: Path) -> None:
    """The file deleted while the gateway runs: every check is a 503 and the gateway does not
    create an empty one; once a revocation (or a restore) brings the file back, it is read.
    Red before: one 503, then the check created an empty file and t-1 was accepted."""
    path = tmp_path / "x.db.revocations"
    listed = SqliteRevocations(path)
    try:
        await record(f"sqlite:{tmp_path / 'x.db'}", Revocation("jti", "t-1"), reason="r", at=1.0)
        assert await listed.revoked(TOKEN, 500.0)
        _delete(path, "", "-wal", "-shm")
        for _ in range(3):
            with pytest.raises(ServiceUnavailable):
                await listed.revoked(TOKEN, 500.0)
        assert not path.exists()
        await record(f"sqlite:{tmp_path / 'x.db'}", Revocation("jti", "t-2"), reason="r", at=1.0)
        assert await listed.revoked(OTHER, 500.0)
    finally:
        await listed.aclose()


async def test_sqlite_a_file_replaced_while_it_is_opened_is_not_mistaken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is replaced between the open and the recording of which file is open: the
    open is retried, so the file at the path is the one read. Red before: the new file's
    identity was recorded for the old file's connection, and t-1 revoked in the file at the
    path was never seen."""
    path = tmp_path / "x.db.revocations"
    fresh = tmp_path / "new.revocations"
    record_sqlite_revocation(path, Revocation("jti", "other"), reason="r", at=1.0)
    record_sqlite_revocation(fresh, Revocation("jti", "seed"), reason="r", at=1.0)
    connect = revocations_sqlite._connect
    replaced: list[bool] = []

    def replacing(at: Path, **create: bool) -> sqlite3.Connection:
        db = connect(at, **create)
        if at == path and not replaced:
            replaced.append(True)
            os.replace(fresh, path)  # after the open, before its identity is taken
        return db

    monkeypatch.setattr(revocations_sqlite, "_connect", replacing)
    listed = SqliteRevocations(path)
    try:
        assert not await listed.revoked(TOKEN, 500.0)
        assert replaced
        record_sqlite_revocation(path, Revocation("jti", "t-1"), reason="r", at=2.0)
        assert await listed.revoked(TOKEN, 500.0)
    finally:
        await listed.aclose()


async def test_sqlite_an_unreadable_file_is_a_503_then_recovers(tmp_path: Path) -> None:
    """A failed check drops the connection, so the next opens the file again. Red before:
    the broken connection was kept, a 503 on every check until a restart."""
    path = tmp_path / "x.db.revocations"
    listed = SqliteRevocations(path)
    try:
        assert not await listed.revoked(TOKEN, 500.0)
        path.unlink()
        path.mkdir()  # the path now names something that is not a database
        with pytest.raises(ServiceUnavailable):
            await listed.revoked(TOKEN, 500.0)
        path.rmdir()
        _delete(path, "-wal", "-shm")
        await record(f"sqlite:{tmp_path / 'x.db'}", Revocation("jti", "t-1"), reason="r", at=1.0)
        assert await listed.revoked(TOKEN, 500.0)
    finally:
        await listed.aclose()


async def test_a_bad_stored_row_is_skipped_and_the_rest_enforced(store: Store) -> None:
    """Rows no ``Revocation`` accepts (written by hand): a 600-character jti is enforced,
    a client row whose time is not a number is skipped. Red before: ValueError (a 500) on
    SQLite; on PostgreSQL the listener died on the reload."""
    long_jti = "j" * 600
    rows = [("jti", long_jti, None), ("client", "app", "NaN")]
    if store.url.startswith("sqlite:"):
        db = sqlite3.connect(store.url.removeprefix("sqlite:") + ".revocations")
        try:
            db.executescript(_SQLITE_SCHEMA)
            db.executemany(
                "INSERT INTO consentry_token_revocations (kind, value, before, revoked_at, reason) "
                "VALUES (?, ?, ?, 1, 'r')",
                [(k, v, b) for k, v, b in rows],
            )
            db.commit()
        finally:
            db.close()
    listed = store.list()
    await _settled(listed)
    if not store.url.startswith("sqlite:"):
        conn = await asyncpg.connect(store.url, server_settings={"search_path": store.schema})
        try:
            await conn.execute(
                "INSERT INTO consentry_token_revocations (kind, value, before, revoked_at, reason) "
                "VALUES ('jti', $1, NULL, 1, 'r'), "
                "('client', 'app', 'NaN'::float8, 1, 'r')",
                long_jti,
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, store.schema)
        finally:
            await conn.close()
        assert isinstance(listed, PostgresRevocations)
        await _until(lambda: long_jti in listed._set.jtis)
        assert listed.live
    stolen = Identity(subject="x", issuer="iss", expires_at=9e9, client_id="app", token_id=long_jti)
    assert await listed.revoked(stolen, 500.0)
    assert not await listed.revoked(OTHER, 500.0)


async def test_sqlite_a_closed_list_refuses_and_does_not_reopen(tmp_path: Path) -> None:
    """Red before: a check after ``aclose`` silently reopened a connection never closed."""
    listed = SqliteRevocations(tmp_path / "x.db.revocations")
    assert not await listed.revoked(TOKEN, 500.0)
    await listed.aclose()
    with pytest.raises(ServiceUnavailable):
        await listed.revoked(TOKEN, 500.0)
    assert listed._db is None
    await listed.aclose()
