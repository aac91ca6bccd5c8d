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
Without patients, the one exchange entry is a ``DISCLOSURE`` below status 400. Which
resources each entry's RESTful event names, by phase, is decided in
:mod:`middleware.audit.entities` (a patient whose data was withheld: what was asked for, the
request's own target, not ``resource_refs``: the resources released belong to other patients).

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

The work is split by path: :mod:`middleware.audit.recorder_direct` (entries made and appended,
the pseudonym and key caches), :mod:`middleware.audit.recorder_outbox` (a write's outcome
through the outbox, the replay) and :mod:`middleware.audit.recorder_intents` (intents before a
write, leases, reconcile); :class:`AuditRecorder` builds on all three and owns their state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from middleware.audit.evidence import PatientKeys
from middleware.audit.outbox import Outbox
from middleware.audit.parts import AgentInfo
from middleware.audit.plan import Exchange, Phase, plan
from middleware.audit.recorder_direct import Appender, private_keys
from middleware.audit.recorder_intents import IntentRecorder, started
from middleware.audit.ttlcache import TtlCache
from middleware.ledger.leaf import micros_at
from middleware.ledger.signing import new_box_key

__all__ = ["Appender", "AuditRecorder", "Exchange", "Phase"]

_PHASES: frozenset[str] = frozenset({"exchange", "decision", "outcome"})


class AuditRecorder(IntentRecorder):
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
        self._cache = TtlCache(max_cached_pseudonyms, pseudonym_ttl, clock)
        self.keys = keys or private_keys()
        self.outbox = outbox
        self._replay_lock = asyncio.Lock()
        # equivalent mutant (None): only its truth is read
        self._deferred = False
        self._replaying = None
        self._live = {}
        self._live_for = live_for
        self._clock = clock
        self._row_key = new_box_key() if row_key is None else row_key
        self._max_attempts = max_attempts
        self._give_up_after = give_up_after
        self._owner = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._started = started(os.getpid())
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
