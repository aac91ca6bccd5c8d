"""One PostgreSQL append in four round trips: ``BEGIN``, lock-and-read, write, ``COMMIT``.

Inside the caller's transaction (READ COMMITTED) on one connection:

1. :data:`~middleware.storage.ledger_postgres_schema.LOCK_AND_READ` calls the schema's
   ``consentry_ledger_lock_append`` function: it takes the state row ``FOR UPDATE`` (the lock
   that sequences appends from every replica), then the signer advisory lock, then reads,
   each read in a snapshot taken after the lock was granted, what planning needs: the tree
   state, the batch's idempotency keys already recorded, each pseudonym's last index, which
   of the index rows' pseudonyms were shredded (a shred takes the same row lock, so that set
   cannot change before this transaction ends) and whether the current size has a checkpoint.
2. Python plans the batch (:func:`~middleware.ledger.sequencer.plan_batch`), derives the index
   rows (shredded ones in their shredded form) and signs the new state's checkpoint.
3. One statement writes everything the batch adds: leaves, evidence, the new state row, the
   checkpoint and the index rows, as data-modifying ``WITH`` parts of one ``INSERT``
   (PostgreSQL manual, "Data-Modifying Statements in WITH"). The parts see one snapshot and
   touch disjoint rows; the evidence's foreign key and the leaves' contiguity trigger run at
   the end of the statement, over all its rows, as they ran after separate statements.

Before this module an append took twelve statements (lock, signer lock, keys, pseudonyms,
leaves, evidence, state, shredded, index, checkpoint, plus ``BEGIN`` and ``COMMIT``); the
semantics are unchanged: same locks in the same order, same rows, one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

from middleware.audit.row import AuditRow
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.sequencer import (
    CheckpointSigner,
    PlannedLeaf,
    distinct_keys,
    distinct_pseudonyms,
    plan_batch,
    sign_state,
)
from middleware.storage import audit_index_postgres as audit_index
from middleware.storage.audit_index_match import indexed_rows, tombstoned
from middleware.storage.ledger_postgres_schema import LOCK_AND_READ

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]
    from asyncpg.pool import PoolConnectionProxy  # type: ignore[import-untyped,unused-ignore]

    _Connection: TypeAlias = (
        "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
    )

__all__ = ["append_batch"]

_CHECKPOINT = "INSERT INTO consentry_ledger_checkpoints (size, root, note) VALUES ($1, $2, $3)"

#: Leaves $1-$5, evidence $1, $6-$7, state and checkpoint $8-$11, index rows $12-$32.
_WRITE = (
    "WITH leaves AS (INSERT INTO consentry_ledger_leaves (idx, leaf, leaf_hash, pseudonym, "  # noqa: S608
    "idem_key) SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[], "
    "$5::text[])), "
    "evidence AS (INSERT INTO consentry_ledger_evidence (idx, salt, data) "
    "SELECT * FROM unnest($1::bigint[], $6::bytea[], $7::bytea[])), "
    "state AS (UPDATE consentry_ledger_state SET size = $8, compact = $9, root = $10 "
    "WHERE id = 1), "
    f"audit_rows AS ({audit_index.upsert_sql(12)}) "
    "INSERT INTO consentry_ledger_checkpoints (size, root, note) VALUES ($8, $10, $11)"
)  # built from constants only


async def append_batch(
    conn: _Connection, schema: str, batch: Sequence[NewEntry], sign: CheckpointSigner
) -> list[AppendResult]:
    """Sequence and write ``batch`` in the caller's open transaction on ``conn`` (the store's
    ``append`` contract); the caller commits."""
    named = [
        e.pseudonym
        for e in batch
        if e.row is not None and e.pseudonym is not None and not e.row.shredded
    ]
    found = await conn.fetchrow(
        LOCK_AND_READ,
        schema,
        distinct_keys(batch),
        distinct_pseudonyms(batch),
        list(dict.fromkeys(named)),
    )
    if found is None or found["state_size"] is None:
        raise ServiceUnavailable("ledger state row is missing; rebuild_state() restores it")
    state = TreeState.unpack(found["state_size"], found["state_compact"], found["state_root"])
    plan = plan_batch(
        state,
        batch,
        recorded=dict(zip(found["key_names"] or (), found["key_idx"] or (), strict=True)),
        last_index=dict(
            zip(found["chain_pseudonyms"] or (), found["chain_idx"] or (), strict=True)
        ),
    )
    rows = tombstoned(indexed_rows(batch, plan.results), set(found["shredded"] or ()))
    if plan.leaves:
        signed = sign_state(sign, plan.state)
        await _write(conn, plan.leaves, plan.state, signed, rows)
    elif not found["checkpointed"]:  # every entry a duplicate, and no checkpoint at this size
        signed = sign_state(sign, plan.state)
        await conn.execute(_CHECKPOINT, signed.size, signed.root, signed.note)
    return list(plan.results)


async def _write(
    conn: _Connection,
    leaves: Sequence[PlannedLeaf],
    new: TreeState,
    signed: StoredCheckpoint,
    rows: Sequence[AuditRow],
) -> None:
    await conn.execute(
        _WRITE,
        [r.index for r in leaves],
        [r.leaf for r in leaves],
        [r.leaf_hash for r in leaves],
        [r.pseudonym for r in leaves],
        [r.idempotency_key for r in leaves],
        [r.salt for r in leaves],
        [r.evidence for r in leaves],
        # sign_state checked that the note is for exactly this size and root.
        signed.size,
        new.packed_hashes(),
        signed.root,
        signed.note,
        *audit_index.columns(audit_index.distinct(rows)),
    )
