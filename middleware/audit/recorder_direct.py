"""The recorder's direct path: planned entries sealed, indexed and appended to the ledger.

:class:`DirectRecorder` is the part of :class:`~middleware.audit.recorder.AuditRecorder` that
every exchange takes (the outbox path, :mod:`middleware.audit.recorder_outbox`, builds on it):
the patients' pseudonyms and evidence keys, from memory when seen recently, else from their
stores; each entry made by :func:`~middleware.audit.evidence.sealed_entry`; all of one call
appended together. Its state is set by ``AuditRecorder.__init__`` (one factory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Literal, Protocol

from middleware.audit.evidence import NO_PATIENT, PatientKeys, sealed_entry
from middleware.audit.parts import AgentInfo
from middleware.audit.plan import Planned, plan_break_glass
from middleware.audit.ttlcache import TtlCache
from middleware.auth.identity import Identity
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import PSEUDONYM_SIZE, micros_at
from middleware.ledger.signing import new_box_key
from middleware.logging import get_logger

__all__ = ["Appender", "DirectRecorder", "private_keys", "unavailable"]

_NO_PATIENT = bytes(PSEUDONYM_SIZE)


class Appender(Protocol):
    """Where entries go (:class:`~middleware.ledger.service.LedgerService` is one): ``append``
    returns the entry's ledger index once it is durable, or raises."""

    async def append(self, entry: NewEntry) -> int: ...


class DirectRecorder:
    """Entries made and appended (module docstring); see ``AuditRecorder`` for the settings."""

    _ledger: Appender
    _pseudonym_of: Callable[[str], Awaitable[bytes]]
    _gateway: AgentInfo
    _wall_clock: Callable[[], float]
    _clock: Callable[[], float]
    #: patient -> pseudonym, for ``pseudonym_ttl`` seconds after it was fetched
    _cache: TtlCache[str, bytes]
    keys: PatientKeys

    async def _entries(self, plans: list[Planned], rid: str) -> list[NewEntry]:
        """The ledger entries of ``plans``: facts sealed, each with its audit-index row."""
        named = self._named_cached(plans)
        if named is None:  # a patient not seen recently: ask the store
            pseudonyms = await self._pseudonyms(
                rid, [p.facts.patient for p in plans if p.facts.patient]
            )
            named = [
                None if p.facts.patient is None else pseudonyms[p.facts.patient] for p in plans
            ]
        cached = self.keys.cached
        keys: dict[bytes, bytes] = {}
        for name in named:
            pseudonym = name or NO_PATIENT
            if pseudonym not in keys:
                key = cached(pseudonym)
                if key is None:  # a key not in memory: ask the store for every key
                    keys = await self._keys(rid, named)
                    break
                keys[pseudonym] = key
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

    def _named_cached(self, plans: list[Planned]) -> list[bytes | None] | None:
        """The pseudonym of each plan's patient (None: no patient) when every one is cached
        and fresh, else None: what :meth:`_pseudonyms` returns then, without a coroutine."""
        now = self._clock()
        get = self._cache.get
        named: list[bytes | None] = []
        for p in plans:
            patient = p.facts.patient
            if patient is None:
                named.append(None)
                continue
            pseudonym = get(patient, now)
            if pseudonym is None:
                return None
            named.append(pseudonym)
        return named

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
                raise unavailable(request_id, exc) from exc
        results = await asyncio.gather(
            *(self._ledger.append(entry) for entry in entries), return_exceptions=True
        )
        indexes: list[int] = []
        for result in results:
            if isinstance(result, BaseException):
                raise unavailable(request_id, result) from result
            indexes.append(result)
        return indexes

    async def _pseudonyms(self, request_id: str, patients: list[str]) -> dict[str, bytes]:
        """The pseudonym of each of ``patients``, cached ones without I/O, the others asked
        for together. Raises ServiceUnavailable when the store fails or gives a malformed
        one (16 bytes, not all zero)."""
        found: dict[str, bytes] = {}
        missing: list[str] = []
        now = self._clock()
        for patient in dict.fromkeys(patients):
            cached = self._cache.get(patient, now)
            if cached is None:
                missing.append(patient)
            else:
                found[patient] = cached
        if not missing:
            return found
        results = await asyncio.gather(
            *(self._pseudonym_of(patient) for patient in missing), return_exceptions=True
        )
        # Equal lengths by construction: strict= mutants are equivalent.
        for patient, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                raise unavailable(request_id, result) from result
            pseudonym = bytes(result)
            if len(pseudonym) != PSEUDONYM_SIZE or pseudonym == _NO_PATIENT:
                error = ValueError("the pseudonym store returned a malformed pseudonym")
                raise unavailable(request_id, error) from error
            found[patient] = pseudonym
            # As of before the fetch: the expiry never runs later than pseudonym_ttl.
            self._cache.put(patient, pseudonym, now)
        return found

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
                raise unavailable(rid, result) from result
            found[pseudonym] = result
        return found


def private_keys() -> PatientKeys:
    """Evidence keys held by this process alone (a recorder built without a key store)."""
    table: dict[bytes, bytes] = {}

    async def audit_key(pseudonym: bytes, candidate: bytes) -> bytes:
        return table.setdefault(pseudonym, candidate)

    return PatientKeys(audit_key, new_box_key())


def unavailable(request_id: str, cause: BaseException) -> ServiceUnavailable:
    """The error a record call raises, logged with the request id and the error's type only:
    never a patient, a reference or request text."""
    # equivalent mutants (name): our log lines do not render a logger name
    get_logger("consentry.audit").error(
        "audit trail unavailable",
        request_id=request_id,
        error_type=type(cause).__name__,
    )
    return ServiceUnavailable("audit trail unavailable")
