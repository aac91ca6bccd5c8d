"""The consent API's work, behind HTTP: authorize, validate, record on the ledger, answer.

:meth:`ConsentService.handle` runs one :class:`Call` for a verified identity and returns a
:class:`Reply` ready to send. Whatever happens, it first records the attempt on the ledger (an
``admin`` entry, :func:`~middleware.consent.records.attempt_evidence`, flag ``permit`` when it
succeeded), allowed or refused, and only then releases the answer; if that record cannot be
made, the answer is 503 and nothing else. Each attempt names the request's ``X-Request-Id``.
A failure nobody foresaw (a bug: any exception that is not a
:class:`~middleware.errors.GatewayError`) is a refusal like the others: recorded as a 500
attempt naming only the exception's class, then answered 500 without detail
(:meth:`ConsentService.unexpected`). Unauthenticated requests never get here (the API
answers 401 before): they name nobody, and recording them would let anyone grow an
append-only log without bound; they are logged instead.

A change (create, update, revoke) is, in this order: a ``consent`` or ``consent-revoke`` ledger
entry whose evidence is the Consent's canonical bytes (leaf ``consent`` field: the entry of
the version it supersedes; pseudonym: the patient's), then its row in the consent store, then
the attempt entry. The store is derived from the ledger: before every decision, and before
every operation of this API reads the store (:meth:`ConsentService.store`), the registry
compares the ledger's consent position with its own and records whatever consent entries the
store lacks (:meth:`ConsentRegistry.sync`). So once the ledger entry has committed, every
replica's next request enforces it, also when the process that appended it died before its
store write. Concurrent updates of one consent are numbered by ledger order; ``If-Match``
makes an update conditional on the version the client read.

Operations and their rules are in :mod:`middleware.consent.operations`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from middleware.auth.identity import Identity
from middleware.consent.access import Operation, patient_caller, performer
from middleware.consent.callers import caller_tag
from middleware.consent.decide import Defaults
from middleware.consent.keyrecord import KeyEnrolment, SignatureMode
from middleware.consent.limits import DEFAULT_LIMITS, ConsentLimits
from middleware.consent.records import attempt_evidence
from middleware.consent.registry import ConsentRegistry
from middleware.consent.serial import KeyedLocks
from middleware.errors import GatewayError, ServiceUnavailable
from middleware.fhir.outcome import FHIR_JSON, render_error
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind, new_pseudonym
from middleware.logging import get_logger
from middleware.storage.consent_base import ConsentStore
from middleware.storage.ledger_base import LogStore

__all__ = [
    "AUDIT_HEADER",
    "Call",
    "ConsentService",
    "Handler",
    "Ledger",
    "Reply",
    "Result",
    "Trail",
    "UnexpectedFailure",
]

#: Response header naming the ledger index of the attempt entry.
AUDIT_HEADER: Final = "x-consentry-audit-index"


class UnexpectedFailure(GatewayError):
    """The answer to a failure nobody foresaw: 500, no detail (the log and the ledger entry
    name the exception's class, never its message)."""

    status = 500
    code = "exception"


class Ledger(Protocol):
    """What the consent API needs of :class:`~middleware.ledger.service.LedgerService`."""

    async def append(self, entry: NewEntry) -> int: ...

    async def store(self) -> LogStore: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One routed consent API request. ``signature`` is ``(public key, signature)`` from the
    detached-signature headers; ``if_match`` the raw ``If-Match`` value; ``request_id`` the
    request's ``X-Request-Id`` (:func:`~middleware.proxy.headers.request_id`)."""

    operation: Operation
    consent_id: str | None = None
    version: str | None = None
    body: bytes = b""
    query: tuple[tuple[str, str], ...] = ()
    signature: tuple[bytes, bytes] | None = None
    if_match: str | None = None
    self_link: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to send: status, headers (lower-case names), body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(slots=True)
class Trail:
    """What an operation learned, for its attempt record: acting as whom, on which consent of
    which patient, the consent entry it made and the signature it verified."""

    acting_as: str | None = None
    consent_id: str | None = None
    patient: str | None = None
    consent_entry: int | None = None
    version: int | None = None
    signature: dict[str, str] | None = None


#: What an operation returns: status, headers (lower-case names), body bytes (JSON).
Result = tuple[int, list[tuple[str, str]], bytes]
Handler = Callable[["ConsentService", Identity, Call, Trail], Awaitable[Result]]


class ConsentService:
    """Owns the consent store (opened on first need, then caught up with the ledger) and the
    registry; ``wall_clock`` is seconds since the epoch (ledger times, decision time);
    ``caller_keys`` gives a chain's audit evidence key (created on first use), from which a
    patient caller's tag is derived (:mod:`middleware.consent.callers`): without it, an
    attempt on another patient's chain names nothing of the caller."""

    def __init__(
        self,
        ledger: Ledger,
        open_store: Callable[[], Awaitable[ConsentStore]],
        *,
        admin_role: str,
        defaults: Defaults,
        base_url: str,
        receipt_base: str,
        wall_clock: Callable[[], float] = time.time,
        limits: ConsentLimits = DEFAULT_LIMITS,
        caller_keys: Callable[[bytes], Awaitable[bytes]] | None = None,
        signatures: SignatureMode = "off",
        key_enrolment: KeyEnrolment = "admin",
    ) -> None:
        self.ledger = ledger
        # "patient-key": every change is signed by the patient's registered key (signers.py).
        self.signatures: SignatureMode = signatures
        self.serial = KeyedLocks()  # one change at a time per consent id (serial.py)
        # Who makes a patient's first key registration: "admin" or also "patient" (signers.py).
        self.key_enrolment: KeyEnrolment = key_enrolment
        # A chain's audit evidence key, created on first use (audit.evidence.PatientKeys.key):
        # what a patient caller's tag is derived from. Without it an attempt on another
        # patient's chain names nothing of the caller.
        self._caller_keys = caller_keys
        self.limits = limits  # what a written Consent may hold (create, update)
        self._open_store = open_store
        self.admin_role = admin_role
        self.defaults = defaults
        self.base_url = base_url.rstrip("/")
        self.receipt_base = receipt_base.rstrip("/")
        self.wall_clock = wall_clock
        self._store: ConsentStore | None = None
        self._registry: ConsentRegistry | None = None
        self._lock = asyncio.Lock()
        self._log = get_logger("consentry.consent")

    async def registry(self) -> ConsentRegistry:
        """The registry over the opened store; the first call opens the store and records
        every consent entry of the ledger the store lacks (:meth:`ConsentRegistry.sync`)."""
        if self._registry is not None:
            return self._registry
        async with self._lock:
            if self._registry is None:
                log = await self.ledger.store()
                store = self._store or await self._open_store()
                self._store = store
                registry = ConsentRegistry(store, log)
                await registry.sync()
                if registry.repaired:
                    self._log.info(
                        "consent index caught up with the ledger", consents=registry.repaired
                    )
                self._registry = registry
        return self._registry

    async def aclose(self) -> None:
        """Close the consent store if it was opened (idempotent)."""
        store, self._store, self._registry = self._store, None, None
        if store is not None:
            await store.close()

    async def store(self) -> ConsentStore:
        """The opened consent store, holding every consent entry the ledger holds now
        (:meth:`ConsentRegistry.sync`): what an operation reads (``If-Match``, history,
        search) is what the ledger says."""
        registry = await self.registry()
        await registry.sync()
        return registry.store

    def receipt_url(self, index: int) -> str:
        """Where the ledger receipt of entry ``index`` is served."""
        return f"{self.receipt_base}/ledger/receipt/{index}"

    async def handle(self, identity: Identity, call: Call, handler: Handler) -> Reply:
        """Run ``handler``, record the attempt (see the module docstring), build the reply."""
        trail = Trail(consent_id=call.consent_id)
        try:
            status, headers, body = await handler(self, identity, call, trail)
        except GatewayError as error:
            if isinstance(error, ServiceUnavailable):
                raise  # the store or ledger is down: the attempt cannot be recorded either
            # Our diagnostics never hold PHI; validation issues may quote the submitted
            # resource, so only their number is recorded.
            reason = f"{len(error.issues)} problems" if error.issues else error.diagnostics
            index = await self._attempt(identity, call, trail, error.status, reason)
            return _refusal(error, index)
        except Exception as exc:  # noqa: BLE001 - a bug is recorded and refused, never released
            return await self.unexpected(identity, call, exc, trail)
        index = await self._attempt(identity, call, trail, status, None)
        if not any(name == "content-type" for name, _ in headers):
            headers = [("content-type", FHIR_JSON), *headers]
        headers = [*headers, ("cache-control", "no-store"), (AUDIT_HEADER, str(index))]
        return Reply(status, tuple(headers), body)

    async def unexpected(
        self, identity: Identity, call: Call, exc: Exception, trail: Trail | None = None
    ) -> Reply:
        """The 500 refusal of ``call`` after ``exc``, an exception nobody foresaw, recorded
        as an attempt first; raises :class:`ServiceUnavailable` (503) when that record
        cannot be made."""
        kind = type(exc).__name__
        # The class name only: an exception's message may quote the request or stored data.
        self._log.error(
            "consent operation failed",
            request_id=call.request_id,
            interaction=call.operation,
            error_type=kind,
        )
        try:
            index = await self._attempt(
                identity,
                call,
                trail or Trail(consent_id=call.consent_id),
                500,
                f"internal error: {kind}",
            )
        except ServiceUnavailable:
            raise
        except Exception as failure:  # the record is what failed: fail closed
            raise ServiceUnavailable("the attempt could not be recorded") from failure
        return _refusal(UnexpectedFailure("internal error"), index)

    async def _attempt(
        self, identity: Identity, call: Call, trail: Trail, status: int, reason: str | None
    ) -> int:
        # On the chain of the patient the operation concerns (if they have one); else, for
        # a patient caller, on their own, started now if need be: the evidence does not name
        # them (performer), so the pseudonym is what ties the attempt to them, and their
        # shred clears it. A patient caller's attempt about another patient (refused) names
        # the caller's tag instead, derived from their own chain's evidence key, so that
        # patient's trail tells who tried while the caller exists, and nothing links it to
        # them once their shred deleted the key (consent.callers: their chain's pseudonym
        # would stay linked by the shred's tombstone). One pseudonym per verified patient:
        # bounded.
        pseudonym = tag = None
        caller = patient_caller(identity)
        own = caller is not None and trail.patient in (None, caller)
        if trail.patient is not None:
            pseudonym = await (await self.store()).pseudonym(trail.patient)
            if caller is not None and caller != trail.patient and self._caller_keys is not None:
                chain = await (await self.store()).pseudonym_for(caller, new_pseudonym())
                tag = caller_tag(await self._caller_keys(chain))
        elif caller is not None:
            pseudonym = await (await self.store()).pseudonym_for(caller, new_pseudonym())
        evidence = attempt_evidence(
            operation=call.operation,
            status=status,
            principal=performer(identity, tag=tag, own=own),
            acting_as=trail.acting_as,
            consent_id=trail.consent_id,
            consent_entry=trail.consent_entry,
            version=trail.version,
            signature=trail.signature,
            reason=reason if status >= 400 else None,
            request_id=call.request_id or None,
        )
        entry = NewEntry.create(
            EntryKind.ADMIN,
            evidence,
            recorded_us=self.now_us(),
            pseudonym=pseudonym,
            consent=trail.consent_entry,
            flags=EntryFlag.PERMIT if status < 400 else EntryFlag.NONE,
        )
        return await self.ledger.append(entry)

    def now_us(self) -> int:
        """The wall clock in microseconds since the epoch (ledger recorded times)."""
        return int(self.wall_clock() * 1_000_000)


def _refusal(error: GatewayError, index: int) -> Reply:
    """The rendered refusal of ``error`` naming its attempt entry ``index``."""
    status, raw, body = render_error(error)
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    return Reply(status, (*pairs, (AUDIT_HEADER, str(index))), body)
