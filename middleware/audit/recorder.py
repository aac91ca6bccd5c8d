"""The audit recorder: one FHIR exchange through the gateway becomes ledger entries.

Each entry is a PHI-free leaf (kind, flags, time, the patient's random pseudonym, the consent
index the decision relied on) committing to its evidence: the IHE BALP AuditEvents of the
exchange (https://profiles.ihe.net/ITI/BALP/), canonically encoded as a FHIR R4 ``collection``
Bundle (http://hl7.org/fhir/R4/bundle.html) and kept beside the ledger, never in it.

:meth:`AuditRecorder.record` writes one entry per patient of :attr:`Exchange.decisions`, in
order, or one entry without a pseudonym when the exchange names no patient. What each entry
says depends on the phase:

========  ===============================  ====================================================
phase     kind                             evidence
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
moves them into the ledger later. Outcome entries carry a gateway-made idempotency key (a
random batch id, never the client's ``X-Request-Id``: a reused id must never suppress an
entry), so a replay of an append that did commit records nothing twice.
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal, Protocol

from middleware.audit.alerts import break_glass_events, consent_decision_event, relied_on
from middleware.audit.balp import exchange_events
from middleware.audit.outbox import Lease, OpenIntent, Outbox, OutboxRow
from middleware.audit.parts import AgentInfo, Json, patient_reference
from middleware.auth.identity import Identity
from middleware.consent.decide import Decision
from middleware.errors import ServiceUnavailable
from middleware.fhir.jsoncodec import encode_canonical
from middleware.fhir.request import FhirRequest
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import PSEUDONYM_SIZE, EntryFlag, EntryKind, micros, new_salt
from middleware.ledger.signing import keyed_digest, new_box_key
from middleware.logging import get_logger

__all__ = ["Appender", "AuditRecorder", "Exchange", "Phase"]

Phase = Literal["exchange", "decision", "outcome"]
"""``exchange``: reads, searches and every denied or failed request, once answered;
``decision``: a write, before it is forwarded; ``outcome``: a write, once upstream answered."""

_PHASES: frozenset[str] = frozenset({"exchange", "decision", "outcome"})
_NO_PATIENT = bytes(PSEUDONYM_SIZE)


class Appender(Protocol):
    """Where entries go (:class:`~middleware.ledger.service.LedgerService` is one): ``append``
    returns the entry's ledger index once it is durable, or raises."""

    async def append(self, entry: NewEntry) -> int: ...


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the pipeline knows about one exchange when it is audited.

    ``identity`` is None for an unauthenticated (401) request. ``status`` is the HTTP status
    sent (or to be sent) to the client. ``raw_request`` is the request as received (target and
    query, plus the form body of ``POST _search``); it may be empty except for queries.
    ``decisions`` maps each patient the exchange touched or named (``Patient/<id>``, order
    kept) to the consent decision taken for it, or None when none was needed (a patient
    reading their own record). ``released`` are the patients whose data reached the client;
    ``resource_refs`` the ``Type/id`` of the resources released or written. ``narrowed``: the
    answer was filtered, the query pinned or the resource redacted. ``mapping``: the mapping
    profile the exchange went through and the digest of its files (``<id> sha256:<hex>``,
    issue #6 provenance), None without one.
    """

    request: FhirRequest
    identity: Identity | None
    status: int
    request_id: str
    raw_request: bytes
    client_address: str | None
    decisions: Mapping[str, Decision | None] = field(default_factory=dict, hash=False)
    released: frozenset[str] = frozenset()
    resource_refs: Sequence[str] = ()
    narrowed: bool = False
    break_glass: bool = False
    mapping: str | None = None

    def __post_init__(self) -> None:
        # Frozen in fact, not only in name: the caller's dict or list may change afterwards.
        object.__setattr__(self, "decisions", MappingProxyType(dict(self.decisions)))
        object.__setattr__(self, "resource_refs", tuple(self.resource_refs))


@dataclass(frozen=True, slots=True)
class _Planned:
    """One entry before its pseudonym is known: ``patient`` is ``Patient/<id>`` or None."""

    kind: EntryKind
    patient: str | None
    events: list[Json]
    flags: EntryFlag
    consent: int | None


class AuditRecorder:
    """Writes the ledger entries of exchanges; one per gateway, shared by all requests.

    ``pseudonym_of("Patient/<id>")`` returns the patient's 16-byte pseudonym (creating it on
    first use); pseudonyms never change, so the last ``max_cached_pseudonyms`` are kept in an
    LRU cache and the hot path makes no store round trip for a patient seen recently.
    ``wall_clock`` gives seconds since the epoch: the leaf's time and the events' ``recorded``.
    ``outbox``: where a write's outcome entries wait when the ledger refuses them (module
    docstring); without one, that failure raises like any other. ``live_for``: seconds an
    intent of this process is taken for a write in flight (more than an upstream exchange
    can last); ``clock``: monotonic seconds.

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
        outbox: Outbox | None = None,
        live_for: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        row_key: bytes | None = None,
        max_attempts: int = 20,
        give_up_after: float = 3600.0,
    ) -> None:
        if max_cached_pseudonyms < 1:
            raise ValueError("max_cached_pseudonyms must be positive")
        if max_attempts < 1 or give_up_after <= 0:
            raise ValueError("max_attempts and give_up_after must be positive")
        self._ledger = ledger
        self._pseudonym_of = pseudonym_of
        self._gateway = gateway
        self._wall_clock = wall_clock
        self._max_cached = max_cached_pseudonyms
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self.outbox = outbox
        self._replay_lock = asyncio.Lock()
        # Rows kept since the last replay (rows from an earlier run: start-up replays them).
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
        recorded = datetime.fromtimestamp(self._wall_clock(), UTC)
        plans = _plan(exchange, phase, recorded, self._gateway)
        rid = exchange.request_id
        if phase == "outcome" and self.outbox is not None:
            try:
                return await self._record_outcome(plans, rid, micros(recorded), self.outbox, intent)
            finally:
                # Recorded, or not recordable now: either way the next reconcile may decide it.
                self._live.pop(intent or "", None)
        pseudonyms = await self._pseudonyms(rid, [p.patient for p in plans if p.patient])
        recorded_us = micros(recorded)
        entries = [
            NewEntry.create(
                plan.kind,
                _bundle(plan.events),
                recorded_us=recorded_us,
                pseudonym=None if plan.patient is None else pseudonyms[plan.patient],
                consent=plan.consent,
                flags=plan.flags,
            )
            for plan in plans
        ]
        indexes = await self._append_all(entries, rid)
        self._kick()
        return indexes

    async def _record_outcome(
        self,
        plans: list[_Planned],
        rid: str,
        recorded_us: int,
        outbox: Outbox,
        intent: str | None,
    ) -> list[int]:
        """A write's outcome: appended under the idempotency keys of its ``intent`` (else
        fresh ones); if the ledger (or the pseudonym store) refuses, the same entries go to
        the outbox and ``[]`` is returned. Raises ServiceUnavailable only when the outbox
        cannot take them either. The intent is settled either way."""
        batch = intent or uuid.uuid4().hex
        try:
            pseudonyms = await self._pseudonyms(rid, [p.patient for p in plans if p.patient])
        except ServiceUnavailable:
            pseudonyms = {}  # resolved on replay, from the patient reference kept in the row
        rows = self._rows(plans, rid, recorded_us, pseudonyms, batch)
        if all(row.patient is None for row in rows):
            try:
                indexes = await self._append_all([_entry(row, row.pseudonym) for row in rows], rid)
            except ServiceUnavailable:
                pass  # to the outbox, under the same keys (a lost commit is not doubled)
            else:
                self._kick()
                if intent is not None:
                    try:
                        await outbox.settle(intent)
                    # Harmless: its variants share these keys, so a replay adds nothing.
                    except Exception as exc:  # noqa: BLE001
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
        get_logger("consentry.audit").warning(
            "write outcome kept in the audit outbox", request_id=rid, entries=len(rows)
        )
        return []

    def _rows(
        self,
        plans: list[_Planned],
        rid: str,
        recorded_us: int,
        pseudonyms: Mapping[str, bytes],
        batch: str,
    ) -> list[OutboxRow]:
        rows = [
            OutboxRow(
                request_id=rid,
                kind=int(plan.kind),
                recorded_us=recorded_us,
                salt=new_salt(),
                evidence=_bundle(plan.events),
                pseudonym=pseudonyms.get(plan.patient) if plan.patient else None,
                patient=plan.patient if plan.patient not in pseudonyms else None,
                consent=plan.consent,
                flags=int(plan.flags),
                idempotency_key=f"outcome:{batch}:{n}",
            )
            for n, plan in enumerate(plans)
        ]
        return [replace(row, mac=_row_mac(self._row_key, row)) for row in rows]

    def _lease(self) -> Lease:
        """This process's lease, running ``live_for`` seconds from now."""
        expires = micros(datetime.fromtimestamp(self._wall_clock() + self._live_for, UTC))
        return Lease(self._owner, self._host, os.getpid(), self._started, expires)

    def _owner_gone(self, intent: OpenIntent) -> bool:
        """Whether ``intent``'s owner is another process that no longer holds it: no lease,
        a lease lapsed, or an owner on this host whose process is not running any more."""
        lease = intent.lease
        if lease is None:
            return True
        if lease.expires_us <= micros(datetime.fromtimestamp(self._wall_clock(), UTC)):
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
            recorded = datetime.fromtimestamp(self._wall_clock(), UTC)
            plans = _plan(exchange, "outcome", recorded, self._gateway)
            rid = exchange.request_id
            pseudonyms = await self._pseudonyms(rid, [p.patient for p in plans if p.patient])
            held[name] = self._rows(plans, rid, micros(recorded), pseudonyms, intent)
        self._live[intent] = self._clock()
        try:
            created = micros(datetime.fromtimestamp(self._wall_clock(), UTC))
            await outbox.hold(intent, probe, held, lease=self._lease(), created_us=created)
        except Exception as exc:  # the outbox's own storage failed: do not forward
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
                self._deferred = True
        # Start-up and readiness call this: an unreachable upstream or outbox is reported as
        # work still waiting, never raised.
        except Exception as exc:  # noqa: BLE001
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
        now = micros(datetime.fromtimestamp(self._wall_clock(), UTC))
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
                entry = _entry(row, pseudonym)
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
        recorded = datetime.fromtimestamp(self._wall_clock(), UTC)
        refs = [patient_reference(p) for p in patients]
        flags = EntryFlag.BREAK_THE_GLASS | (
            EntryFlag.PERMIT if phase == "started" else EntryFlag.NONE
        )
        events = break_glass_events(
            phase,
            identity=identity,
            patients=refs,
            recorded=recorded,
            request_id=request_id,
            gateway=self._gateway,
            client_address=client_address,
        )
        if reason is not None:
            # The caller's stated reason, for the reviewer (R4 AuditEvent.entity.detail).
            for event in events:
                event["entity"].append(
                    {
                        "type": {"system": _ENTITY_SYSTEM, "code": "reason"},
                        "detail": [{"type": "reason", "valueString": reason}],
                    }
                )
        pseudonyms = await self._pseudonyms(request_id, refs)
        entries = [
            NewEntry.create(
                EntryKind.ACCESS_DECISION,
                _bundle([event]),
                recorded_us=micros(recorded),
                pseudonym=pseudonyms[ref],
                flags=flags,
            )
            for ref, event in zip(refs, events, strict=True)
        ]
        return await self._append_all(entries, request_id)

    async def _append_all(self, entries: list[NewEntry], request_id: str) -> list[int]:
        """Append ``entries`` and return their indexes, in order. Concurrent, so the
        group-commit writer takes them in one batch; every append is awaited (return_exceptions)
        so none is left running unobserved when one fails."""
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
        for patient in dict.fromkeys(patients):
            cached = self._cache.get(patient)
            if cached is None:
                missing.append(patient)
            else:
                self._cache.move_to_end(patient)
                found[patient] = cached
        results = await asyncio.gather(
            *(self._pseudonym_of(patient) for patient in missing), return_exceptions=True
        )
        for patient, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                raise _unavailable(request_id, result) from result
            pseudonym = bytes(result)
            if len(pseudonym) != PSEUDONYM_SIZE or pseudonym == _NO_PATIENT:
                error = ValueError("the pseudonym store returned a malformed pseudonym")
                raise _unavailable(request_id, error) from error
            found[patient] = pseudonym
            self._cache[patient] = pseudonym
            if len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return found


def _plan(
    exchange: Exchange, phase: Phase, recorded: datetime, gateway: AgentInfo
) -> list[_Planned]:
    """The entries of one call, in order (pure)."""
    x = exchange
    released = {patient_reference(p) for p in x.released}
    targets: list[tuple[str | None, Decision | None]] = [
        (patient_reference(p), d) for p, d in x.decisions.items()
    ] or [(None, None)]
    extra = (EntryFlag.NARROWED if x.narrowed else EntryFlag.NONE) | (
        EntryFlag.BREAK_THE_GLASS if x.break_glass else EntryFlag.NONE
    )

    def restful(patient: str | None, refs: Sequence[str]) -> Json:
        (event,) = exchange_events(
            x.request,
            identity=x.identity,
            patients=[] if patient is None else [patient],
            outcome_status=x.status,
            recorded=recorded,
            request_id=x.request_id,
            raw_request=x.raw_request,
            gateway=gateway,
            client_address=x.client_address,
            resource_refs=refs,
        )
        if x.mapping is not None:
            event["entity"].append(_mapping_entity(x.mapping))
        return event

    def authz(patient: str | None, decision: Decision | None) -> list[Json]:
        if decision is None:
            return []
        event = consent_decision_event(
            decision,
            identity=x.identity,
            patient=patient,
            recorded=recorded,
            request_id=x.request_id,
            gateway=gateway,
            client_address=x.client_address,
        )
        return [event]

    plans: list[_Planned] = []
    for patient, decision in targets:
        flags = extra | (
            EntryFlag.PERMIT if _permits(phase, x.status, decision) else EntryFlag.NONE
        )
        if phase == "exchange":
            disclosed = x.status < 400 and (patient is None or patient in released)
            kind = EntryKind.DISCLOSURE if disclosed else EntryKind.ACCESS_DECISION
            # The released resources belong to released patients: a patient whose data was
            # withheld is audited against what was asked for (the request's own target).
            refs = x.resource_refs if disclosed or patient is None else ()
            events = [*authz(patient, decision), restful(patient, refs)]
        elif phase == "decision":
            kind = EntryKind.ACCESS_DECISION
            events = authz(patient, decision) or [restful(patient, x.resource_refs)]
        else:
            kind = EntryKind.ACCESS_OUTCOME
            events = [restful(patient, x.resource_refs)]
        plans.append(_Planned(kind, patient, events, flags, _consent_index(decision)))
    return plans


def _entry(row: OutboxRow, pseudonym: bytes | None) -> NewEntry:
    """The ledger entry an outbox row stands for (its salt and key kept: the same entry)."""
    return NewEntry(
        kind=EntryKind(row.kind),
        recorded_us=row.recorded_us,
        salt=row.salt,
        evidence=row.evidence,
        pseudonym=pseudonym,
        consent=row.consent,
        flags=EntryFlag(row.flags),
        idempotency_key=row.idempotency_key,
    )


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


def _permits(phase: Phase, status: int, decision: Decision | None) -> bool:
    """The PERMIT flag: the status is below 400 and the decision, if any, permits. Before a
    write is forwarded (phase ``decision``) its status is not known yet: the decision counts."""
    if phase == "decision" and decision is not None:
        return decision.permitted
    return status < 400 and (decision is None or decision.permitted)


def _consent_index(decision: Decision | None) -> int | None:
    """The leaf's consent index: the newest ledger entry among the consents relied on."""
    if decision is None:
        return None
    return max((i for _, i in relied_on(decision) if i is not None), default=None)


def _bundle(events: list[Json]) -> bytes:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": event} for event in events],
    }
    return encode_canonical(bundle)


_ENTITY_SYSTEM = "https://consentry.dev/CodeSystem/audit-entity"


_MAPPING_SYSTEM = "https://consentry.dev/CodeSystem/mapping-profile"


def _mapping_entity(mapping: str) -> Json:
    """An entity naming the mapping profile and the digest of its files (R4 AuditEvent.entity
    with ``what.identifier`` and a ``detail``), so an auditor can tell which mapping shaped
    what was released or written."""
    profile, _, digest = mapping.partition(" ")
    return {
        "what": {"identifier": {"system": _MAPPING_SYSTEM, "value": profile}},
        "type": {"system": _ENTITY_SYSTEM, "code": "mapping-profile"},
        "detail": [{"type": "files-digest", "valueString": digest}],
    }


def _unavailable(request_id: str, cause: BaseException) -> ServiceUnavailable:
    # The request id and the error's type only: never a patient, a reference or request text.
    get_logger("consentry.audit").error(
        "audit trail unavailable",
        request_id=request_id,
        error_type=type(cause).__name__,
    )
    return ServiceUnavailable("audit trail unavailable")
