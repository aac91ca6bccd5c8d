"""In-memory log store for tests: the :class:`~middleware.storage.ledger_base.LogStore`
contract, nothing durable.

Several :class:`MemoryLogStore` objects may share one :class:`MemoryLog` (the "database"), which
is how tests reopen a store. An append computes everything (plan, signature) before it changes
anything, so a failing signer or an outage leaves the log as it was. The audit index and the
evidence keys are two more dictionaries of the :class:`MemoryLog`; queries run the rules of
:mod:`~middleware.storage.audit_index_match` over every row (fine for tests, not for scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from middleware.audit.row import AuditQuery, AuditRow
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, Evidence, NewEntry, StoredCheckpoint, TreeState
from middleware.ledger.errors import OutOfRangeError
from middleware.ledger.leaf import EntryKind
from middleware.ledger.merkle import CompactRange
from middleware.ledger.replay import Replay
from middleware.ledger.sequencer import (
    CheckpointSigner,
    distinct_keys,
    distinct_pseudonyms,
    plan_batch,
    sign_state,
)
from middleware.storage.audit_index_match import (
    check_indexes,
    check_key,
    check_leaves,
    check_pseudonym,
    check_pseudonyms,
    check_reindex,
    indexed_rows,
    matches,
    select_rows,
    tombstoned,
)
from middleware.storage.ledger_witnessed import witnessed_size

__all__ = ["MemoryLog", "MemoryLogStore"]

#: Kind bytes (leaf offset 5) of ``consent`` and ``consent-revoke`` entries.
_CONSENT_KINDS = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})


@dataclass
class MemoryLog:
    """The tables of a memory log; share it between stores to model one database."""

    leaves: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    pseudonyms: list[bytes | None] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)
    chains: dict[bytes, list[int]] = field(default_factory=dict)
    evidence: dict[int, Evidence] = field(default_factory=dict)
    checkpoints: dict[int, StoredCheckpoint] = field(default_factory=dict)
    state: TreeState = field(default_factory=lambda: TreeState.of(CompactRange()))
    heartbeats: int = 0
    #: Indexes of the consent entries (the SQL stores' partial index).
    consents: list[int] = field(default_factory=list)
    #: The audit index (ledger index -> row) and the wrapped evidence keys (pseudonym -> key).
    audit: dict[int, AuditRow] = field(default_factory=dict)
    audit_keys: dict[bytes, bytes] = field(default_factory=dict)
    #: The tombstones: pseudonyms a shred recorded (their rows are written shredded, their
    #: keys never stored again).
    shredded: dict[bytes, bytes | None] = field(default_factory=dict)
    #: The witnessed checkpoints kept, by size (``ledger_witnessed``'s contract).
    witnessed: dict[int, str] = field(default_factory=dict)


class MemoryLogStore:
    """A log store in this process; set ``available = False`` to simulate an outage,
    ``writable = False`` a store that cannot commit."""

    name = "memory"

    def __init__(self, log: MemoryLog | None = None) -> None:
        self.log = log if log is not None else MemoryLog()
        self.available = True
        #: False models a store that reads but cannot commit (a full disk): appends and
        #: :meth:`probe_commit` raise ``ServiceUnavailable``, reads and ``ping`` still work.
        self.writable = True

    @classmethod
    async def open(cls, log: MemoryLog | None = None) -> MemoryLogStore:
        """A store over ``log`` (a fresh one by default), replayed like the SQL stores."""
        store = cls(log)
        await store.rebuild_state()
        return store

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        self._check()
        if not self.writable:
            raise ServiceUnavailable("ledger store cannot commit")
        log = self.log
        recorded = {k: log.keys[k] for k in distinct_keys(batch) if k in log.keys}
        last = {p: log.chains[p][-1] for p in distinct_pseudonyms(batch) if p in log.chains}
        plan = plan_batch(log.state, batch, recorded=recorded, last_index=last)
        rows = tombstoned(indexed_rows(batch, plan.results), log.shredded)
        signed = None
        if plan.leaves or plan.state.size not in log.checkpoints:
            signed = sign_state(sign, plan.state)
        # Nothing above changed the log; everything below cannot fail.
        for row in plan.leaves:
            log.leaves.append(row.leaf)
            log.hashes.append(row.leaf_hash)
            log.pseudonyms.append(row.pseudonym)
            if row.idempotency_key is not None:
                log.keys[row.idempotency_key] = row.index
            if row.pseudonym is not None:
                log.chains.setdefault(row.pseudonym, []).append(row.index)
            log.evidence[row.index] = Evidence(row.salt, row.evidence)
            if row.leaf[5] in _CONSENT_KINDS:  # the kind byte
                log.consents.append(row.index)
        log.audit.update((r.index, r) for r in rows)
        log.state = plan.state
        if signed is not None:
            log.checkpoints[signed.size] = signed
        return list(plan.results)

    async def size(self) -> int:
        self._check()
        return self.log.state.size

    async def state(self) -> TreeState:
        self._check()
        return self.log.state

    async def leaves(self, start: int, end: int) -> list[bytes]:
        self._range(start, end)
        return self.log.leaves[start:end]

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        self._range(start, end)
        return self.log.hashes[start:end]

    async def evidence(self, index: int) -> Evidence | None:
        self._range(index, index + 1)
        return self.log.evidence.get(index)

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        self._range(start, end)
        stored = self.log.evidence
        return {i: stored[i] for i in range(start, end) if i in stored}

    async def chain(self, pseudonym: bytes) -> list[int]:
        self._check()
        return list(self.log.chains.get(pseudonym, ()))

    async def latest_consent(self) -> int | None:
        self._check()
        return self.log.consents[-1] if self.log.consents else None

    async def consents_after(self, index: int) -> list[int]:
        self._check()
        return [i for i in self.log.consents if i > index]

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        self._check()
        if size is None:
            return self.log.checkpoints[max(self.log.checkpoints)] if self.log.checkpoints else None
        return self.log.checkpoints.get(size)

    async def checkpoints(self) -> list[StoredCheckpoint]:
        self._check()
        return [self.log.checkpoints[s] for s in sorted(self.log.checkpoints)]

    async def witnessed(self) -> tuple[int, str] | None:
        self._check()
        kept = self.log.witnessed
        return (max(kept), kept[max(kept)]) if kept else None

    async def keep_witnessed(self, note: str) -> bool:
        size = witnessed_size(note)
        self._writing()
        if any(kept >= size for kept in self.log.witnessed):
            return False
        self.log.witnessed[size] = note
        return True

    async def rebuild_state(self) -> TreeState:
        self._check()
        log = self.log
        replay = Replay(log.checkpoints.values())
        replay.feed_rows(
            zip(range(len(log.leaves)), log.leaves, log.hashes, log.pseudonyms, strict=True)
        )
        outcome = replay.finish(log.state)
        if outcome.rebuilt:
            log.state = outcome.state
        return outcome.state

    async def ping(self) -> None:
        self._check()

    async def probe_commit(self) -> None:
        self._check()
        if not self.writable:
            raise ServiceUnavailable("ledger store cannot commit")
        self.log.heartbeats += 1

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        self._check()
        return select_rows(self.log.audit.values(), query)

    async def audit_count(self, query: AuditQuery) -> int:
        self._check()
        return sum(1 for row in self.log.audit.values() if matches(row, query))

    async def audit_row(self, index: int) -> AuditRow | None:
        self._check()
        return self.log.audit.get(index)

    async def audit_key(self, pseudonym: bytes, candidate: bytes) -> bytes:
        check_key(pseudonym, candidate)
        self._writing()
        if pseudonym in self.log.shredded:  # a throwaway: evidence sealed under it is shredded
            return candidate
        return self.log.audit_keys.setdefault(pseudonym, candidate)

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        check_pseudonym(pseudonym)
        self._check()
        return self.log.audit_keys.get(pseudonym)

    async def audit_keys_get(self, pseudonyms: Sequence[bytes]) -> dict[bytes, bytes]:
        wanted = check_pseudonyms(pseudonyms)
        self._check()
        keys = self.log.audit_keys
        return {p: keys[p] for p in wanted if p in keys}

    async def shred(self, pseudonym: bytes, *, link: bytes | None = None) -> int:
        check_pseudonym(pseudonym)
        self._writing()
        self.log.audit_keys.pop(pseudonym, None)
        if self.log.shredded.get(pseudonym) is None:
            self.log.shredded[pseudonym] = link
        rows = [
            row.shred()
            for row in self.log.audit.values()
            if row.pseudonym == pseudonym and not row.shredded
        ]
        self.log.audit.update((r.index, r) for r in rows)
        return len(rows)

    async def shredded_chains(self, link: bytes) -> list[bytes]:
        self._check()
        return [p for p, kept in self.log.shredded.items() if kept == link]

    async def shred_entries(self, indexes: Sequence[int]) -> int:
        wanted = check_indexes(indexes)
        self._writing()
        removed = [i for i in wanted if self.log.evidence.pop(i, None) is not None]
        rows = [self.log.audit[i].shred() for i in wanted if i in self.log.audit]
        self.log.audit.update((r.index, r) for r in rows)
        return len(removed)

    async def reindex(self, rows: Sequence[AuditRow]) -> None:
        check_reindex(rows)
        self._writing()
        known = self.log.pseudonyms
        check_leaves(rows, {r.index: known[r.index] for r in rows if r.index < len(known)})
        self.log.audit.update((r.index, r) for r in tombstoned(rows, self.log.shredded))

    async def clear_index(self) -> None:
        self._writing()
        self.log.audit.clear()

    async def close(self) -> None:
        self.available = False

    def _writing(self) -> None:
        self._check()
        if not self.writable:
            raise ServiceUnavailable("ledger store cannot commit")

    def _check(self) -> None:
        if not self.available:
            raise ServiceUnavailable("ledger store unavailable")

    def _range(self, start: int, end: int) -> None:
        self._check()
        if not 0 <= start <= end <= self.log.state.size:
            raise OutOfRangeError(f"[{start}, {end}) is not within the log's {self.log.state.size}")
