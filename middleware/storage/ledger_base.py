"""The log store contract: an append-only RFC 9162 log with signed checkpoints.

Every backend (memory, SQLite, PostgreSQL) honours this contract, and one behaviour suite
(``tests/contract/test_log_store.py``) runs on all of them. Value types live in
:mod:`middleware.ledger.entry`; the sequencing step shared by every backend is
:func:`middleware.ledger.sequencer.plan_batch`.

Tables (SQL backends; names are prefixed ``consentry_ledger_``):

=============  ====================================================  ===========================
table          holds                                                 UPDATE / DELETE
=============  ====================================================  ===========================
``leaves``     index, leaf bytes, leaf hash, pseudonym, idem. key    refused by triggers
``checkpoints``  size, root, signed note; one row per size            refused by triggers
``witnessed``  size, the note with a quorum's cosignatures; grows     refused by triggers
``evidence``   index, salt, evidence bytes (opaque, maybe ciphertext)  allowed: crypto-shredding
``state``      the one row: size, compact range, root                 updated by each append
``heartbeat``  the one row: a counter outside the log                 updated by each probe
=============  ====================================================  ===========================

Beside the log, the audit index (``consentry_audit_index``, plus ``consentry_audit_terms`` in
SQLite) and the evidence keys (``consentry_audit_keys``): derived data and key material, under
no append-only trigger (shred and reindex rewrite index rows; a shred deletes a key). Their
layout is :mod:`~middleware.storage.audit_index_sqlite`'s and
:mod:`~middleware.storage.audit_index_postgres`'s.

The evidence commitment lives in the leaf, so deleting or overwriting evidence (shredding)
breaks no root or proof. The state row is mutable by design; it is protected by replaying the
leaves against it (:mod:`middleware.ledger.replay`) when the store opens. The triggers stop a
DBA's accidental or casual edit; a superuser who disables them is caught by that replay and by
anyone holding an earlier checkpoint (a consistency proof to it fails).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from middleware.audit.row import AuditQuery, AuditRow
from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import AppendResult, Evidence, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.note import parse_note
from middleware.ledger.sequencer import CheckpointSigner

__all__ = ["EVIDENCE_RANGE", "PROBE_LOCK_WAIT", "LogStore", "evidence_of_range", "signed_as"]

#: Seconds :meth:`LogStore.probe_commit` waits for the append lock (a readiness check must
#: answer within its own time budget, and a lock held that long already delays every request).
PROBE_LOCK_WAIT: Final = 1.0

#: ``evidence_range`` in SQL (SQLite placeholders; start, end): every leaf of the range with
#: its evidence where it still has some, so the row count checks the range.
EVIDENCE_RANGE: Final = (
    "SELECT l.idx, e.salt, e.data FROM consentry_ledger_leaves l "
    "LEFT JOIN consentry_ledger_evidence e ON e.idx = l.idx "
    "WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx"
)


def evidence_of_range(rows: Sequence[Sequence[Any]], start: int, end: int) -> dict[int, Evidence]:
    """The ``evidence_range`` answer from :data:`EVIDENCE_RANGE`'s ``rows``."""
    if len(rows) != end - start:
        raise OutOfRangeError(f"[{start}, {end}) is not within the log")
    return {int(r[0]): Evidence(r[1], r[2]) for r in rows if r[1] is not None and r[2] is not None}


class LogStore(Protocol):
    """An append-only log of leaves with evidence beside them and one signed checkpoint per size.

    Contract:

    - :meth:`append` runs as ONE transaction under the log's sequencing lock (SQLite
      ``BEGIN IMMEDIATE``; PostgreSQL a row lock on the state row): it skips entries whose
      idempotency key is recorded (returning the recorded index), gives the others consecutive
      indexes in batch order, fills each leaf's ``previous`` from the pseudonym's latest index,
      writes leaves, evidence, the new tree state and a checkpoint signed by ``sign`` for the
      new size, and commits. It returns only after the commit is durable. If it raises, the
      batch was recorded entirely or not at all, and not at all unless the commit's answer
      was lost on the way (a connection dropped during ``COMMIT``): an entry with an
      idempotency key can always be retried safely. When the batch adds nothing (empty, or all
      duplicates) and the current size has no checkpoint yet (an empty log; a state rebuilt
      after a crash), it signs one. Never two checkpoints for one size; never a gap.
      Several store objects, in several processes, may append to one log at once.
    - The same transaction writes each new entry's audit-index ``row`` (``NewEntry.row``, at
      the entry's index); a duplicate writes none, a failed append none. A row that disagrees
      with its leaf (time, kind, flags, pseudonym) fails the append with ``MalformedError``.
    - The audit index is derived data (``consentry audit reindex`` rebuilds it from the
      evidence): :meth:`shred`, :meth:`reindex` and :meth:`clear_index` change it; the leaves
      never change. Searches (:meth:`audit_rows`, :meth:`audit_count`) follow
      :class:`~middleware.audit.row.AuditQuery` and
      :mod:`~middleware.storage.audit_index_match` exactly, on every backend.
    - Reads see only committed appends. Ranges are half-open ``[start, end)`` and raise
      :class:`~middleware.ledger.errors.OutOfRangeError` unless ``0 <= start <= end <= size``.
    - The log never changes once written: leaves and checkpoints are not updated or deleted,
      by the store or (SQL backends) by anyone issuing SQL, which triggers refuse. Evidence
      may be removed for crypto-shredding; :meth:`evidence` then returns ``None``.
    - A store that cannot reach its database raises
      :class:`~middleware.errors.ServiceUnavailable`; a store whose tables disagree with their
      own leaves raises :class:`~middleware.ledger.errors.VerificationError` on open and on
      :meth:`rebuild_state`.
    - :meth:`close` is idempotent.
    """

    name: str

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        """Record ``batch`` in one transaction; results are in batch order (see the contract)."""
        ...

    async def size(self) -> int:
        """Committed leaves."""
        ...

    async def state(self) -> TreeState:
        """The stored tree state (size, compact range, root)."""
        ...

    async def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaf bytes of indexes ``[start, end)``."""
        ...

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """RFC 9162 leaf hashes of indexes ``[start, end)``."""
        ...

    async def evidence(self, index: int) -> Evidence | None:
        """The evidence of leaf ``index``; ``None`` once shredded. OutOfRangeError past size."""
        ...

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        """The evidence of the leaves ``[start, end)`` in one read, by index; an entry whose
        evidence was shredded or removed is absent (what :meth:`evidence` of each gives).
        OutOfRangeError unless ``0 <= start <= end <= size``, as :meth:`leaves`."""
        ...

    async def chain(self, pseudonym: bytes) -> list[int]:
        """Indexes of the entries with ``pseudonym``, ascending (empty if none)."""
        ...

    async def latest_consent(self) -> int | None:
        """The index of the latest ``consent`` or ``consent-revoke`` entry (kind byte 1 or 2),
        or ``None`` if there is none: the ledger position of the consents, which consent
        registries read before every decision (:mod:`middleware.consent.registry`). One read
        of a partial index over the leaves (SQL backends); no table beside the log holds it,
        so it cannot disagree with the leaves."""
        ...

    async def consents_after(self, index: int) -> list[int]:
        """Indexes of the ``consent`` and ``consent-revoke`` entries after ``index``,
        ascending (``-1``: every one of them)."""
        ...

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint for ``size``, or the latest when ``size`` is ``None``; ``None`` if
        there is none."""
        ...

    async def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint, by ascending size."""
        ...

    async def witnessed(self) -> tuple[int, str] | None:
        """The witnessed checkpoint kept of the largest size, ``(size, note)`` as stored
        (unchecked: :mod:`~middleware.storage.ledger_witnessed`); ``None`` if none is kept."""
        ...

    async def keep_witnessed(self, note: str) -> bool:
        """Keep the witnessed checkpoint ``note`` (the log's note with a quorum of cosignature
        lines) unless one of its size or larger is kept: append-only by size, the first of a
        size stays (:mod:`~middleware.storage.ledger_witnessed`). True if it was kept;
        ``MalformedError`` if ``note`` states no checkpoint."""
        ...

    async def rebuild_state(self) -> TreeState:
        """Replay every leaf (:mod:`middleware.ledger.replay`), check the stored leaf hashes,
        chains and checkpoints against them, rewrite the state row if it is behind, and return
        the state. Stores run this when they open."""
        ...

    async def ping(self) -> None:
        """Return when the store can serve now; raise ``ServiceUnavailable`` otherwise."""
        ...

    async def probe_commit(self) -> None:
        """Prove that an append could commit now, without adding to the log.

        Takes the append's sequencing lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL the state
        row), waiting at most :data:`PROBE_LOCK_WAIT` seconds for it, writes the heartbeat row
        (outside the log: no leaf, checkpoint or state changes) and commits durably. Returns
        once committed; raises ``ServiceUnavailable`` when the lock is not granted in time or
        the write or commit fails (a read-only or full disk, a lost connection, a closed
        store). A reader's ``ping`` succeeds in all those cases, which is why readiness asks
        for this (``app_health``).
        """
        ...

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        """The page of index rows ``query`` asks for, in its order (at most ``limit``)."""
        ...

    async def audit_count(self, query: AuditQuery) -> int:
        """How many rows ``query`` matches in all (``after``, ``limit`` and ``sort`` ignored)."""
        ...

    async def audit_row(self, index: int) -> AuditRow | None:
        """The index row of ledger entry ``index`` (shredded or not); ``None`` if none."""
        ...

    async def audit_key(self, pseudonym: bytes, candidate: bytes) -> bytes:
        """The pseudonym's stored evidence key, storing ``candidate`` first if it has none.

        Atomic across store objects and processes: whoever races, one candidate is stored and
        every caller gets that one back. The bytes are opaque to the store (a wrapped key).
        ``pseudonym`` is a leaf pseudonym (16 bytes) and ``candidate`` non-empty, else
        ``ValueError``.

        A pseudonym that was shredded (:meth:`shred` recorded it) never gets a key again:
        nothing is stored and ``candidate`` comes back as a throwaway, so evidence a process
        still seals for that patient (its caches outlived the shred) is born shredded: once
        that process lets go of the key, nobody can open it. Atomic against a concurrent
        :meth:`shred`: a key stored just before it is deleted by it."""
        ...

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        """The pseudonym's stored evidence key; ``None`` if it has none (never had, or shredded)."""
        ...

    async def audit_keys_get(self, pseudonyms: Sequence[bytes]) -> dict[bytes, bytes]:
        """:meth:`audit_key_get` of each of ``pseudonyms`` at once (one read, not a read per
        pseudonym): the stored key of each that has one, absent the others; a pseudonym
        named twice is read once. Each is a leaf pseudonym (16 bytes), else ``ValueError``."""
        ...

    async def shred(self, pseudonym: bytes, *, link: bytes | None = None) -> int:
        """Crypto-shred a pseudonym, in one transaction: delete its evidence key, record the
        pseudonym as shredded (a tombstone, with ``link`` if given: opaque bytes, the
        caller's keyed digest of the patient, by which :meth:`shredded_chains` finds it
        again) and replace each of its index rows not shredded
        yet by ``row.shred()``. Returns how many rows were shredded (0 on a second shred).
        The evidence ciphertext stays (unreadable without the key; the ledger's export still
        carries it and its commitment still verifies).

        After it, an :meth:`append` writes the row of an entry on that pseudonym as
        ``row.shred()`` (in the append's transaction, so a gateway that cached the pseudonym
        or key cannot put PHI back into the index), and :meth:`audit_key` stores nothing for
        it. Serialised with appends (SQLite: the file's write lock; PostgreSQL: the state
        row's lock): no append commits a full row of the pseudonym after the shred."""
        ...

    async def shredded_chains(self, link: bytes) -> list[bytes]:
        """The pseudonyms shredded with ``link`` (:meth:`shred`), in no particular order:
        how an accounting finds the patient's shredded rows (``AuditQuery.pseudonym``) once
        the pseudonym table has forgotten them."""
        ...

    async def shred_entries(self, indexes: Sequence[int]) -> int:
        """Remove the evidence of the entries ``indexes`` (retention), in one transaction,
        and replace their index rows by ``row.shred()``. Leaves, commitments and proofs stay
        and still verify; :meth:`evidence` then returns ``None`` for them. Returns how many
        entries had evidence removed (0 for indexes already removed or past the end); a
        negative index is a ``ValueError``."""
        ...

    async def reindex(self, rows: Sequence[AuditRow]) -> None:
        """Upsert ``rows`` into the index by their index, in one transaction (callers pass
        chunks of a few thousand). Each row's ``index`` must be set, and each row must state
        its leaf's pseudonym (``None`` where the leaf has none); a row of an entry not in the
        log or naming another pseudonym fails the call (``ValueError``, nothing written)."""
        ...

    async def clear_index(self) -> None:
        """Delete every index row (before a full reindex); evidence keys stay."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...


async def signed_as(store: LogStore, note: str) -> StoredCheckpoint | None:
    """The checkpoint ``store`` signed that ``note`` states: the stored one of its size whose
    note has the same text (``note`` may carry more signatures, a witnessed checkpoint's
    cosignatures); ``None`` when the store holds none such."""
    text = parse_note(note).text
    stored = await store.checkpoint(parse_checkpoint(text).size)
    if stored is None or parse_note(stored.note).text != text:
        return None
    return stored
