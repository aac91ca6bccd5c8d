"""The audit index and the evidence-key table in PostgreSQL: schema and the statements the
PostgreSQL log store runs (inside its transactions, on its connections).

Tables (beside the log, in the store's schema; none is under the log's append-only triggers):

``consentry_audit_index``
    one row per indexed ledger entry, keyed by ``idx``: a column per
    :class:`~middleware.audit.row.AuditRow` field, its tuples as ``text[]``, plus
    ``purpose_codes`` (the bare codes of ``purposes``). B-tree indexes on
    ``(recorded_us, idx)``, ``(patient, recorded_us, idx)``, ``(pseudonym, recorded_us, idx)``,
    ``(agent, recorded_us, idx)``; GIN indexes on the arrays the "contains" criteria read
    (``@>``).
``consentry_audit_keys``
    the evidence keys, wrapped, one per pseudonym: apart from evidence and index, so deleting
    one row is the crypto-shred. PostgreSQL keeps a deleted row's bytes in the table file
    until VACUUM lets the space be reused, and in WAL archives and backups: what an operator
    keeps of those decides how long a shredded key can still be recovered.
``consentry_audit_shredded``
    the tombstones: pseudonyms a shred recorded, each with the shred's ``link`` (the
    caller's keyed digest of the patient, for the accounting). An append writes their rows
    shredded and
    ``audit_key`` stores no key for them. A shred and ``audit_key`` take the log's state row
    lock (an append's sequencing lock; ``FOR SHARE`` for a key), so none of them interleave.

Rows are written with one statement per batch: each column is an array parameter, the
``text[]`` fields travel as JSON arrays (an array of arrays must be rectangular) and are
unpacked by the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage.audit_index_match import purpose_code
from middleware.storage.audit_index_match import tombstoned as match_tombstoned
from middleware.storage.audit_index_query import (
    count_sql,
    json_array,
    json_array_cached,
    select_sql,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy  # type: ignore[import-untyped,unused-ignore]

    _Connection: TypeAlias = (
        "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
    )

__all__ = [
    "INDEX_SCHEMA",
    "clear_index",
    "columns",
    "count_rows",
    "disagreeing",
    "distinct",
    "get_key",
    "read_row",
    "read_rows",
    "shred",
    "shred_entries",
    "shredded_chains",
    "store_key",
    "tombstoned",
    "upsert_sql",
    "write_rows",
]

INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS consentry_audit_index (
    idx bigint PRIMARY KEY CHECK (idx >= 0),
    recorded_us bigint NOT NULL,
    kind integer NOT NULL,
    flags integer NOT NULL,
    patient text,
    pseudonym bytea,
    agent text,
    roles text[] NOT NULL,
    organization text,
    client text,
    purposes text[] NOT NULL,
    purpose_codes text[] NOT NULL,
    action text NOT NULL,
    event_type text NOT NULL,
    subtype text,
    outcome text NOT NULL,
    resource_types text[] NOT NULL,
    entities text[] NOT NULL,
    break_glass boolean NOT NULL,
    request_id text NOT NULL,
    shredded boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS consentry_audit_index_time
    ON consentry_audit_index (recorded_us, idx);
CREATE INDEX IF NOT EXISTS consentry_audit_index_patient
    ON consentry_audit_index (patient, recorded_us, idx);
CREATE INDEX IF NOT EXISTS consentry_audit_index_pseudonym
    ON consentry_audit_index (pseudonym, recorded_us, idx);
CREATE INDEX IF NOT EXISTS consentry_audit_index_agent
    ON consentry_audit_index (agent, recorded_us, idx);
CREATE INDEX IF NOT EXISTS consentry_audit_index_purposes
    ON consentry_audit_index USING gin (purposes);
CREATE INDEX IF NOT EXISTS consentry_audit_index_purpose_codes
    ON consentry_audit_index USING gin (purpose_codes);
CREATE INDEX IF NOT EXISTS consentry_audit_index_resource_types
    ON consentry_audit_index USING gin (resource_types);
CREATE INDEX IF NOT EXISTS consentry_audit_index_entities
    ON consentry_audit_index USING gin (entities);
CREATE TABLE IF NOT EXISTS consentry_audit_keys (
    pseudonym bytea PRIMARY KEY CHECK (octet_length(pseudonym) = 16),
    wrapped bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS consentry_audit_shredded (
    pseudonym bytea PRIMARY KEY CHECK (octet_length(pseudonym) = 16)
);
ALTER TABLE consentry_audit_shredded ADD COLUMN IF NOT EXISTS link bytea;
CREATE INDEX IF NOT EXISTS consentry_audit_shredded_link ON consentry_audit_shredded (link);
"""

_COLUMNS = (
    "idx, recorded_us, kind, flags, patient, pseudonym, agent, roles, organization, client, "
    "purposes, purpose_codes, action, event_type, subtype, outcome, resource_types, entities, "
    "break_glass, request_id, shredded"
)
_SET = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:])


def _array(column: str) -> str:
    return f"ARRAY(SELECT jsonb_array_elements_text(u.{column}))"


#: The 21 column types of :func:`upsert_sql`'s array parameters, in order.
_TYPES = (
    "bigint", "bigint", "integer", "integer", "text", "bytea", "text", "jsonb", "text", "text",
    "jsonb", "jsonb", "text", "text", "text", "text", "jsonb", "jsonb", "boolean", "text",
    "boolean",
)  # fmt: skip


def upsert_sql(first: int = 1) -> str:
    """The upsert of index rows whose 21 array parameters (:func:`columns`) are ``$first``
    onwards, so that it can be one part of a larger statement (the append's)."""
    params = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(_TYPES))
    return (
        f"INSERT INTO consentry_audit_index ({_COLUMNS}) "  # noqa: S608  (constants only)
        "SELECT u.idx, u.recorded_us, u.kind, u.flags, u.patient, u.pseudonym, u.agent, "
        f"{_array('roles')}, u.organization, u.client, {_array('purposes')}, "
        f"{_array('purpose_codes')}, u.action, u.event_type, u.subtype, u.outcome, "
        f"{_array('resource_types')}, {_array('entities')}, u.break_glass, u.request_id, "
        f"u.shredded FROM unnest({params}) AS u({_COLUMNS}) "
        f"ON CONFLICT (idx) DO UPDATE SET {_SET} "
        # A row stored exactly so is not rewritten (nor are its GIN entries).
        "WHERE (consentry_audit_index.*) IS DISTINCT FROM (excluded.*)"
    )


_UPSERT = upsert_sql()


def columns(rows: Sequence[AuditRow]) -> list[list[object]]:
    """The 21 array parameters of :func:`upsert_sql`, one per column; ``rows`` hold each index
    once (``ON CONFLICT`` touches a row once: :func:`distinct`)."""
    return [
        [r.index for r in rows],
        [r.recorded_us for r in rows],
        [r.kind for r in rows],
        [r.flags for r in rows],
        [r.patient for r in rows],
        [r.pseudonym for r in rows],
        [r.agent for r in rows],
        [json_array_cached(r.roles) for r in rows],
        [r.organization for r in rows],
        [r.client for r in rows],
        [json_array_cached(r.purposes) for r in rows],
        [json_array_cached(tuple(purpose_code(p) for p in r.purposes)) for r in rows],
        [r.action for r in rows],
        [r.event_type for r in rows],
        [r.subtype for r in rows],
        [r.outcome for r in rows],
        [json_array_cached(r.resource_types) for r in rows],
        [json_array(r.entities) for r in rows],
        [r.break_glass for r in rows],
        [r.request_id for r in rows],
        [r.shredded for r in rows],
    ]


def _row(v: asyncpg.Record) -> AuditRow:
    return AuditRow(
        index=v["idx"],
        recorded_us=v["recorded_us"],
        kind=v["kind"],
        flags=v["flags"],
        patient=v["patient"],
        pseudonym=v["pseudonym"],
        agent=v["agent"],
        roles=tuple(v["roles"]),
        organization=v["organization"],
        client=v["client"],
        purposes=tuple(v["purposes"]),
        action=v["action"],
        event_type=v["event_type"],
        subtype=v["subtype"],
        outcome=v["outcome"],
        resource_types=tuple(v["resource_types"]),
        entities=tuple(v["entities"]),
        break_glass=v["break_glass"],
        request_id=v["request_id"],
        shredded=v["shredded"],
    )


async def write_rows(conn: _Connection, rows: Sequence[AuditRow]) -> None:
    """Upsert ``rows`` by index in one statement (inside the caller's transaction, if any)."""
    if rows:
        await conn.execute(_UPSERT, *columns(distinct(rows)))


def distinct(rows: Sequence[AuditRow]) -> list[AuditRow]:
    """``rows`` with one per index, the last given (``ON CONFLICT`` touches a row once)."""
    return list({r.index: r for r in rows}.values())


async def read_rows(conn: _Connection, q: AuditQuery) -> list[AuditRow]:
    sql, args = select_sql(q, "postgres", _COLUMNS)
    return [_row(v) for v in await conn.fetch(sql, *args)]


async def count_rows(conn: _Connection, q: AuditQuery) -> int:
    sql, args = count_sql(q, "postgres")
    return int(await conn.fetchval(sql, *args))


async def read_row(conn: _Connection, index: int) -> AuditRow | None:
    sql = f"SELECT {_COLUMNS} FROM consentry_audit_index WHERE idx = $1"  # noqa: S608
    found = await conn.fetchrow(sql, index)
    return None if found is None else _row(found)


_LOCK_LOG = "SELECT 1 FROM consentry_ledger_state WHERE id = 1 FOR UPDATE"
_SHARE_LOG = "SELECT 1 FROM consentry_ledger_state WHERE id = 1 FOR SHARE"
_SHREDDED = "SELECT pseudonym FROM consentry_audit_shredded WHERE pseudonym = ANY($1::bytea[])"
#: The rows ($1 indexes, $2 pseudonyms) whose leaf is missing or names another pseudonym:
#: compared in the server, so a chunk that agrees (every rebuild's) sends no row back.
_DISAGREEING = (
    "SELECT DISTINCT r.idx FROM unnest($1::bigint[], $2::bytea[]) AS r(idx, pseudonym) "
    "LEFT JOIN consentry_ledger_leaves l ON l.idx = r.idx "
    "WHERE l.idx IS NULL OR l.pseudonym IS DISTINCT FROM r.pseudonym ORDER BY r.idx"
)


async def disagreeing(conn: _Connection, rows: Sequence[AuditRow]) -> list[int]:
    """The indexes of ``rows`` whose leaf is missing or names another pseudonym (or none
    where the row names one), ascending: what ``reindex`` refuses (``check_leaves``)."""
    found = await conn.fetch(_DISAGREEING, [r.index for r in rows], [r.pseudonym for r in rows])
    return [int(v["idx"]) for v in found]


async def tombstoned(conn: _Connection, rows: Sequence[AuditRow]) -> list[AuditRow]:
    """``rows`` with those of shredded pseudonyms in their shredded form (an append's rows,
    inside its transaction, which holds the state row: no shred commits meanwhile)."""
    named = list({r.pseudonym for r in rows if r.pseudonym is not None and not r.shredded})
    if not named:
        return list(rows)
    found = {bytes(v["pseudonym"]) for v in await conn.fetch(_SHREDDED, named)}
    return match_tombstoned(rows, found)


async def store_key(conn: _Connection, pseudonym: bytes, candidate: bytes) -> bytes:
    """Store ``candidate`` unless the pseudonym has a key or was shredded, then read the
    stored one (``candidate``, a throwaway, for a shredded pseudonym). Inside the caller's
    transaction, holding the state row ``FOR SHARE``: a shred (which takes it ``FOR
    UPDATE``) commits entirely before or after. Each statement is its own snapshot at READ
    COMMITTED: an insert that lost the race waited for the winner's commit, and the read
    sees it."""
    await conn.execute(_SHARE_LOG)
    if await conn.fetch(_SHREDDED, [pseudonym]):
        return candidate
    await conn.execute(
        "INSERT INTO consentry_audit_keys (pseudonym, wrapped) VALUES ($1, $2) "
        "ON CONFLICT (pseudonym) DO NOTHING",
        pseudonym,
        candidate,
    )
    return await get_key(conn, pseudonym) or candidate


async def get_key(conn: _Connection, pseudonym: bytes) -> bytes | None:
    sql = "SELECT wrapped FROM consentry_audit_keys WHERE pseudonym = $1"
    found = await conn.fetchval(sql, pseudonym)
    return None if found is None else bytes(found)


async def shredded_chains(conn: _Connection, link: bytes) -> list[bytes]:
    sql = "SELECT pseudonym FROM consentry_audit_shredded WHERE link = $1"
    return [bytes(v["pseudonym"]) for v in await conn.fetch(sql, link)]


async def shred(conn: _Connection, pseudonym: bytes, link: bytes | None = None) -> int:
    """Delete the key and replace the pseudonym's unshredded rows by their shredded form,
    and record the tombstone, inside the caller's transaction (holding the state row, as an
    append does); returns rows shredded."""
    await conn.execute(_LOCK_LOG)
    await conn.execute("DELETE FROM consentry_audit_keys WHERE pseudonym = $1", pseudonym)
    await conn.execute(
        "INSERT INTO consentry_audit_shredded (pseudonym, link) VALUES ($1, $2) "
        "ON CONFLICT (pseudonym) DO UPDATE SET link = coalesce("
        "consentry_audit_shredded.link, excluded.link)",
        pseudonym,
        link,
    )
    sql = (
        f"SELECT {_COLUMNS} FROM consentry_audit_index "  # noqa: S608
        "WHERE pseudonym = $1 AND NOT shredded FOR UPDATE"
    )
    rows = [_row(v).shred() for v in await conn.fetch(sql, pseudonym)]
    await write_rows(conn, rows)
    return len(rows)


async def shred_entries(conn: _Connection, indexes: Sequence[int]) -> int:
    """Delete the evidence of ``indexes`` and shred their index rows, inside the caller's
    transaction; returns how many evidence rows were deleted."""
    status = await conn.execute(
        "DELETE FROM consentry_ledger_evidence WHERE idx = ANY($1::bigint[])", list(indexes)
    )
    sql = (
        f"SELECT {_COLUMNS} FROM consentry_audit_index "  # noqa: S608
        "WHERE idx = ANY($1::bigint[]) AND NOT shredded FOR UPDATE"
    )
    await write_rows(conn, [_row(v).shred() for v in await conn.fetch(sql, list(indexes))])
    return int(status.rpartition(" ")[2])


async def clear_index(conn: _Connection) -> None:
    """Empty the index (the keys stay: they are not derived data)."""
    await conn.execute("TRUNCATE consentry_audit_index")
