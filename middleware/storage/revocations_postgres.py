"""Token revocations every replica of a PostgreSQL store enforces, told by LISTEN/NOTIFY.

The table ``consentry_token_revocations`` (in the log store's schema) holds one row per
revoked ``jti``, subject or client (:mod:`middleware.auth.revocation`). :func:`record_revocation`
inserts one and, in the same transaction, sends ``NOTIFY`` on :data:`CHANNEL` with the schema
as payload (PostgreSQL delivers it at commit, to every listening session). A lift or a prune
(:mod:`~middleware.storage.revocations_admin_postgres`) removes rows and notifies the same
way.

Each process holds the whole set in memory (:class:`PostgresRevocations`). A listener task
keeps one connection of its own ``LISTEN``-ing; after ``LISTEN`` it reloads the whole table,
and only then is the set *live*: a notification sent before the reconnect is covered by the
reload, one sent after arrives and triggers another. The set stops being live the moment
asyncpg sees the listening connection close, however it closed (a termination listener; and a
check also looks at the connection itself), not at the next heartbeat: a revocation committed
after the listener died is never answered from the stale set. Every :data:`HEARTBEAT` seconds
the task asks the connection for ``SELECT 1``; one that does not answer within the heartbeat
(a half-open TCP connection) makes the set not live too, and the task reconnects. A reload
that fails for any reason leaves the set not live; rows are read back with
:meth:`~middleware.auth.revocation.RevocationSet.of_rows` (a bad row is skipped, counted and
logged). A check made while a reload is in flight is answered from the set held before it:
a revocation binds this process once the reload its notification started is applied, and a
set is never replaced by one read earlier (:meth:`PostgresRevocations._reload`). While it is
not live (starting,
reconnecting, or the database down) each check reads the table for the token at hand (one
indexed read per key) instead of trusting a set that may be stale: a revoked token is never
accepted past a lost notification, at the price of a read per request until the listener is
back; a check that cannot read raises :class:`~middleware.errors.ServiceUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation, RevocationSet
from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.storage.postgres_pool import open_pool, translated

__all__ = [
    "ADMIN_SCHEMA",
    "CHANNEL",
    "HEARTBEAT",
    "LISTENER_NAME",
    "NOTIFY",
    "SCHEMA",
    "WRITE_LOCK",
    "PostgresRevocations",
    "record_revocation",
]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS consentry_token_revocations (
    kind text NOT NULL CHECK (kind IN ('jti', 'subject', 'client')),
    value text NOT NULL,
    before double precision,
    revoked_at double precision NOT NULL,
    reason text NOT NULL,
    admin_entry bigint,
    expires double precision,
    PRIMARY KEY (kind, value),
    CHECK ((kind = 'jti') = (before IS NULL))
);
CREATE TABLE IF NOT EXISTS consentry_token_revocation_lifts (
    kind text NOT NULL,
    value text NOT NULL,
    admin_entry bigint NOT NULL,
    lifted_at double precision NOT NULL,
    PRIMARY KEY (kind, value)
);
"""
#: What an administrator's command runs: :data:`SCHEMA`, and the columns a table made by an
#: earlier version lacks, added only when missing (an ALTER would lock out the replicas' reads
#: for a moment at every run).
ADMIN_SCHEMA: Final = (
    SCHEMA  # noqa: S608  (constants only)
    + """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema =
            current_schema() AND table_name = 'consentry_token_revocations'
            AND column_name = 'admin_entry') THEN
        ALTER TABLE consentry_token_revocations ADD COLUMN admin_entry bigint,
            ADD COLUMN expires double precision;
    END IF;
END $$;
"""
)
#: First key of the revocation list's two-key advisory lock; the second is derived from the
#: store's schema (``hashtext(current_schema())``), so lists in different schemas do not wait
#: for each other (the scheme of ``ledger_postgres_schema.SIGNER_LOCK`` and ``DDL_LOCK``).
_LOCK_CLASS: Final = 0x43525643  # "CRVC"
#: Taken first by every write of an administrator's command, so a revocation and a lift of
#: the same thing go one after the other; a transaction-level advisory lock, which needs no
#: privilege on the tables (a ``LOCK TABLE`` strong enough needs UPDATE, DELETE or TRUNCATE)
#: and which the replicas' reads never wait for.
WRITE_LOCK: Final = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, hashtext(current_schema()))"
#: The notification channel; the payload is the schema whose table changed.
CHANNEL: Final = "consentry_token_revocations"
#: Seconds between the listener's liveness checks (and the longest it waits for an answer).
HEARTBEAT: Final = 2.0
#: The listening session's ``application_name`` (``<this>:<schema>``), for operators.
LISTENER_NAME: Final = "consentry-revocations"
_WHAT: Final = "token revocation"
_ALL: Final = "SELECT kind, value, before FROM consentry_token_revocations"
_ONE: Final = (
    "SELECT 1 FROM consentry_token_revocations WHERE (kind = 'jti' AND value = $1) "
    "OR (kind = 'subject' AND value = $2 AND before > $4) "
    "OR (kind = 'client' AND value = $3 AND before > $4) LIMIT 1"
)
# admin_entry: the later (GREATEST skips a NULL); expires: the later, NULL (unknown: never
# pruned) if either is.
_INSERT: Final = (
    "INSERT INTO consentry_token_revocations "
    "(kind, value, before, revoked_at, reason, admin_entry, expires) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, value) DO UPDATE SET "
    "before = GREATEST(consentry_token_revocations.before, excluded.before), "
    "revoked_at = excluded.revoked_at, reason = excluded.reason, "
    "admin_entry = GREATEST(consentry_token_revocations.admin_entry, excluded.admin_entry), "
    "expires = CASE WHEN consentry_token_revocations.expires IS NULL "
    "OR excluded.expires IS NULL THEN NULL "
    "ELSE GREATEST(consentry_token_revocations.expires, excluded.expires) END"
)
_LIFTED: Final = (
    "SELECT admin_entry FROM consentry_token_revocation_lifts WHERE kind = $1 AND value = $2"
)
NOTIFY: Final = "SELECT pg_notify($1, current_schema())"


async def record_revocation(
    pool: asyncpg.Pool,
    revocation: Revocation,
    *,
    reason: str,
    at: float,
    entry: int | None = None,
    expires: float | None = None,
) -> int | None:
    """Insert ``revocation``, recorded by admin entry ``entry`` (a subject's or client's time
    only ever moves later), and notify every listener, in one transaction; None once done.
    A lift recorded by an entry after ``entry`` wins: nothing is written and its entry is
    returned (:data:`WRITE_LOCK` orders the two). ``pool``'s search_path is the store's
    schema, its tables made with :data:`ADMIN_SCHEMA` (or :data:`SCHEMA` on a new store)."""
    async with translated(_WHAT), pool.acquire() as conn, conn.transaction():
        await conn.execute(WRITE_LOCK)
        if entry is not None:
            lift = await conn.fetchval(_LIFTED, revocation.kind, revocation.value)
            if lift is not None and lift > entry:
                return int(lift)
        await conn.execute(
            _INSERT,
            *(revocation.kind, revocation.value, revocation.before, at, reason, entry, expires),
        )
        await conn.execute(NOTIFY, CHANNEL)
    return None


class PostgresRevocations:
    """The revocation list of one process (module docstring), started on first use."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: Callable[[], Awaitable[str]],
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self._dsn = dsn
        self._schema_of = schema
        self._heartbeat = heartbeat
        self._schema = ""
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._set = RevocationSet()
        self._generation = 0  # reloads started
        self._applied = 0  # the newest reload whose set is held
        self._closed = False
        self._conn: asyncpg.Connection | None = None  # the listening session
        #: Whether the set is current (the listener is connected and has reloaded since).
        self.live = False
        #: Set each time the set is replaced (tests and the benchmark wait on it).
        self.changed = asyncio.Event()
        self._log = get_logger("consentry.auth")

    async def _connected(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise ServiceUnavailable(f"{_WHAT} store closed")
            if self._pool is None:
                self._schema = await self._schema_of()
                self._pool = await open_pool(
                    self._dsn, schema=self._schema, ddl=SCHEMA, what=_WHAT, max_size=2
                )
                self._listener = asyncio.get_running_loop().create_task(self._listen())
            return self._pool

    async def revoked(self, identity: Identity, issued_at: float | None) -> bool:
        """Whether the token is revoked: from the set while it is live, else from the table
        (raises :class:`ServiceUnavailable` when it cannot be read)."""
        pool = await self._connected()
        conn = self._conn
        if self.live and conn is not None and not conn.is_closed():
            return self._set.revokes(identity, issued_at)
        issued = float("-inf") if issued_at is None else issued_at
        async with translated(_WHAT):
            row = await pool.fetchval(
                _ONE, identity.token_id, identity.subject, identity.client_id, issued
            )
        return row is not None

    async def _reload(self) -> None:
        """Read the whole table; keep it unless a reload started later was applied first.

        Reloads overlap (two notifications close together, or one racing the reconnect's
        reload) and their builds may finish in either order, so the generation is checked
        after the build too: an older snapshot never replaces a newer one. A later reload
        read the table after every notification that started an earlier one had arrived,
        so its snapshot holds every revocation the earlier one held."""
        self._generation += 1
        generation = self._generation
        pool = await self._connected()
        async with translated(_WHAT):
            rows = await pool.fetch(_ALL)
        if generation > self._applied:
            # O(rows): built on a worker thread, so a long list does not stall the event loop.
            built = [(row[0], row[1], row[2]) for row in rows]
            held, skipped = await asyncio.to_thread(RevocationSet.of_rows, built)
            if skipped:
                self._log.warning("unusable token revocation rows skipped", count=skipped)
            if generation <= self._applied:  # a newer reload was applied during the build
                return
            self._applied = generation
            self._set = held
            self.changed.set()
            self.changed = asyncio.Event()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self._schema:  # another schema's table (another test, another tenant)
            return
        task = asyncio.get_running_loop().create_task(self._reload_or_drop())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_or_drop(self) -> None:
        try:
            await self._reload()
        except Exception:  # noqa: BLE001  # any failure, not only a 503: never live on a stale set
            # Not applied: checks read the table until a reconnect has reloaded the set.
            self.live = False
            if self._conn is not None:
                self._conn.terminate()

    def _lost(self, conn: object) -> None:
        """asyncpg's termination listener: the listening connection closed (module docstring);
        a late call for a connection already replaced is ignored."""
        if self._conn is None or conn is self._conn:
            self.live = False

    async def _listen(self) -> None:
        """Keep a LISTEN connection (module docstring) until closed."""
        while not self._closed:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._heartbeat * 5,
                    server_settings={"application_name": f"{LISTENER_NAME}:{self._schema}"},
                )
                self._conn = conn
                conn.add_termination_listener(self._lost)
                await conn.add_listener(CHANNEL, self._notified)
                await self._reload()
                self.live = True
                while not conn.is_closed():
                    await asyncio.sleep(self._heartbeat)
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), self._heartbeat)
            except Exception as exc:  # noqa: BLE001  # any failure reconnects: the task lives on
                self._log.info("token revocation listener lost", error=type(exc).__name__)
            finally:
                self.live = False
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            if not self._closed:
                self._log.warning("token revocation listener reconnecting")
                await asyncio.sleep(self._heartbeat)

    async def aclose(self) -> None:
        """Stop the listener and close the pool (idempotent)."""
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        self.live = False
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for task in list(self._reloads):
            task.cancel()
        if self._reloads:
            await asyncio.gather(*self._reloads, return_exceptions=True)
        if pool is not None:
            await pool.close()
