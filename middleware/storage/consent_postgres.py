"""PostgreSQL consent store: the one several gateway replicas share (tables in ``consent_base``).

Recording a version takes a transaction-level advisory lock on the consent id, so two
replicas recording versions of one consent at once number them one after the other;
pseudonyms rely on the primary key (``ON CONFLICT DO NOTHING``, then read what is stored),
a keyed digest of the patient reference (``consent_base.lookup_of``). A previous-format table
(plain references) is migrated on open, in one transaction under the DDL lock, and dropped; its
rows' bytes stay in PostgreSQL's WAL (and a forgotten row's or an erased consent version's dead
tuple stays in the table file until VACUUM), which the operator's retention of WAL and backups
governs.
asyncpg, OS and timeout errors become :class:`~middleware.errors.ServiceUnavailable` in
:func:`~middleware.storage.postgres_pool.translated`, the one place. Tables live in
``schema``, set as the pool's ``search_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.storage.consent_base import ConsentRecord, PatientMark, lookup_of
from middleware.storage.ledger_postgres_schema import DDL_LOCK
from middleware.storage.postgres_pool import open_pool, translated

__all__ = ["PostgresConsentStore"]

_LOCK_CLASS = 0x43534E54  # "CSNT": consent-store advisory locks
_CONSENT_LOCK = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, hashtext('consent/' || $1::text))"

SCHEMA = """
CREATE TABLE IF NOT EXISTS consentry_consent_chains (
    lookup bytea PRIMARY KEY CHECK (octet_length(lookup) = 32),
    pseudonym bytea NOT NULL UNIQUE CHECK (octet_length(pseudonym) = 16)
);
CREATE TABLE IF NOT EXISTS consentry_consent_versions (
    ledger_idx bigint PRIMARY KEY CHECK (ledger_idx >= 0),
    consent_id text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    patient text NOT NULL,
    status text NOT NULL,
    revoked boolean NOT NULL,
    recorded_us bigint NOT NULL,
    data bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS consentry_consent_versions_consent
    ON consentry_consent_versions (consent_id, ledger_idx);
CREATE INDEX IF NOT EXISTS consentry_consent_versions_patient
    ON consentry_consent_versions (patient, ledger_idx);
CREATE TABLE IF NOT EXISTS consentry_consent_scan (
    id integer PRIMARY KEY CHECK (id = 1),
    size bigint NOT NULL CHECK (size >= 0)
);
INSERT INTO consentry_consent_scan (id, size) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""

_COLUMNS = "ledger_idx, consent_id, patient, status, revoked, recorded_us, data, version"
_SELECT = f"SELECT {_COLUMNS} FROM consentry_consent_versions"  # noqa: S608 (constants)
_CURRENT = f"{_SELECT} WHERE consent_id = $1 ORDER BY ledger_idx DESC LIMIT 1"
_VERSION = f"{_SELECT} WHERE consent_id = $1 AND version = $2"
_HISTORY = f"{_SELECT} WHERE consent_id = $1 ORDER BY ledger_idx"
_AT = f"{_SELECT} WHERE ledger_idx = $1"
_LATEST = (
    "ledger_idx = (SELECT max(ledger_idx) FROM consentry_consent_versions AS w "
    "WHERE w.consent_id = v.consent_id) ORDER BY ledger_idx"
)
_FOR_PATIENT = f"{_SELECT} AS v WHERE patient = $1 AND {_LATEST}"
_RECORDED = "SELECT ledger_idx FROM consentry_consent_versions WHERE ledger_idx = ANY($1::bigint[])"
_MARK = "SELECT count(*), max(ledger_idx) FROM consentry_consent_versions WHERE patient = $1"
_INSERT = (
    "INSERT INTO consentry_consent_versions (ledger_idx, consent_id, version, patient, status, "
    "revoked, recorded_us, data) VALUES ($1, $2, 1 + (SELECT count(*) FROM "
    "consentry_consent_versions WHERE consent_id = $2 AND ledger_idx < $1), $3, $4, $5, $6, $7) "
    "ON CONFLICT (ledger_idx) DO NOTHING"
)

_OLD_TABLE = "consentry_consent_pseudonyms"  # the previous format: plain patient references
_HAS_OLD = "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)"
_PSEUDONYM = "SELECT pseudonym FROM consentry_consent_chains WHERE lookup = $1"


def _translated() -> AbstractAsyncContextManager[None]:
    return translated("consent")


def _row(row: Any) -> ConsentRecord:
    index, cid, patient, status, revoked, recorded, data, version = row
    return ConsentRecord(index, cid, patient, status, bool(revoked), recorded, bytes(data), version)


class PostgresConsentStore:
    """A consent store in PostgreSQL; create it with :meth:`open`."""

    name = "postgresql"

    def __init__(self, pool: asyncpg.Pool, schema: str, *, lookup_key: bytes) -> None:
        """``lookup_key``: 32 bytes, ``derive_box_key(ledger key, LOOKUP_PURPOSE)``."""
        lookup_of(lookup_key, "")  # a key of the wrong size fails here, not on first use
        self._pool = pool
        self._key = lookup_key
        self.schema = schema

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        lookup_key: bytes,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
    ) -> PostgresConsentStore:
        """Connect, then create ``schema`` and the tables if missing, and migrate a
        previous-format pseudonym table (one transaction; idempotent)."""
        lookup_of(lookup_key, "")
        # The log store's DDL lock is taken inside: both stores may create the schema at once.
        pool = await open_pool(
            dsn, schema=schema, ddl=SCHEMA, what="consent", min_size=min_size, max_size=max_size
        )
        store = cls(pool, schema, lookup_key=lookup_key)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> int:
        """Move a previous-format table's rows under their lookups and drop it, under the DDL
        lock (replicas starting together migrate once); the rows moved."""
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(DDL_LOCK, self.schema)
            if not await conn.fetchval(_HAS_OLD, self.schema, _OLD_TABLE):
                return 0
            rows = await conn.fetch(f"SELECT patient, pseudonym FROM {_OLD_TABLE}")  # noqa: S608
            await conn.executemany(
                "INSERT INTO consentry_consent_chains (lookup, pseudonym) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                [(lookup_of(self._key, r[0]), bytes(r[1])) for r in rows],
            )
            await conn.execute(f"DROP TABLE {_OLD_TABLE}")
            return len(rows)

    def lookup(self, patient: str) -> bytes:
        return lookup_of(self._key, patient)

    async def pseudonym(self, patient: str) -> bytes | None:
        async with _translated():
            value = await self._pool.fetchval(_PSEUDONYM, lookup_of(self._key, patient))
        return None if value is None else bytes(value)

    async def pseudonym_for(self, patient: str, candidate: bytes) -> bytes:
        lookup = lookup_of(self._key, patient)
        async with _translated(), self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO consentry_consent_chains (lookup, pseudonym) VALUES ($1, $2) "
                "ON CONFLICT (lookup) DO NOTHING",
                lookup,
                candidate,
            )
            return bytes(await conn.fetchval(_PSEUDONYM, lookup))

    async def forget(self, patient: str) -> bool:
        sql = "DELETE FROM consentry_consent_chains WHERE lookup = $1"
        async with _translated():
            status = await self._pool.execute(sql, lookup_of(self._key, patient))
        return bool(status != "DELETE 0")

    async def erase(self, patient: str) -> tuple[int, ...]:
        sql = "DELETE FROM consentry_consent_versions WHERE patient = $1 RETURNING ledger_idx"
        async with _translated():
            rows = await self._pool.fetch(sql, patient)
        return tuple(sorted(int(r[0]) for r in rows))

    async def record(self, record: ConsentRecord) -> ConsentRecord:
        r = record
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_CONSENT_LOCK, r.consent_id)
            status = await conn.execute(
                _INSERT,
                r.ledger_index,
                r.consent_id,
                r.patient,
                r.status,
                r.revoked,
                r.recorded_us,
                r.data,
            )
            if status.endswith(" 1"):  # "INSERT 0 1": a later version recorded first moves up
                await conn.execute(
                    "UPDATE consentry_consent_versions SET version = version + 1 "
                    "WHERE consent_id = $1 AND ledger_idx > $2",
                    r.consent_id,
                    r.ledger_index,
                )
            return _row(await conn.fetchrow(_AT, r.ledger_index))

    async def current(self, consent_id: str) -> ConsentRecord | None:
        async with _translated():
            row = await self._pool.fetchrow(_CURRENT, consent_id)
        return None if row is None else _row(row)

    async def version(self, consent_id: str, version: int) -> ConsentRecord | None:
        async with _translated():
            row = await self._pool.fetchrow(_VERSION, consent_id, version)
        return None if row is None else _row(row)

    async def history(self, consent_id: str) -> list[ConsentRecord]:
        async with _translated():
            return [_row(r) for r in await self._pool.fetch(_HISTORY, consent_id)]

    async def for_patient(self, patient: str) -> list[ConsentRecord]:
        async with _translated():
            return [_row(r) for r in await self._pool.fetch(_FOR_PATIENT, patient)]

    async def mark(self, patient: str) -> PatientMark:
        async with _translated():
            row = await self._pool.fetchrow(_MARK, patient)
        return PatientMark(int(row[0]), row[1])

    async def recorded(self, indexes: Sequence[int]) -> frozenset[int]:
        async with _translated():
            rows = await self._pool.fetch(_RECORDED, list(indexes))
        return frozenset(r[0] for r in rows)

    async def scanned(self) -> int:
        async with _translated():
            return int(await self._pool.fetchval("SELECT size FROM consentry_consent_scan"))

    async def set_scanned(self, size: int) -> None:
        sql = "UPDATE consentry_consent_scan SET size = greatest(size, $1) WHERE id = 1"
        async with _translated():
            await self._pool.execute(sql, size)

    async def ping(self) -> None:
        async with _translated():
            await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()  # idempotent in asyncpg
