"""The audit recorder: one FHIR exchange through the gateway becomes ledger entries.

Each entry is a PHI-free leaf (kind, flags, time, the patient's random pseudonym, the consent
index the decision relied on) committing to its evidence: the exchange's audit facts
(:mod:`middleware.audit.facts`, planned by :mod:`middleware.audit.plan`) sealed under the
patient's evidence key (:mod:`middleware.audit.evidence`), kept beside the ledger, never in
it. The IHE BALP AuditEvents (https://profiles.ihe.net/ITI/BALP/) are rendered from the facts
when read (:mod:`middleware.audit.render`), never on the request's hot path. Each entry
carries its audit-index row (:func:`~middleware.audit.facts.row_of`), which the store writes
in the append's transaction.

:meth:`AuditRecorder.record` writes one entry per patient of :attr:`Exchange.decisions`, in
order, or one entry without a pseudonym when the exchange names no patient. What each entry
says depends on the phase:

========  ===============================  ====================================================
phase     kind                             events rendered from the evidence
========  ===============================  ====================================================
exchange  ``DISCLOSURE`` for a released    the BALP AuthZconsent event (when a consent decision
          patient (status < 400), else     was taken), then the BALP RESTful event of the
          ``ACCESS_DECISION``              exchange for that patient
decision  ``ACCESS_DECISION``              the AuthZconsent event; without a decision, the
                                           RESTful event with the given status
outcome   ``ACCESS_OUTCOME``               the RESTful event with the upstream's status
========  ===============================  ====================================================

Flags: ``PERMIT`` when the status is below 400 and the decision (if any) permits (the decision
phase: when the decision permits); ``NARROWED`` and ``BREAK_THE_GLASS`` as the exchange says.
Without patients, the one exchange entry is a ``DISCLOSURE`` below status 400. The RESTful
event of a patient whose data was withheld names what was asked for (the request's own
target), not ``resource_refs``: the resources released belong to other patients.

Every entry of one call is appended concurrently, so the group-commit writer can take them in
one batch; if any append fails the call raises :class:`~middleware.errors.ServiceUnavailable`
and the caller must release nothing (ARCHITECTURE invariant 1: no response without a durable
entry). The exception is a write's ``outcome``: the upstream has applied the write already, so
with an :class:`~middleware.audit.outbox.Outbox` its entries, refused by the ledger, are made
durable there instead and the call returns (no indexes yet); :meth:`AuditRecorder.replay`
moves them into the ledger later. A row keeps its facts sealed when the patient's key was at
hand, else unsealed (the outbox row's MAC covers them either way); replay seals them. Outcome
entries carry a gateway-made idempotency key (a random batch id, never the client's
``X-Request-Id``: a reused id must never suppress an entry), so a replay of an append that
did commit records nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Literal, Protocol

from middleware.audit.evidence import (
    NO_PATIENT,
    Opening,
    PatientKeys,
    is_sealed,
    open_entry,
    seal_facts,
    sealed_entry,
)
from middleware.audit.facts import decode_facts, encode_facts, row_of
from middleware.audit.outbox import Lease, OpenIntent, Outbox, OutboxRow
from middleware.audit.parts import AgentInfo
from middleware.audit.plan import Exchange, Phase, Planned, plan, plan_break_glass
from middleware.auth.identity import Identity
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import PSEUDONYM_SIZE, EntryFlag, EntryKind, micros_at, new_salt
from middleware.ledger.signing import evidence_key, keyed_digest, new_box_key
from middleware.logging import get_logger

__all__ = ["Appender", "AuditRecorder", "Exchange", "Phase"]

_PHASES: frozenset[str] = frozenset({"exchange", "decision", "outcome"})
_NO_PATIENT = bytes(PSEUDONYM_SIZE)


class Appender(Protocol):
    """Where entries go (:class:`~middleware.ledger.service.LedgerService` is one): ``append``
    returns the entry's ledger index once it is durable, or raises."""

    async def append(self, entry: NewEntry) -> int: ...


class AuditRecorder:
    """Writes the ledger entries of exchanges; one per gateway, shared by all requests.

    ``pseudonym_of("Patient/<id>")`` returns the patient's 16-byte pseudonym (creating it on
    first use); the last ``max_cached_pseudonyms`` are kept in an LRU cache for
    ``pseudonym_ttl`` seconds (``clock``), so the hot path makes no store round trip for a
    patient seen recently. A pseudonym changes only when a shred forgets the patient (the
    next use creates a new chain): the expiry bounds how long this process keeps writing on
    the shredded chain, whose rows the ledger store then writes shredded and whose evidence
    is sealed under a key it never stores (``LogStore.shred``).
    ``wall_clock`` gives seconds since the epoch: the leaf's time and the events' ``recorded``.
    ``outbox``: where a write's outcome entries wait when the ledger refuses them (module
    docstring); without one, that failure raises like any other. ``live_for``: seconds an
    intent of this process is taken for a write in flight (more than an upstream exchange
    can last); ``clock``: monotonic seconds. ``keys``: the patients' evidence keys (over the
    store's key table); without it, keys this process alone holds (tests), readable through
    :attr:`keys`.

    ``row_key`` (32 bytes; ``derive_box_key(ledger key, "outbox")``) MACs every outbox row;
    a row whose MAC does not verify, or of a kind other than ``ACCESS_OUTCOME``, is
    dead-lettered, never replayed (without a key, a random one: rows from another run are
    dead-lettered). The process holds a lease on its intents in the outbox, renewed with each
    intent and each reconcile, lapsing ``live_for`` seconds later: other processes sharing the
    file reconcile its intents only once it lapsed or the process is gone. An intent that
    ``max_attempts`` reconciles could not decide, or older than ``give_up_after`` seconds and
    still undecided, is resolved ``unknown``.
    """

    def __init__(
        self,
        ledger: Appender,
        pseudonym_of: Callable[[str], Awaitable[bytes]],
        *,
        gateway: AgentInfo,
        wall_clock: Callable[[], float] = time.time,
        max_cached_pseudonyms: int = 100_000,
        pseudonym_ttl: float = 60.0,
        outbox: Outbox | None = None,
        live_for: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        row_key: bytes | None = None,
        max_attempts: int = 20,
        give_up_after: float = 3600.0,
        keys: PatientKeys | None = None,
    ) -> None:
        if max_cached_pseudonyms < 1:
            raise ValueError("max_cached_pseudonyms must be positive")
        if pseudonym_ttl <= 0:
            raise ValueError("pseudonym_ttl must be positive")
        if max_attempts < 1 or give_up_after <= 0:
            raise ValueError("max_attempts and give_up_after must be positive")
        self._ledger = ledger
        self._pseudonym_of = pseudonym_of
        self._gateway = gateway
        self._wall_clock = wall_clock
        self._max_cached = max_cached_pseudonyms
        self._pseudonym_ttl = pseudonym_ttl
        #: patient -> (pseudonym, monotonic time it was fetched)
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.keys = keys or _private_keys()
        self.outbox = outbox
        self._replay_lock = asyncio.Lock()
        # Rows kept since the last replay (rows from an earlier run: start-up replays them).
        # equivalent mutant (None): only its truth is read
        self._deferred = False
        self._replaying: asyncio.Task[int] | None = None
        # This process's intents whose write is in flight: never reconciled (the upstream
        # may not have it *yet*), unless one outlives ``live_for`` seconds (a request
        # cancelled before its outcome was recorded).
        self._live: dict[str, float] = {}
        self._live_for = live_for
        self._clock = clock
        self._row_key = new_box_key() if row_key is None else row_key
        self._max_attempts = max_attempts
        self._give_up_after = give_up_after
        # Who this process is to others sharing the outbox: a random owner id, and what
        # tells a process on this host whether it still runs (Lease).
        self._owner = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._started = _started(os.getpid())
        self.dead_lettered = 0
        """Outbox rows this process moved to the dead-letter table (a metric)."""
        self.given_up = 0
        """Intents this process resolved ``unknown`` after too many undecided reconciles."""

    async def record(
        self, exchange: Exchange, phase: Phase, *, intent: str | None = None
    ) -> list[int]:
        """Append the entries of ``exchange`` in ``phase`` and return their indexes, in order.
        ``intent`` (phase ``outcome``): the one :meth:`intend` wrote before the forward; the
        outcome takes its idempotency keys and settles it.

        Raises :class:`ServiceUnavailable` ("audit trail unavailable") when a pseudonym cannot
        be had or any append fails; :class:`ValueError` for a malformed exchange (unknown
        phase, empty ``request_id``, a patient that is no ``Patient/<id>``, a query without
        ``raw_request``), before anything is appended.
        """
        if phase not in _PHASES:
            raise ValueError(f"unknown audit phase {phase!r}")
        recorded_us = micros_at(self._wall_clock())
        plans = plan(exchange, phase, recorded_us, self._gateway)
        rid = exchange.request_id
        if phase == "outcome" and self.outbox is not None:
            try:
                return await self._record_outcome(plans, rid, self.outbox, intent)
            finally:
                # Recorded, or not recordable now: either way the next reconcile may decide it.
                # equivalent mutant (another default): no intent has it (uuid4 hex)
                self._live.pop(intent or "", None)
        indexes = await self._append_all(await self._entries(plans, rid), rid)
        self._kick()
        return indexes

    async def _entries(self, plans: list[Planned], rid: str) -> list[NewEntry]:
        """The ledger entries of ``plans``: facts sealed, each with its audit-index row."""
        pseudonyms = await self._pseudonyms(
            rid, [p.facts.patient for p in plans if p.facts.patient]
        )
        named = [None if p.facts.patient is None else pseudonyms[p.facts.patient] for p in plans]
        keys = await self._keys(rid, named)
        # Equal lengths by construction: strict= mutants are equivalent.
        return [
            sealed_entry(
                keys[pseudonym or NO_PATIENT],
                p.facts,
                kind=p.kind,
                flags=p.flags,
                pseudonym=pseudonym,
                consent=p.consent,
            )
            for p, pseudonym in zip(plans, named, strict=True)
        ]

    async def _record_outcome(
        self,
        plans: list[Planned],
        rid: str,
        outbox: Outbox,
        intent: str | None,
    ) -> list[int]:
        """A write's outcome: appended under the idempotency keys of its ``intent`` (else
        fresh ones); if the ledger (or the pseudonym store) refuses, the same entries go to
        the outbox and ``[]`` is returned. Raises ServiceUnavailable only when the outbox
        cannot take them either. The intent is settled either way."""
        batch = intent or uuid.uuid4().hex
        rows = await self._rows(plans, rid, batch)
        if all(row.patient is None for row in rows):
            try:
                entries = [await self._entry(row, row.pseudonym) for row in rows]
                indexes = await self._append_all(entries, rid)
            except ServiceUnavailable:
                pass  # to the outbox, under the same keys (a lost commit is not doubled)
            else:
                self._kick()
                if intent is not None:
                    try:
                        await outbox.settle(intent)
                    # Harmless: its variants share these keys, so a replay adds nothing.
                    except Exception as exc:  # noqa: BLE001
                        # equivalent mutants (name): our log lines do not render a logger name
                        get_logger("consentry.audit").warning(
                            "audit intent not settled",
                            request_id=rid,
                            error_type=type(exc).__name__,
                        )
                return indexes
        try:
            await outbox.put(rows, settles=intent)
        except Exception as exc:  # any failure of the outbox's own storage: nothing is durable
            raise _unavailable(rid, exc) from exc
        self._deferred = True
        # equivalent mutants (name): our log lines do not render a logger name
        get_logger("consentry.audit").warning(
            "write outcome kept in the audit outbox", request_id=rid, entries=len(rows)
        )
        return []

    async def _rows(self, plans: list[Planned], rid: str, batch: str) -> list[OutboxRow]:
        """The outbox rows of ``plans`` under idempotency keys of ``batch``. A pseudonym or key
        the stores cannot give now is left for replay: the row keeps the ``Patient/<id>`` and
        its facts unsealed."""
        patients = [p.facts.patient for p in plans if p.facts.patient]
        try:
            pseudonyms = await self._pseudonyms(rid, patients)
        except ServiceUnavailable:
            pseudonyms = {}  # resolved on replay, from the patient reference kept in the row
        # equivalent mutant (always .get): pseudonyms.get(None) is None too
        named = [
            None if p.facts.patient is None else pseudonyms.get(p.facts.patient) for p in plans
        ]
        try:
            # Equal lengths by construction: strict= mutants are equivalent.
            keys = await self._keys(
                rid, [n for n, p in zip(named, plans, strict=True) if n or not p.facts.patient]
            )
        except ServiceUnavailable:
            keys = {}  # sealed on replay
        rows = []
        # Equal lengths by construction: strict= mutants are equivalent.
        for n, (p, pseudonym) in enumerate(zip(plans, named, strict=True)):
            salt = new_salt()
            facts = encode_facts(p.facts)
            # equivalent mutant (`or True`): one exchange's plans all name a patient or none, so
            # NO_PATIENT's key is never fetched beside a patient missing its pseudonym
            key = keys.get(pseudonym or NO_PATIENT) if pseudonym or not p.facts.patient else None
            rows.append(
                OutboxRow(
                    request_id=rid,
                    kind=int(p.kind),
                    recorded_us=p.facts.recorded_us,
                    salt=salt,
                    evidence=facts if key is None else seal_facts(key, salt, facts),
                    pseudonym=pseudonym,
                    patient=p.facts.patient if pseudonym is None else None,
                    consent=p.consent,
                    flags=int(p.flags),
                    idempotency_key=f"outcome:{batch}:{n}",
                )
            )
        return [replace(row, mac=_row_mac(self._row_key, row)) for row in rows]

    async def _entry(self, row: OutboxRow, pseudonym: bytes | None) -> NewEntry:
        """The ledger entry an outbox row stands for (its salt and key kept: the same entry),
        its facts sealed now if they were not, with its audit-index row. Evidence from before
        sealed facts (a JSON Bundle) is appended as it is, without a row. Raises
        ServiceUnavailable when the key cannot be had, ValueError for a row that does not
        open or decode."""
        evidence = row.evidence
        audit_row = None
        if not evidence.startswith(b"{"):
            key = (await self._keys(row.request_id, [pseudonym]))[pseudonym or NO_PATIENT]
            if is_sealed(evidence):
                # equivalent mutant (salt None): open_entry reads the key, not the salt
                facts = open_entry(Opening(row.salt, evidence, evidence_key(key, row.salt)))
            else:
                facts = decode_facts(evidence)
                evidence = seal_facts(key, row.salt, evidence)
            audit_row = row_of(facts, kind=row.kind, flags=row.flags, pseudonym=pseudonym)
        return NewEntry(
            kind=EntryKind(row.kind),
            recorded_us=row.recorded_us,
            salt=row.salt,
            evidence=evidence,
            pseudonym=pseudonym,
            consent=row.consent,
            flags=EntryFlag(row.flags),
            idempotency_key=row.idempotency_key,
            row=audit_row,
        )

    async def _keys(self, rid: str, pseudonyms: Iterable[bytes | None]) -> dict[bytes, bytes]:
        """The evidence keys of ``pseudonyms`` (None: the no-patient key), by pseudonym;
        cached ones without I/O. Raises ServiceUnavailable when the store cannot give one."""
        found: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        for pseudonym in dict.fromkeys(p or NO_PATIENT for p in pseudonyms):
            # equivalent mutants (None, cached(None)): keys.key consults the same cache first;
            # they lose only this no-task fast path
            key = self.keys.cached(pseudonym)
            if key is None:
                missing.append(pseudonym)
            else:
                found[pseudonym] = key
        if not missing:
            return found  # the usual case, no task made
        results = await asyncio.gather(*(self.keys.key(p) for p in missing), return_exceptions=True)
        # Equal lengths by construction: strict= mutants are equivalent.
        for pseudonym, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                raise _unavailable(rid, result) from result
            found[pseudonym] = result
        return found

    def _lease(self) -> Lease:
        """This process's lease, running ``live_for`` seconds from now."""
        expires = micros_at(self._wall_clock() + self._live_for)
        return Lease(self._owner, self._host, os.getpid(), self._started, expires)

    def _owner_gone(self, intent: OpenIntent) -> bool:
        """Whether ``intent``'s owner is another process that no longer holds it: no lease,
        a lease lapsed, or an owner on this host whose process is not running any more."""
        lease = intent.lease
        if lease is None:
            return True
        if lease.expires_us <= micros_at(self._wall_clock()):
            return True
        return lease.host == self._host and not _running(lease.pid, lease.started)

    async def intend(self, variants: Mapping[str, Exchange], probe: str) -> str | None:
        """Before a write is forwarded: keep, durably, its outcome entries for each way it can
        end (``variants``, by name) and the ``probe`` that tells which one it was, so a
        gateway killed before the outcome is recorded leaves what :meth:`reconcile` needs.
        Returns the intent to pass to :meth:`record` (None without an outbox). Raises
        ServiceUnavailable when the intent cannot be made durable: nothing is forwarded."""
        outbox = self.outbox
        if outbox is None:
            return None
        intent = uuid.uuid4().hex
        held: dict[str, list[OutboxRow]] = {}
        for name, exchange in variants.items():
            recorded_us = micros_at(self._wall_clock())
            plans = plan(exchange, "outcome", recorded_us, self._gateway)
            rid = exchange.request_id
            await self._pseudonyms(rid, [p.facts.patient for p in plans if p.facts.patient])
            held[name] = await self._rows(plans, rid, intent)
        self._live[intent] = self._clock()
        try:
            created = micros_at(self._wall_clock())
            await outbox.hold(intent, probe, held, lease=self._lease(), created_us=created)
        except Exception as exc:  # the outbox's own storage failed: do not forward
            # A reconcile may have dropped it already (a hold that outlasted live_for):
            # tests/unit/audit/test_recorder_slow_hold.py.
            self._live.pop(intent, None)
            raise _unavailable(next(iter(variants.values())).request_id, exc) from exc
        return intent

    async def reconcile(self, decide: Callable[[str], Awaitable[str | None]]) -> int:
        """Resolve each open intent (a write whose gateway stopped before its outcome was
        recorded) with ``decide(probe)``, which asks the upstream and names the variant that
        happened (None: it cannot tell now), then :meth:`replay`. Only intents whose owner is
        gone are taken: this process's own, unless in flight, and another process's once
        its lease lapsed or it stopped running (class docstring); the others are left alone
        and not counted. An intent ``decide`` cannot tell (None, or it raised) counts an
        attempt; after ``max_attempts`` of them or ``give_up_after`` seconds it is resolved
        ``unknown``. Returns the rows and undecided intents still waiting (-1 when that is
        not known: the outbox cannot be read)."""
        outbox = self.outbox
        if outbox is None:
            return 0
        now = self._clock()
        self._live = {i: t for i, t in self._live.items() if now - t < self._live_for}
        undecided = 0
        # equivalent mutants (name): our log lines do not render a logger name
        log = get_logger("consentry.audit")
        try:
            await outbox.renew(self._lease())
            for open_intent in await outbox.open_intents():
                intent = open_intent.intent
                if intent in self._live:
                    continue
                if open_intent.owner != self._owner and not self._owner_gone(open_intent):
                    continue  # another process's write, maybe still in flight
                try:
                    variant = await decide(open_intent.probe)
                # The upstream unreachable, a probe that does not decode: not decided now.
                except Exception as exc:  # noqa: BLE001
                    log.warning("audit intent not decided", error_type=type(exc).__name__)
                    variant = None
                if variant is None:
                    if self._give_up(open_intent):
                        variant = "unknown"
                        self.given_up += 1
                        log.warning(
                            "audit intent given up: outcome recorded as unknown",
                            attempts=open_intent.attempts + 1,
                        )
                    else:
                        await outbox.attempted(intent)
                        undecided += 1
                        continue
                await outbox.resolve(intent, variant)
                # equivalent mutants (None, False): the replay() below sets it from what waits
                self._deferred = True
        # Start-up and readiness call this: an unreachable upstream or outbox is reported as
        # work still waiting, never raised.
        except Exception as exc:  # noqa: BLE001
            # equivalent mutants (name): our log lines do not render a logger name
            get_logger("consentry.audit").warning(
                "audit intents not reconciled", error_type=type(exc).__name__
            )
            undecided = -1
        waiting = await self.replay()
        return -1 if -1 in (waiting, undecided) else waiting + undecided

    def _give_up(self, intent: OpenIntent) -> bool:
        """Whether an intent that could not be decided once more is resolved ``unknown``."""
        if intent.attempts + 1 >= self._max_attempts:
            return True
        now = micros_at(self._wall_clock())
        age = (now - intent.created_us) / 1_000_000
        return intent.created_us > 0 and age >= self._give_up_after

    async def replay(self) -> int:
        """Append the outbox's rows to the ledger, oldest first, dropping each once committed;
        stop at the first that fails (logged: request id and error type). Return how many
        rows still wait (0 without an outbox; -1 when the outbox itself cannot be read). Safe
        to call concurrently and repeatedly."""
        outbox = self.outbox
        if outbox is None:
            return 0
        async with self._replay_lock:
            try:
                remaining = await self._replay(outbox)
            # Readiness and start-up call this: whatever failed (the ledger, the pseudonym
            # store, the outbox's own file, a row that no longer decodes) is reported as rows
            # still waiting, never raised.
            except Exception as exc:  # noqa: BLE001
                # equivalent mutants (name): our log lines do not render a logger name
                get_logger("consentry.audit").warning(
                    "audit outbox replay stopped", error_type=type(exc).__name__
                )
                remaining = -1
        self._deferred = remaining != 0
        return remaining

    async def _replay(self, outbox: Outbox) -> int:
        for row in await outbox.pending():
            refused = self._refusal(row)
            if refused is not None:
                await self._dead_letter(outbox, row, refused)
                continue
            try:
                pseudonym = row.pseudonym
                if pseudonym is None and row.patient is not None:
                    found = await self._pseudonyms(row.request_id, [row.patient])
                    pseudonym = found[row.patient]
                entry = await self._entry(row, pseudonym)
            except ServiceUnavailable:
                break  # the pseudonym store still refuses: the rows wait for the next replay
            except (ValueError, TypeError):
                await self._dead_letter(outbox, row, "malformed")
                continue
            try:
                await self._ledger.append(entry)
            except ServiceUnavailable:
                break  # the stores still refuse: the rows wait for the next replay
            await outbox.remove(row.id)
        return await outbox.count()

    def _refusal(self, row: OutboxRow) -> str | None:
        """Why ``row`` must not be replayed (None: it may): a MAC that does not verify (the
        row was not written by a gateway holding the ledger key, or was changed since), or a
        kind the outbox never holds (only a write's outcome waits there)."""
        if not hmac.compare_digest(row.mac, _row_mac(self._row_key, row)):
            return "mac"
        if row.kind != EntryKind.ACCESS_OUTCOME:
            return "kind"
        return None

    async def _dead_letter(self, outbox: Outbox, row: OutboxRow, reason: str) -> None:
        """Move ``row`` aside, never to be replayed; logged (request id and reason only)."""
        await outbox.dead_letter(row.id, reason)
        self.dead_lettered += 1
        # equivalent mutants (name): our log lines do not render a logger name
        get_logger("consentry.audit").error(
            "audit outbox row dead-lettered", request_id=row.request_id, reason=reason
        )

    def _kick(self) -> None:
        """After the ledger committed: replay the outbox in the background if rows may wait."""
        if self._deferred and (self._replaying is None or self._replaying.done()):
            self._replaying = asyncio.get_running_loop().create_task(self.replay())

    async def aclose(self) -> None:
        """Stop a background replay and close the outbox (its rows stay for the next start)."""
        if self._replaying is not None:
            self._replaying.cancel()
            # equivalent mutants (no Exception): replay() raises nothing but CancelledError
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._replaying
            self._replaying = None
        if self.outbox is not None:
            self.outbox.close()

    async def record_break_glass(
        self,
        phase: Literal["started", "stopped"],
        *,
        identity: Identity,
        patients: Sequence[str],
        request_id: str,
        client_address: str | None,
        reason: str | None = None,
    ) -> list[int]:
        """Append the emergency-override events (DICOM 110127 started / 110138 stopped,
        tagged for review) of ``identity`` for ``patients``: one entry per patient, flagged
        ``BREAK_THE_GLASS`` (and ``PERMIT`` when started). Raises ServiceUnavailable."""
        plans = plan_break_glass(
            phase,
            identity=identity,
            patients=patients,
            recorded_us=micros_at(self._wall_clock()),
            request_id=request_id,
            gateway=self._gateway,
            client_address=client_address,
            reason=reason,
        )
        return await self._append_all(await self._entries(plans, request_id), request_id)

    async def _append_all(self, entries: list[NewEntry], request_id: str) -> list[int]:
        """Append ``entries`` and return their indexes, in order. Concurrent, so the
        group-commit writer takes them in one batch; every append is awaited (return_exceptions)
        so none is left running unobserved when one fails."""
        if len(entries) == 1:  # nothing to batch with: no task made
            try:
                return [await self._ledger.append(entries[0])]
            except Exception as exc:
                raise _unavailable(request_id, exc) from exc
        results = await asyncio.gather(
            *(self._ledger.append(entry) for entry in entries), return_exceptions=True
        )
        indexes: list[int] = []
        for result in results:
            if isinstance(result, BaseException):
                raise _unavailable(request_id, result) from result
            indexes.append(result)
        return indexes

    async def _pseudonyms(self, request_id: str, patients: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        missing: list[str] = []
        now = self._clock()
        for patient in dict.fromkeys(patients):
            cached = self._cache.get(patient)
            if cached is None or now - cached[1] >= self._pseudonym_ttl:
                missing.append(patient)
            else:
                self._cache.move_to_end(patient)
                found[patient] = cached[0]
        if not missing:
            return found
        results = await asyncio.gather(
            *(self._pseudonym_of(patient) for patient in missing), return_exceptions=True
        )
        # Equal lengths by construction: strict= mutants are equivalent.
        for patient, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                raise _unavailable(request_id, result) from result
            pseudonym = bytes(result)
            if len(pseudonym) != PSEUDONYM_SIZE or pseudonym == _NO_PATIENT:
                error = ValueError("the pseudonym store returned a malformed pseudonym")
                raise _unavailable(request_id, error) from error
            found[patient] = pseudonym
            self._cache[patient] = (pseudonym, now)
            self._cache.move_to_end(patient)
            if len(self._cache) > self._max_cached:
                # equivalent mutant (last=None): falsy, the same oldest-first eviction
                self._cache.popitem(last=False)
        return found


def _row_mac(key: bytes, row: OutboxRow) -> bytes:
    """The MAC of everything of ``row`` that becomes the ledger entry (not its id, nor the
    intent and variant it is held under: those change as it is resolved)."""

    def optional(value: bytes | str | int | None) -> bytes:
        # None and an empty value must differ.
        if value is None:
            return b""
        return b"=" + (value if isinstance(value, bytes) else str(value).encode())

    return keyed_digest(
        key,
        [
            b"consentry/outbox-row/v1",
            row.request_id.encode(),
            str(row.kind).encode(),
            str(row.recorded_us).encode(),
            row.salt,
            row.evidence,
            optional(row.pseudonym),
            optional(row.patient),
            optional(row.consent),
            str(row.flags).encode(),
            row.idempotency_key.encode(),
        ],
    )


def _started(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), "" when
    it cannot be read: with the pid it names one process, so a reused pid is told apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def _running(pid: int, started: str) -> bool:
    """Whether the process ``pid`` that started at ``started`` runs on this host (when its
    start time cannot be compared, whether any process ``pid`` exists)."""
    if started:
        return _started(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def _private_keys() -> PatientKeys:
    """Evidence keys held by this process alone (a recorder built without a key store)."""
    table: dict[bytes, bytes] = {}

    async def audit_key(pseudonym: bytes, candidate: bytes) -> bytes:
        return table.setdefault(pseudonym, candidate)

    return PatientKeys(audit_key, new_box_key())


def _unavailable(request_id: str, cause: BaseException) -> ServiceUnavailable:
    # The request id and the error's type only: never a patient, a reference or request text.
    # equivalent mutants (name): our log lines do not render a logger name
    get_logger("consentry.audit").error(
        "audit trail unavailable",
        request_id=request_id,
        error_type=type(cause).__name__,
    )
    return ServiceUnavailable("audit trail unavailable")
