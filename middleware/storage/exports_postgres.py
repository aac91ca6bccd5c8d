"""Bulk export jobs in PostgreSQL tables every replica of the gateway reads.

The same board as :class:`~middleware.storage.exports_sqlite.SqliteExportBoard` (the contract:
:mod:`middleware.storage.exports_base`), for gateways that share a PostgreSQL store: the replica
that took a kick-off produces the job, and any replica answers its status, manifest, download
and DELETE requests, so no request needs to reach the replica that started it.

Two tables in the store's schema (the log store's; ``public`` for a plain DSN) per kind of
export (``audit``: AuditEvent; ``patient``: patient data), so the two never count against each
other's limits: ``consentry_<kind>_export_jobs`` (one row a job; its owner a keyed digest under
``derive_box_key(ledger data secret, OWNER_PURPOSE)``, the same on every replica, so the table
names no caller) and ``consentry_<kind>_export_chunks`` (the NDJSON output as ``bytea`` chunks
of at most about a MiB each, as many as the caller's ``max_events`` and ``max_bytes`` allow).
A kick-off counts running jobs under an advisory lock of the board's, so ``max_running`` holds
over every replica. A chunk is written, and a job finished, only while its row says running
(the row is locked ``FOR UPDATE`` first): a DELETE through any replica stops the producer.

A replica that dies leaves its jobs running on the board: a producer renews its job's lease
(``beat``) with every chunk and every :data:`~middleware.audit.bulk.BEAT_SECONDS`, and a status
read past the lease answers the job failed (:mod:`middleware.audit.bulk`). Process ids are not
looked up (``local`` is False): replicas are processes of other machines.

Deleting (:meth:`PostgresExportBoard.delete`, :meth:`~PostgresExportBoard.expire`, then
:meth:`~PostgresExportBoard.purge`) is a ``DELETE``: PostgreSQL keeps the deleted rows' bytes in
dead tuples until VACUUM (autovacuum, by default) reclaims them, and in its WAL and base
backups; the chunks are PHI, so the database's storage and backups must be protected as the
store's are. The board's calls are synchronous for its callers (:class:`~middleware.storage.
loop_thread.LoopThread`): a small pool of its own (opened on first use, closed by
:meth:`~PostgresExportBoard.close`, reopened on next use) so an export never waits behind a
ledger append. Errors become :class:`~middleware.errors.ServiceUnavailable`
(:func:`~middleware.storage.postgres_pool.translated`; a call past ``timeout`` too): the export
endpoints answer 503; nothing is served from a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TypeVar

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.errors import ServiceUnavailable
from middleware.ledger.signing import keyed_digest
from middleware.storage.exports_base import JobRow
from middleware.storage.loop_thread import LoopThread
from middleware.storage.postgres_pool import open_pool, translated

__all__ = ["KINDS", "PostgresExportBoard"]

T = TypeVar("T")

#: The kinds of export, each with tables of its own (and an advisory lock key).
KINDS: Final = {"audit": 1, "patient": 2}
_LOCK_CLASS: Final = 0x45585054  # "EXPT": the board's advisory lock (kick-offs)
_WHAT: Final = "export jobs"
_COLUMNS: Final = (
    "id, owner, request, transaction_time, state, error, too_large, count, host, pid,"
    " started, producer, beat, finished_at"
)
_DDL: Final = """
CREATE TABLE IF NOT EXISTS {jobs} (
    id text PRIMARY KEY,
    owner bytea NOT NULL CHECK (octet_length(owner) = 32),
    request text NOT NULL,
    transaction_time text NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    error text,
    too_large boolean NOT NULL DEFAULT false,
    count bigint NOT NULL DEFAULT 0,
    host text NOT NULL,
    pid integer NOT NULL,
    started text NOT NULL,
    producer text NOT NULL,
    beat double precision NOT NULL,
    finished_at double precision
);
CREATE INDEX IF NOT EXISTS {jobs}_finished ON {jobs} (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {chunks} (
    job text NOT NULL,
    file integer NOT NULL,
    seq integer NOT NULL,
    lines integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job, file, seq)
);
"""

#: The board's statements, for its two tables (``{jobs}``, ``{chunks}``: :data:`KINDS`); the
#: names and columns are constants, every value a parameter.
_SQL: Final = {
    "lock_row": "SELECT state FROM {jobs} WHERE id = $1 FOR UPDATE",
    "count": (
        "SELECT count(*), count(*) FILTER (WHERE owner = $1) FROM {jobs} WHERE state = 'running'"
    ),
    "insert": (
        "INSERT INTO {jobs} ({columns}) VALUES"
        " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ),
    "add_chunk": "INSERT INTO {chunks} (job, file, seq, lines, data) VALUES ($1, $2, $3, $4, $5)",
    "count_up": "UPDATE {jobs} SET count = count + $1, beat = $2 WHERE id = $3",
    "beat": "UPDATE {jobs} SET beat = $1 WHERE id = $2",
    "finish": (
        "UPDATE {jobs} SET state = $1, error = $2, too_large = $3, finished_at = $4 WHERE id = $5"
    ),
    "delete": "DELETE FROM {jobs} WHERE id = $1",
    "expire": "DELETE FROM {jobs} WHERE finished_at < $1",
    "purge": (
        "DELETE FROM {chunks} WHERE (job, file, seq) IN"
        " (SELECT c.job, c.file, c.seq FROM {chunks} c LEFT JOIN {jobs} j ON j.id = c.job"
        " WHERE j.id IS NULL OR j.state = 'failed' LIMIT $1)"
    ),
    "state": "SELECT state FROM {jobs} WHERE id = $1",
    "get": "SELECT {columns} FROM {jobs} WHERE id = $1",
    "running": "SELECT {columns} FROM {jobs} WHERE state = 'running' ORDER BY id",
    "counts": "SELECT file, sum(lines) FROM {chunks} WHERE job = $1 GROUP BY file ORDER BY file",
    # The first line cut in PostgreSQL: the chunk (up to a MiB) is not sent for one line.
    "first_line": (
        "SELECT CASE WHEN position('\\x0a'::bytea IN data) > 0"
        " THEN substring(data FROM 1 FOR position('\\x0a'::bytea IN data) - 1)"
        " ELSE ''::bytea END FROM {chunks} WHERE job = $1 AND file = $2 AND seq = 0"
    ),
    "chunk": "SELECT data FROM {chunks} WHERE job = $1 AND file = $2 AND seq = $3",
    "stored": "SELECT count(*) FROM {chunks}",
}


class PostgresExportBoard:
    """The shared board (module docstring) on ``dsn``, tables in ``schema``, for exports of
    ``kind`` (:data:`KINDS`). ``key``: the owners' digest key (32 bytes, the same on every
    replica). ``state_ttl``: how long a producer's "still running?" check (one a line) may
    answer from the last read (seconds; a DELETE elsewhere then stops it at its next chunk
    at the latest): one round trip a line would hold the event loop for each."""

    #: Producers are processes of other machines: only their lease tells they are alive.
    local = False

    def __init__(
        self,
        dsn: str,
        key: bytes,
        *,
        kind: str,
        schema: str = "public",
        state_ttl: float = 0.5,
        timeout: float = 10.0,
        max_size: int = 2,
    ) -> None:
        keyed_digest(key, ())  # a key of the wrong size fails here, not at the first export
        if kind not in KINDS:
            raise ValueError(f"export kind {kind!r} is not one of {sorted(KINDS)}")
        self._dsn, self._key, self._schema = dsn, key, schema
        self._kind = KINDS[kind]
        tables = {
            "jobs": f"consentry_{kind}_export_jobs",
            "chunks": f"consentry_{kind}_export_chunks",
        }
        self._jobs, self._chunks = tables["jobs"], tables["chunks"]
        self._sql = {name: text.format(columns=_COLUMNS, **tables) for name, text in _SQL.items()}
        self._state_ttl, self._timeout, self._max_size = state_ttl, timeout, max_size
        self._thread = LoopThread(f"consentry-{kind}-exports")
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._seen_running: dict[str, float] = {}  # job -> when state() last read "running"

    # -- plumbing: every call is one coroutine on the board's loop ---------------------------

    async def _connected(self) -> asyncpg.Pool:
        if self._opening is None:  # the board's loop only: no await before this is set
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                ddl = _DDL.format(jobs=self._jobs, chunks=self._chunks)
                self._pool = await open_pool(
                    self._dsn, schema=self._schema, ddl=ddl, what=_WHAT,
                    max_size=self._max_size, session_state=False,
                )  # fmt: skip
            return self._pool

    def _call(self, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        async def go() -> T:
            pool = await self._connected()
            async with translated(_WHAT):
                return await fn(pool)

        try:
            return self._thread.run(go(), timeout=self._timeout)
        except TimeoutError as exc:
            raise ServiceUnavailable(f"{_WHAT} store unavailable") from exc

    def _guarded(self, job_id: str, statements: list[tuple[str, tuple[object, ...]]]) -> bool:
        """Run ``statements`` (names in :data:`_SQL`, arguments) in one transaction if the
        job ``job_id`` is running (its row locked first: a concurrent DELETE or finish waits,
        or wins)."""

        async def run(pool: asyncpg.Pool) -> bool:
            async with pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(self._sql["lock_row"], job_id) != "running":
                    return False
                for name, args in statements:
                    await conn.execute(self._sql[name], *args)
                return True

        done = self._call(run)
        if not done:
            self._seen_running.pop(job_id, None)
        return done

    def _count(self, name: str, *args: object) -> int:
        """Run the DELETE ``name``; how many rows it deleted (asyncpg's status ``DELETE n``)."""
        status = self._call(lambda pool: pool.execute(self._sql[name], *args))
        return int(str(status).rsplit(" ", 1)[-1])

    # -- owners -------------------------------------------------------------------------------

    def owner_digest(self, owner: str) -> bytes:
        """What a job row holds for ``owner`` (any str, a lone surrogate kept): its keyed
        digest."""
        return keyed_digest(self._key, (owner.encode("utf-8", "surrogatepass"),))

    def owned_by(self, row: JobRow, owner: str) -> bool:
        """Whether ``owner`` started the job ``row``, in constant time."""
        return hmac.compare_digest(row.owner, self.owner_digest(owner))

    # -- writes -------------------------------------------------------------------------------

    def create(self, job: JobRow, *, max_running: int, max_per_owner: int | None = None) -> bool:
        """Record the running ``job`` unless ``max_running`` jobs run already on every
        replica, or ``max_per_owner`` of its owner's (False). Kick-offs take the board's
        advisory lock: two replicas never both take the last running place."""

        async def run(pool: asyncpg.Pool) -> bool:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, self._kind)
                running, owners = await conn.fetchrow(self._sql["count"], job.owner)
                if running >= max_running or (
                    max_per_owner is not None and owners >= max_per_owner
                ):
                    return False
                await conn.execute(
                    self._sql["insert"],
                    job.id, job.owner, job.request, job.transaction_time, job.state, job.error,
                    job.too_large, job.count, job.host, job.pid, job.started, job.producer,
                    job.beat, job.finished_at,
                )  # fmt: skip
                return True

        return self._call(run)

    def append(
        self, job_id: str, file: int, seq: int, lines: int, data: bytes, *, now: float
    ) -> bool:
        """Add chunk ``seq`` of output ``file`` to a running job and renew its lease; False
        when the job no longer runs (nothing is written)."""
        return self._guarded(
            job_id,
            [
                ("add_chunk", (job_id, file, seq, lines, data)),
                ("count_up", (lines, now, job_id)),
            ],
        )

    def beat(self, job_id: str, *, now: float) -> bool:
        """Renew a running job's lease; False when it no longer runs."""
        return self._guarded(job_id, [("beat", (now, job_id))])

    def finish(self, job_id: str, *, error: str | None, too_large: bool, now: float) -> bool:
        """End a running job: done (``error`` None) or failed (its output no longer served,
        deleted by the next purge); False when it was not running."""
        state = "done" if error is None else "failed"
        done = self._guarded(job_id, [("finish", (state, error, too_large, now, job_id))])
        self._seen_running.pop(job_id, None)
        return done

    def delete(self, job_id: str) -> None:
        """Forget the job (its producer, on any replica, stops); output: the next purge."""
        self._seen_running.pop(job_id, None)
        self._count("delete", job_id)

    def expire(self, finished_before: float) -> int:
        """Forget the jobs finished before ``finished_before``; how many there were."""
        return self._count("expire", finished_before)

    def purge(self, *, slice_chunks: int = 8) -> int:
        """Delete the chunks of forgotten and failed jobs, ``slice_chunks`` a statement (a
        short transaction each); the number deleted. Off the event loop (it waits)."""
        deleted = 0
        while True:
            gone = self._count("purge", slice_chunks)
            deleted += gone
            if gone < slice_chunks:
                return deleted

    # -- reads --------------------------------------------------------------------------------

    def state(self, job_id: str) -> str | None:
        """The job's state, None when there is none; "running" from the last read within
        ``state_ttl`` (the class docstring)."""
        seen = self._seen_running.get(job_id)
        if seen is not None and time.monotonic() - seen < self._state_ttl:
            return "running"
        state = self._call(lambda pool: pool.fetchval(self._sql["state"], job_id))
        if state == "running" and self._state_ttl > 0:
            if len(self._seen_running) > 1024:  # bounded: producers' jobs only, normally few
                self._seen_running.clear()
            self._seen_running[job_id] = time.monotonic()
        else:
            self._seen_running.pop(job_id, None)
        return None if state is None else str(state)

    def get(self, job_id: str) -> JobRow | None:
        """The job ``job_id``, None when there is none."""
        row = self._call(lambda pool: pool.fetchrow(self._sql["get"], job_id))
        return None if row is None else _job(row)

    def running(self) -> list[JobRow]:
        """Every running job (to tell which producers are gone)."""
        return [_job(row) for row in self._call(lambda pool: pool.fetch(self._sql["running"]))]

    def counts(self, job_id: str) -> list[int]:
        """The number of lines of each output file of the job, in order."""
        rows = self._call(lambda pool: pool.fetch(self._sql["counts"], job_id))
        return [int(row[1]) for row in rows]

    def file(self, job_id: str, n: int) -> bytes:
        """Output file ``n`` of the job (empty when it has none)."""
        return b"".join(self.chunks(job_id, n))

    def first_line(self, job_id: str, n: int) -> bytes:
        """The first line of output file ``n`` without its newline (empty when none)."""
        line = self._call(lambda pool: pool.fetchval(self._sql["first_line"], job_id, n))
        return b"" if line is None else bytes(line)

    def chunks(self, job_id: str, n: int) -> Iterator[bytes]:
        """Output file ``n`` chunk by chunk, one indexed read each when it is asked for; it
        ends early when the job's output is deleted meanwhile."""
        seq = 0
        while True:
            data = self._chunk(job_id, n, seq)
            if data is None:
                return
            yield data
            seq += 1

    def _chunk(self, job_id: str, n: int, seq: int) -> bytes | None:
        data = self._call(lambda pool: pool.fetchval(self._sql["chunk"], job_id, n, seq))
        return None if data is None else bytes(data)

    def stored_chunks(self) -> int:
        """How many chunks the tables hold (what a purge has left)."""
        return int(self._call(lambda pool: pool.fetchval(self._sql["stored"])))

    def close(self) -> None:
        """Close the pool and stop the board's thread (idempotent; reopened on next use)."""

        async def shut() -> None:
            pool, self._pool, self._opening = self._pool, None, None
            if pool is not None:
                await pool.close()

        # Closing: a pool that will not close (the database gone) is dropped with the loop.
        with contextlib.suppress(Exception):
            self._thread.run(shut(), timeout=self._timeout)
        self._thread.close()


def _job(row: asyncpg.Record) -> JobRow:
    values = list(row)
    values[1] = bytes(values[1])
    values[6] = bool(values[6])
    values[7] = int(values[7])
    return JobRow(*values)
