"""The policies of each patient, compiled once and kept until the ledger says they changed.

The ledger is the source of truth for consents, and the consent store is derived from it
(architecture invariant 3: "no replica ever enforces anything but what the ledger says").
Before every decision :meth:`ConsentRegistry.sync` reads the ledger's consent position, the
index of its latest ``consent`` or ``consent-revoke`` entry
(:meth:`~middleware.storage.ledger_base.LogStore.latest_consent`: one read of a partial
index). When it equals the position this registry last synced to, nothing changed anywhere
and the cached policies stand: one indexed read and one integer comparison. When it moved,
the registry lists the consent entries after its position
(:meth:`~middleware.storage.ledger_base.LogStore.consents_after`), records in the store every
one it lacks, from the entry's own evidence (:func:`~middleware.consent.rebuild.record_entry`,
idempotent), and only then decides. So a process that died between appending a change and
recording it (the consent API does both, in that order) leaves nothing behind: the next
request on any replica records the change before it decides. Patients whose cached policies
predate the new position are checked against their
:class:`~middleware.storage.consent_base.PatientMark` and recompiled only if it moved, and
policies are cached by ledger index, so a change recompiles only the consent that changed.

A consent entry whose evidence a crypto-shred removed (its chain carries the shred's admin
entry after it: :mod:`middleware.consent.shredded`) is absent: the shred erased the patient's
consents, so the patient has none; they are judged by
:func:`~middleware.consent.shredded.erased_policy` (closed, whatever the jurisdiction default)
until they record a new one. The shred's last step, its marker (a ``consent-revoke`` entry
whose evidence is the shred's record), moves the consent position; a patient whose policies
were cached before a shredded entry or a marker is recompiled even when their mark did not
move (one who never recorded a consent: their cached default gives way to the erased policy).
Any other
consent entry that cannot be recorded (its evidence missing or unreadable, so neither its
consent nor its patient can be read) is never stepped over silently: it may be a revocation
or a deny. Its leaf's pseudonym names the patient it concerns, and every decision for that
patient fails closed (:class:`UnreadableConsent`, 503) while it stays unrecorded; each such
decision tries to record it again, so evidence that becomes readable lifts the refusal. An
entry whose leaf names no pseudonym concerns nobody known: every patient's decisions fail
closed then. The limit: a store rebuilt from the ledger knows a patient's pseudonym only from
the patient's recorded entries, so a patient whose every consent entry is unreadable there
cannot be matched (the rebuild reports those entries as skipped).

Ledger indexes are given in commit order under the append lock, so an entry committed after
the position was read has a larger index: a position never hides an entry below it.

On a SQLite store the position read is skipped while nothing was announced: every process
writing to the store announces each consent entry in ``<store>.consent-seq`` before it commits
(:mod:`~middleware.storage.consent_seq`: a word holding the *mark*, the latest announced
consent entry's index + 1), and the registry keeps ``clear``, a bound below which every consent
entry is recorded: ``position + 1`` after a position read and catch-up, and at least the
ledger's size read *before* that position read (a consent entry below that size committed
before the position read, so the read found it). Before each decision it reads the word; a mark
at or below ``clear`` means nothing changed, and it decides without reading the ledger. Why
that is exact: a consent entry E committed before the word was read and not recorded has index
>= ``clear``; its writer stored mark(E) > ``clear`` before E's ``COMMIT``, and a later writer
stores a larger mark (under the same write lock its entries come after E) or, opening the
store, the ledger's size (``ConsentSeq.settle``, under that lock: at least mark(E), E having
committed), so the word read after E's commit is above ``clear``, and the registry reads the
ledger. A mark above ``clear`` is a change in flight, one to catch up with, or one whose writer
rolled back or died before its commit: the registry then reads the size (the state row, at
once, not behind the writer thread's queue) and the position, in that order, until the size has
passed the mark or a process opening the store for writing has set the word to the size. A
process that died after its commit had announced already; one that died before committed
nothing. So the word gives the guarantee the position read gives, at one unpack of shared
memory and one ``fstat`` a decision (the file deleted under a running process:
:mod:`~middleware.storage.consent_seq` states the narrow windows). A file that cannot be
used, and every other backend (PostgreSQL, memory), keep the position read before every
decision.

Nothing in this cache is needed for correctness (architecture "Scale"): a replica that
restarts, or evicts a patient, rebuilds the same policies from the store. A timer plays no
part. The architecture names PostgreSQL LISTEN/NOTIFY for broadcasting consent changes; the
position read gives the guarantee on every backend without a listener connection and without
the window in which a notification is in flight (or lost with a dropped connection).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Final

from middleware.consent.keyrecord import KEY_STATUS
from middleware.consent.model import Policy
from middleware.consent.parse import InvalidConsent, parse_consent
from middleware.consent.rebuild import Outcome, record_entry
from middleware.consent.shredded import erased_policy
from middleware.errors import ServiceUnavailable
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.leaf import decode_leaf
from middleware.logging import get_logger
from middleware.storage.consent_base import ConsentRecord, ConsentStore, PatientMark
from middleware.storage.consent_seq import ConsentSeq
from middleware.storage.ledger_base import LogStore

__all__ = ["ConsentRegistry", "UnreadableConsent"]

_DEFAULT_PATIENTS: Final = 10_000
_DEFAULT_POLICIES: Final = 100_000
#: The position of a registry that has synced nothing: before the first ledger index.
_NOTHING: Final = -1


class UnreadableConsent(ServiceUnavailable):
    """A recorded, active consent no longer compiles (a changed parser, a damaged store, one
    stored before the write-time limits nested deeper than the parser takes). Deciding without
    it could release what it denies, so the patient is denied entirely: every request that
    needs the patient's consents fails closed (503), whatever the jurisdiction default, until
    the consent is replaced (``PUT``) or revoked. A record that does not compile and is not in
    force is skipped: it could not permit or deny anything."""


class ConsentRegistry:
    """Compiled policies per patient over ``store``, kept in step with ``log``;
    ``max_patients`` and ``max_policies`` bound the two LRU caches."""

    def __init__(
        self,
        store: ConsentStore,
        log: LogStore,
        *,
        max_patients: int = _DEFAULT_PATIENTS,
        max_policies: int = _DEFAULT_POLICIES,
    ) -> None:
        if max_patients < 1 or max_policies < 1:
            raise ValueError("cache sizes must be positive")
        self.store = store
        self.log = log
        self._max_patients = max_patients
        self._max_policies = max_policies
        # patient -> (position synced to when checked, mark then, policies)
        self._patients: OrderedDict[str, tuple[int, PatientMark, tuple[Policy, ...]]] = (
            OrderedDict()
        )
        self._policies: OrderedDict[int, Policy] = OrderedDict()
        self._position = _NOTHING
        # The consent announcements of the store's processes (SQLite only), and the bound
        # below which every consent entry is recorded (module docstring); _NOTHING: none yet,
        # so the first sync reads the ledger whatever the word says.
        seq = getattr(log, "consent_seq", None)
        self._seq = seq if isinstance(seq, ConsentSeq) else None
        self._clear = _NOTHING
        # The latest entry a shred erased or marked: cached policies from before it are
        # recompiled even if the patient's mark is the same (module docstring).
        self._shredded_at = _NOTHING
        self._syncing = asyncio.Lock()
        self.compiled = 0  # consents compiled so far (tests and metrics read it)
        self.repaired = 0  # ledger entries this registry recorded in the store (tests read it)
        # Consent entries that could not be recorded, by the pseudonym their leaf names
        # (None: no pseudonym, so no patient is safe): each blocks that patient's decisions.
        self._unrecorded: dict[bytes | None, set[int]] = {}

    @property
    def position(self) -> int:
        """The ledger index of the latest consent entry the store is known to hold (-1:
        none yet)."""
        return self._position

    @property
    def cached_policies(self) -> int:
        """How many compiled policies the cache holds (tests and metrics read it)."""
        return len(self._policies)

    async def sync(self) -> int:
        """Make the store hold every consent entry the ledger holds now, and return the
        ledger's consent position (module docstring). Raises ``ServiceUnavailable`` when the
        ledger or the store cannot be read or written: nothing is decided then."""
        seq = self._seq
        if seq is None:
            await self._read_position()
            return self._position
        mark = seq.announced()  # first: a change committed before it is above the bound
        if mark is not None and mark <= self._clear:
            return self._position
        if mark is None:  # unusable, or a new file mapped: the bound comes from reads after it
            self._clear = _NOTHING
        await self._read_position()
        self._clear = max(self._clear, self._position + 1)
        if mark is not None and mark > self._clear:
            # Announced and not caught up: in flight, or rolled back, or its writer died
            # before committing; the size read first bounds what the position read covers.
            size = await self.log.size()
            await self._read_position()
            self._clear = max(self._clear, size, self._position + 1)
        return self._position

    async def _read_position(self) -> None:
        """Read the ledger's consent position and catch up with it if it moved."""
        latest = await self.log.latest_consent()
        if latest is None or latest == self._position:
            return
        async with self._syncing:
            if latest > self._position:
                await self._catch_up()

    async def _catch_up(self) -> None:
        """Record the consent entries after our position that the store lacks, then move the
        position past them (only once all are recorded: a failure leaves it where it was)."""
        pending = await self.log.consents_after(self._position)
        if not pending:
            return
        present = await self.store.recorded(pending)
        for index in pending:
            # One the store lacks is a change appended whose store write never happened (or
            # has not happened yet): the ledger says it, so it is recorded before any decision.
            if index in present:
                continue
            outcome = await record_entry(self.log, self.store, index)
            if outcome is Outcome.RECORDED:
                self.repaired += 1
                get_logger("consentry.consent").warning(
                    "consent entry recorded from the ledger", ledger_index=index
                )
            elif outcome is Outcome.SHREDDED:
                # Erased by a shred, the ledger says so: no consent, nothing to block; but
                # what was compiled before it may be the erased consents or the default.
                self._shredded_at = index
            else:
                # Unreadable: it may revoke or deny, so its patient fails closed (below).
                (raw,) = await self.log.leaves(index, index + 1)
                self._unrecorded.setdefault(decode_leaf(raw).pseudonym, set()).add(index)
                get_logger("consentry.consent").error(
                    "consent entry cannot be recorded; its patient fails closed",
                    ledger_index=index,
                )
        self._position = pending[-1]

    async def _check_recorded(self, patient: str) -> None:
        """Raise :class:`UnreadableConsent` while a consent entry concerning ``patient`` (by
        its leaf's pseudonym, or naming none) cannot be recorded; each call tries again."""
        if not self._unrecorded:
            return
        pseudonym = await self.store.pseudonym(patient)
        for key in {None, pseudonym}:
            indexes = self._unrecorded.get(key)
            if not indexes:
                continue
            for index in sorted(indexes):
                outcome = await record_entry(self.log, self.store, index)
                if outcome is Outcome.SHREDDED:  # shredded since: absent, blocks nobody
                    indexes.discard(index)
                elif outcome is Outcome.RECORDED:
                    indexes.discard(index)
                    self.repaired += 1
                    self._patients.clear()  # a recorded entry may change any patient's policies
                    self._policies.clear()  # held by no cached patient now
            if indexes:
                raise UnreadableConsent("a consent entry on the ledger cannot be read")
            del self._unrecorded[key]

    async def policies(self, patient: str) -> tuple[Policy, ...]:
        """The policies of every consent of ``patient`` (``Patient/<id>``), in ledger order,
        as of the ledger's current consent position (:meth:`sync` first). Raises
        :class:`UnreadableConsent` or ``ServiceUnavailable``."""
        position = await self.sync()
        await self._check_recorded(patient)
        cached = self._patients.get(patient)
        if cached is not None and cached[0] == position:
            self._patients.move_to_end(patient)
            return cached[2]
        mark = await self.store.mark(patient)
        if cached is not None and cached[1] == mark and cached[0] >= self._shredded_at:
            self._patients[patient] = (position, mark, cached[2])
            self._patients.move_to_end(patient)
            return cached[2]
        records = await self.store.for_patient(patient) if mark.count else []
        compiled = (self._compile(record) for record in records)
        policies = tuple(policy for policy in compiled if policy is not None)
        if not records and await self.log.shredded_chains(self.store.lookup(patient)):
            policies = (erased_policy(patient),)  # erased by a shred: closed, not the default
        if cached is not None:
            # The versions this change superseded: no lookup asks for their ledger index
            # again, so kept they would fill the cache up to ``max_policies`` (one compiled
            # version per consent change, ~10 KB each: the soak's RSS growth).
            self._release(cached[2], keep={policy.ledger_index for policy in policies})
        self._patients[patient] = (position, mark, policies)
        self._patients.move_to_end(patient)
        while len(self._patients) > self._max_patients:
            _, (_, _, evicted) = self._patients.popitem(last=False)
            self._release(evicted)
        return policies

    def _release(
        self,
        policies: tuple[Policy, ...],
        keep: frozenset[int | None] | set[int | None] = frozenset(),
    ) -> None:
        """Drop the compiled ``policies`` (of a patient evicted or recompiled) from the policy
        cache, but those whose ledger index is in ``keep``: a policy is cached only while a
        cached patient holds it (a patient looked up again recompiles what it lacks)."""
        for policy in policies:
            if policy.ledger_index is not None and policy.ledger_index not in keep:
                self._policies.pop(policy.ledger_index, None)

    def _compile(self, record: ConsentRecord) -> Policy | None:
        """The policy of ``record``; None for a record that does not compile and is not in
        force (only ``active`` consents are enforced, so skipping it changes no decision);
        :class:`UnreadableConsent` for one that does not compile and is ``active``."""
        if record.status == KEY_STATUS:  # a registered signing key, no Consent (keyrecord.py)
            return None
        policy = self._policies.get(record.ledger_index)
        if policy is not None:
            self._policies.move_to_end(record.ledger_index)
            return policy
        try:
            stored = jsoncodec.decode(record.data, max_depth=STORED_MAX_JSON_DEPTH)
            policy = parse_consent(stored, ledger_index=record.ledger_index)
        except (InvalidConsent, jsoncodec.DecodeError, RecursionError) as exc:
            # Logged by ledger index only: the consent's text and patient are PHI.
            log = get_logger("consentry.consent")
            if record.revoked or record.status != "active":
                log.warning(
                    "recorded consent does not compile; not in force, skipped",
                    ledger_index=record.ledger_index,
                )
                return None
            log.error("recorded consent does not compile", ledger_index=record.ledger_index)
            raise UnreadableConsent("a recorded consent cannot be read") from exc
        self.compiled += 1
        self._policies[record.ledger_index] = policy
        while len(self._policies) > self._max_policies:
            self._policies.popitem(last=False)
        return policy
