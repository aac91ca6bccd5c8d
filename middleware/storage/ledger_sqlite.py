"""SQLite log store: the embedded default. One file, WAL mode, ``synchronous=FULL``.

The connection, its worker thread, the pragmas and the transactions are
:class:`~middleware.storage.sqlite_worker.SqliteWorker`'s. ``BEGIN IMMEDIATE`` takes the
database's write lock before the first read, so the state an append reads is the state it
extends, also when several processes append to one file.

The audit index and the evidence keys live in the same file
(:mod:`~middleware.storage.audit_index_sqlite`). Index rows are written into the indexed
tables in the append's transaction; rows an earlier version left staged are moved there when
a writer opens the file (:mod:`~middleware.storage.audit_index_staged`). Audit searches run on
a second, read-only connection with its own thread, so a long accounting never holds up the
writer (WAL readers do not block it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, Evidence, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.replay import Outcome, Replay
from middleware.ledger.sequencer import (
    ChainTails,
    CheckpointSigner,
    distinct_keys,
    distinct_pseudonyms,
    plan_batch,
    sign_state,
)
from middleware.storage import audit_index_sqlite as audit_index
from middleware.storage import audit_index_staged, audit_index_upgrade
from middleware.storage.audit_index_match import indexed_rows
from middleware.storage.audit_index_stores import SqliteAuditIndex
from middleware.storage.consent_seq import ConsentSeq, announcing
from middleware.storage.ledger_base import EVIDENCE_RANGE, PROBE_LOCK_WAIT, evidence_of_range
from middleware.storage.ledger_sqlite_schema import CONSENT_LEAF, SCHEMA
from middleware.storage.ledger_unreplayed import refuse_writes_unreplayed
from middleware.storage.ledger_witnessed import SqliteWitnessed
from middleware.storage.sqlite_worker import SqliteWorker

__all__ = ["SqliteLogStore"]

T = TypeVar("T")
_LATEST_CHECKPOINT = (
    "SELECT size, root, note FROM consentry_ledger_checkpoints ORDER BY size DESC LIMIT 1"
)
_SIZE = "SELECT size FROM consentry_ledger_state WHERE id = 1"
_CHECKPOINT_AT = "SELECT size, root, note FROM consentry_ledger_checkpoints WHERE size = ?"
# Both spell CONSENT_LEAF exactly as the partial index does, which is what lets it serve them.
_LATEST_CONSENT = f"SELECT max(idx) FROM consentry_ledger_leaves WHERE {CONSENT_LEAF}"  # noqa: S608
_CONSENTS_AFTER = (
    f"SELECT idx FROM consentry_ledger_leaves WHERE {CONSENT_LEAF} AND idx > ? ORDER BY idx"  # noqa: S608
)
_BEAT = (
    "INSERT INTO consentry_ledger_heartbeat (id, beats) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET beats = beats + 1"
)
_RANGES = {
    "leaf": "SELECT leaf FROM consentry_ledger_leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
    "leaf_hash": "SELECT leaf_hash FROM consentry_ledger_leaves "
    "WHERE idx >= ? AND idx < ? ORDER BY idx",
}


@refuse_writes_unreplayed
class SqliteLogStore(SqliteAuditIndex, SqliteWitnessed):
    """A log store in one SQLite file; create it with :meth:`open`. The audit index's
    methods are :class:`~middleware.storage.audit_index_stores.SqliteAuditIndex`'s, the
    witnessed checkpoints' :class:`~middleware.storage.ledger_witnessed.SqliteWitnessed`'s."""

    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 10.0, read_only: bool = False) -> None:
        """No I/O; :meth:`open` connects, creates the tables and replays the log.
        ``read_only``: both connections read-only, no schema script (``open(replay=False)``)."""
        self.path = path
        self._busy_timeout = busy_timeout
        self._db = SqliteWorker(
            path,
            what="ledger",
            schema=SCHEMA,
            busy_timeout=busy_timeout,
            pragmas=("foreign_keys=ON",),
            read_only=read_only,
        )
        self._reader = SqliteWorker(
            path,
            what="ledger",
            schema="",
            busy_timeout=busy_timeout,
            pragmas=("query_only=ON",),
            read_only=read_only,
        )
        #: The chains this store extended (used on the worker thread only, by ``_append``).
        self._tails = ChainTails()
        #: Announces consent entries to every process before they commit (a read-only store
        #: writes none): :mod:`~middleware.storage.consent_seq`.
        self.consent_seq = None if read_only else ConsentSeq(path)

    #: Opened without its replay (``open(replay=False)``): every write refused
    #: (:func:`~middleware.storage.ledger_unreplayed.refuse_writes_unreplayed`).
    _unreplayed = False

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout: float = 10.0, replay: bool = True
    ) -> SqliteLogStore:
        """Open (and create) the log at ``path``, then replay it (``rebuild_state``).

        ``replay=False`` skips the replay: the log is not checked and a state row behind the
        leaves is not rebuilt, and the store refuses every write. Only ``consentry audit export``
        opens a log so (``cli_reports.export`` says why that weakens nothing). Opening so writes
        nothing either: the file is opened read-only, without the schema script, and a path
        that does not exist is refused (:class:`ServiceUnavailable` naming it), not created."""
        store = cls(path, busy_timeout=busy_timeout, read_only=not replay)
        try:
            await store._db.connect()
            await store._reader.connect()
            if replay:
                await store.rebuild_state()
                await store._db.run(audit_index_upgrade.drop_old)
                await store._db.run(audit_index_staged.adopt)
                await store._settle_announcements()
            else:
                store._unreplayed = True
        except BaseException:
            await store.close()
            raise
        return store

    async def _settle_announcements(self) -> None:
        """Set the consent announcements word to the ledger's size under the write lock,
        where no announcement is in flight (``ConsentSeq.settle`` says why that is safe)."""
        seq = self.consent_seq
        if seq is not None:
            await self._db.transaction(lambda c: seq.settle(_read_state(c).size))

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        body = announcing(self.consent_seq, batch, lambda c: _append(c, batch, sign, self._tails))
        return await self._db.transaction(body)

    async def size(self) -> int:
        # The registry reads it before decisions while a consent announcement is pending:
        # read at once, not queued behind appends on the worker thread.
        row = await self._db.read_now(lambda c: c.execute(_SIZE).fetchone())
        if row is None:
            raise ServiceUnavailable("ledger state row is missing; rebuild_state() restores it")
        return int(row[0])

    async def state(self) -> TreeState:
        return await self._db.run(_read_state)

    async def leaves(self, start: int, end: int) -> list[bytes]:
        return await self._db.run(lambda c: _column(c, "leaf", start, end))

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return await self._db.run(lambda c: _column(c, "leaf_hash", start, end))

    async def evidence(self, index: int) -> Evidence | None:
        sql = (
            "SELECT e.salt, e.data FROM consentry_ledger_leaves l "
            "LEFT JOIN consentry_ledger_evidence e ON e.idx = l.idx WHERE l.idx = ?"
        )
        row = await self._db.run(lambda c: c.execute(sql, (index,)).fetchone())
        if row is None:
            raise OutOfRangeError(f"leaf {index} is not in the log")
        return None if row[0] is None or row[1] is None else Evidence(row[0], row[1])

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        if not 0 <= start <= end:
            raise OutOfRangeError(f"[{start}, {end}) is not a range of leaf indexes")
        rows = await self._db.run(lambda c: c.execute(EVIDENCE_RANGE, (start, end)).fetchall())
        return evidence_of_range(rows, start, end)

    async def chain(self, pseudonym: bytes) -> list[int]:
        sql = "SELECT idx FROM consentry_ledger_leaves WHERE pseudonym = ? ORDER BY idx"
        rows = await self._db.run(lambda c: c.execute(sql, (pseudonym,)).fetchall())
        return [r[0] for r in rows]

    async def latest_consent(self) -> int | None:
        # Before every decision: read at once, not through the worker thread.
        row = await self._db.read_now(lambda c: c.execute(_LATEST_CONSENT).fetchone())
        return None if row[0] is None else int(row[0])

    async def consents_after(self, index: int) -> list[int]:
        rows = await self._db.run(lambda c: c.execute(_CONSENTS_AFTER, (index,)).fetchall())
        return [r[0] for r in rows]

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        sql, args = (_LATEST_CHECKPOINT, ()) if size is None else (_CHECKPOINT_AT, (size,))
        row = await self._db.run(lambda c: c.execute(sql, args).fetchone())
        return None if row is None else StoredCheckpoint(*row)

    async def checkpoints(self) -> list[StoredCheckpoint]:
        return await self._db.run(_read_checkpoints)

    async def rebuild_state(self) -> TreeState:
        """Replay in a read snapshot; only if the state row is behind, replay again under the
        write lock and rewrite it (a WAL read transaction never blocks writers)."""
        outcome = await self._db.transaction(_replay, begin="BEGIN")
        if outcome.rebuilt:
            outcome = await self._db.transaction(_rewrite)
        return outcome.state

    async def ping(self) -> None:
        await self._db.ping()

    async def probe_commit(self) -> None:
        waits = (PROBE_LOCK_WAIT, self._busy_timeout)
        await self._db.run(lambda c: _probe(c, *waits))

    async def close(self) -> None:
        with contextlib.suppress(ServiceUnavailable):  # else the next open builds them
            await self._build_indexes()  # after a bulk reindex
        await self._reader.close()
        await self._db.close()
        if self.consent_seq is not None:
            self.consent_seq.close()


def _append(
    c: sqlite3.Connection,
    batch: Sequence[NewEntry],
    sign: CheckpointSigner,
    tails: ChainTails,
) -> list[AppendResult]:
    """One append transaction's work (the caller brackets it in ``BEGIN IMMEDIATE``/``COMMIT``).
    ``tails``: the store's memory of its chains' last indexes, checked against the state read
    here; only pseudonyms it does not know are read from the log."""
    state = _read_state(c)
    recorded: dict[str, int] = {}
    for key in distinct_keys(batch):
        row = c.execute(
            "SELECT idx FROM consentry_ledger_leaves WHERE idem_key = ?", (key,)
        ).fetchone()
        if row is not None:
            recorded[key] = row[0]
    last, missing = tails.valid_for(state).known(distinct_pseudonyms(batch))
    read: dict[bytes, int | None] = {}
    for pseudonym in missing:
        sql = "SELECT max(idx) FROM consentry_ledger_leaves WHERE pseudonym = ?"
        read[pseudonym] = c.execute(sql, (pseudonym,)).fetchone()[0]
    tails.learn(read)
    last.update((p, i) for p, i in read.items() if i is not None)
    plan = plan_batch(state, batch, recorded=recorded, last_index=last)
    rows = indexed_rows(batch, plan.results)
    new = plan.state
    if plan.leaves:
        c.executemany(
            "INSERT INTO consentry_ledger_leaves (idx, leaf, leaf_hash, pseudonym, idem_key) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r.index, r.leaf, r.leaf_hash, r.pseudonym, r.idempotency_key) for r in plan.leaves],
        )
        c.executemany(
            "INSERT INTO consentry_ledger_evidence (idx, salt, data) VALUES (?, ?, ?)",
            [(r.index, r.salt, r.evidence) for r in plan.leaves],
        )
        c.execute(
            "UPDATE consentry_ledger_state SET size = ?, compact = ?, root = ? WHERE id = 1",
            (new.size, new.packed_hashes(), new.root),
        )
        if rows:
            audit_index.write_rows(c, audit_index.tombstoned(c, rows), fresh=True)
    signed_sql = "SELECT 1 FROM consentry_ledger_checkpoints WHERE size = ?"
    if plan.leaves or c.execute(signed_sql, (new.size,)).fetchone() is None:
        signed = sign_state(sign, new)
        c.execute(
            "INSERT INTO consentry_ledger_checkpoints (size, root, note) VALUES (?, ?, ?)",
            (signed.size, signed.root, signed.note),
        )
    tails.planned(plan)  # valid once this commits; emptied by the next append if it does not
    return list(plan.results)


def _probe(c: sqlite3.Connection, wait: float, busy_timeout: float) -> None:
    """One heartbeat under ``BEGIN IMMEDIATE`` (the append's lock), waiting ``wait`` seconds
    for the lock rather than the connection's ``busy_timeout``, which is restored after."""
    c.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    try:
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(_BEAT)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
    finally:
        c.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


def _read_state(c: sqlite3.Connection) -> TreeState:
    row = c.execute(
        "SELECT size, compact, root FROM consentry_ledger_state WHERE id = 1"
    ).fetchone()
    if row is None:
        raise ServiceUnavailable("ledger state row is missing; rebuild_state() restores it")
    return TreeState.unpack(*row)


def _column(c: sqlite3.Connection, column: str, start: int, end: int) -> list[bytes]:
    if not 0 <= start <= end:
        raise OutOfRangeError(f"[{start}, {end}) is not a range of leaf indexes")
    values = [r[0] for r in c.execute(_RANGES[column], (start, end))]
    if len(values) != end - start:
        raise OutOfRangeError(f"[{start}, {end}) is not within the log")
    return values


def _read_checkpoints(c: sqlite3.Connection) -> list[StoredCheckpoint]:
    sql = "SELECT size, root, note FROM consentry_ledger_checkpoints ORDER BY size"
    return [StoredCheckpoint(*row) for row in c.execute(sql)]


def _replay(c: sqlite3.Connection) -> Outcome:
    replay = Replay(_read_checkpoints(c))
    sql = "SELECT idx, leaf, leaf_hash, pseudonym FROM consentry_ledger_leaves ORDER BY idx"
    replay.feed_rows(c.execute(sql))
    row = c.execute(
        "SELECT size, compact, root FROM consentry_ledger_state WHERE id = 1"
    ).fetchone()
    return replay.finish(None if row is None else TreeState.unpack(*row))


def _rewrite(c: sqlite3.Connection) -> Outcome:
    outcome = _replay(c)
    if outcome.rebuilt:
        new = outcome.state
        c.execute(
            "INSERT INTO consentry_ledger_state (id, size, compact, root) VALUES (1, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET size = excluded.size, compact = excluded.compact, "
            "root = excluded.root",
            (new.size, new.packed_hashes(), new.root),
        )
    return outcome
