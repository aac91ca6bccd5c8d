"""Token revocations every replica of a PostgreSQL store enforces, told by LISTEN/NOTIFY.

The table ``consentry_token_revocations`` (in the log store's schema) holds one row per
revoked ``jti``, subject or client (:mod:`middleware.auth.revocation`). :func:`record_revocation`
inserts one and, in the same transaction, sends ``NOTIFY`` on :data:`CHANNEL` with the schema
as payload (PostgreSQL delivers it at commit, to every listening session).

Each process holds the whole set in memory (:class:`PostgresRevocations`). A listener task
keeps one connection of its own ``LISTEN``-ing; after ``LISTEN`` it reloads the whole table,
and only then is the set *live*: a notification sent before the reconnect is covered by the
reload, one sent after arrives and triggers another. Every :data:`HEARTBEAT` seconds it asks
the connection for ``SELECT 1``; a connection that does not answer within the heartbeat, or
that closes, makes the set not live and the task reconnects. While it is not live (starting,
reconnecting, or the database down) each check reads the table for the token at hand (one
indexed read per key) instead of trusting a set that may be stale: a revoked token is never
accepted past a lost notification, at the price of a read per request until the listener is
back; a check that cannot read raises :class:`~middleware.errors.ServiceUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation, RevocationSet
from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.storage.postgres_pool import open_pool, translated

__all__ = [
    "CHANNEL",
    "HEARTBEAT",
    "LISTENER_NAME",
    "SCHEMA",
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
    PRIMARY KEY (kind, value),
    CHECK ((kind = 'jti') = (before IS NULL))
);
"""
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
_INSERT: Final = (
    "INSERT INTO consentry_token_revocations (kind, value, before, revoked_at, reason) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, value) DO UPDATE SET "
    "before = GREATEST(consentry_token_revocations.before, excluded.before), "
    "revoked_at = excluded.revoked_at, reason = excluded.reason"
)
_NOTIFY: Final = "SELECT pg_notify($1, current_schema())"


async def record_revocation(
    pool: asyncpg.Pool, revocation: Revocation, *, reason: str, at: float
) -> None:
    """Insert ``revocation`` (a subject's or client's time only ever moves later) and notify
    every listener, in one transaction. ``pool``'s search_path is the store's schema."""
    async with translated(_WHAT), pool.acquire() as conn, conn.transaction():
        await conn.execute(
            _INSERT, revocation.kind, revocation.value, revocation.before, at, reason
        )
        await conn.execute(_NOTIFY, CHANNEL)


def _set_of(rows: list[Any]) -> RevocationSet:
    return RevocationSet.of(Revocation(row[0], row[1], row[2]) for row in rows)


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
        if self.live:
            return self._set.revokes(identity, issued_at)
        issued = float("-inf") if issued_at is None else issued_at
        async with translated(_WHAT):
            row = await pool.fetchval(
                _ONE, identity.token_id, identity.subject, identity.client_id, issued
            )
        return row is not None

    async def _reload(self) -> None:
        """Read the whole table; keep it unless a reload started later was applied first."""
        self._generation += 1
        generation = self._generation
        pool = await self._connected()
        async with translated(_WHAT):
            rows = await pool.fetch(_ALL)
        if generation > self._applied:
            self._applied = generation
            self._set = _set_of(rows)
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
        except ServiceUnavailable:
            # Not applied: checks read the table until a reconnect has reloaded the set.
            self.live = False
            if self._conn is not None:
                self._conn.terminate()

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
                await conn.add_listener(CHANNEL, self._notified)
                await self._reload()
                self.live = True
                while not conn.is_closed():
                    await asyncio.sleep(self._heartbeat)
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), self._heartbeat)
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                OSError,
                TimeoutError,
                ServiceUnavailable,
            ):
                pass
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
