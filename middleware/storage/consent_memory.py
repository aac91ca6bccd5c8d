"""In-memory consent store for tests: the :class:`~middleware.storage.consent_base.ConsentStore`
contract, nothing durable.

Several :class:`MemoryConsentStore` objects may share one :class:`MemoryConsents` (the
"database"), which is how tests model two replicas on one database. Pseudonyms are kept under
:func:`~middleware.storage.consent_base.lookup_of` like the SQL backends' (a store made
without a lookup key uses the database's random one, shared by its stores).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from middleware.errors import ServiceUnavailable
from middleware.ledger.signing import new_box_key
from middleware.storage.consent_base import ConsentRecord, PatientMark, lookup_of

__all__ = ["MemoryConsentStore", "MemoryConsents"]


@dataclass
class MemoryConsents:
    """The tables of a memory consent store; share it between stores to model one database."""

    pseudonyms: dict[bytes, bytes] = field(default_factory=dict)  # lookup -> pseudonym
    records: dict[int, ConsentRecord] = field(default_factory=dict)
    by_consent: dict[str, list[int]] = field(default_factory=dict)
    by_patient: dict[str, list[int]] = field(default_factory=dict)
    scanned: int = 0
    lookup_key: bytes = field(default_factory=new_box_key, repr=False)


class MemoryConsentStore:
    """A consent store in this process; set ``available = False`` to simulate an outage."""

    name = "memory"

    def __init__(
        self, data: MemoryConsents | None = None, *, lookup_key: bytes | None = None
    ) -> None:
        self.data = data if data is not None else MemoryConsents()
        self._key = self.data.lookup_key if lookup_key is None else lookup_key
        lookup_of(self._key, "")  # a key of the wrong size fails here, not on first use
        self.available = True

    def lookup(self, patient: str) -> bytes:
        return lookup_of(self._key, patient)

    async def pseudonym(self, patient: str) -> bytes | None:
        self._check()
        return self.data.pseudonyms.get(lookup_of(self._key, patient))

    async def pseudonym_for(self, patient: str, candidate: bytes) -> bytes:
        self._check()
        return self.data.pseudonyms.setdefault(lookup_of(self._key, patient), candidate)

    async def forget(self, patient: str) -> bool:
        self._check()
        return self.data.pseudonyms.pop(lookup_of(self._key, patient), None) is not None

    async def erase(self, patient: str) -> tuple[int, ...]:
        self._check()
        data = self.data
        erased = tuple(data.by_patient.pop(patient, []))
        for index in erased:
            record = data.records.pop(index)
            indexes = data.by_consent[record.consent_id]
            indexes.remove(index)
            if not indexes:
                del data.by_consent[record.consent_id]
        return erased

    async def record(self, record: ConsentRecord) -> ConsentRecord:
        self._check()
        data = self.data
        if record.ledger_index in data.records:
            return data.records[record.ledger_index]
        indexes = data.by_consent.setdefault(record.consent_id, [])
        indexes.append(record.ledger_index)
        indexes.sort()
        for version, index in enumerate(indexes, start=1):
            stored = data.records.get(index, record)
            data.records[index] = dataclasses.replace(stored, version=version)
        patients = data.by_patient.setdefault(record.patient, [])
        patients.append(record.ledger_index)
        patients.sort()
        return data.records[record.ledger_index]

    async def current(self, consent_id: str) -> ConsentRecord | None:
        self._check()
        indexes = self.data.by_consent.get(consent_id)
        return self.data.records[indexes[-1]] if indexes else None

    async def version(self, consent_id: str, version: int) -> ConsentRecord | None:
        self._check()
        indexes = self.data.by_consent.get(consent_id, [])
        if not 1 <= version <= len(indexes):
            return None
        return self.data.records[indexes[version - 1]]

    async def history(self, consent_id: str) -> list[ConsentRecord]:
        self._check()
        return [self.data.records[i] for i in self.data.by_consent.get(consent_id, [])]

    async def for_patient(self, patient: str) -> list[ConsentRecord]:
        self._check()
        data = self.data
        latest = {data.records[i].consent_id for i in data.by_patient.get(patient, [])}
        found = [data.records[data.by_consent[cid][-1]] for cid in latest]
        return sorted((r for r in found if r.patient == patient), key=lambda r: r.ledger_index)

    async def mark(self, patient: str) -> PatientMark:
        self._check()
        indexes = self.data.by_patient.get(patient, [])
        return PatientMark(len(indexes), indexes[-1] if indexes else None)

    async def recorded(self, indexes: Sequence[int]) -> frozenset[int]:
        self._check()
        return frozenset(i for i in indexes if i in self.data.records)

    async def scanned(self) -> int:
        self._check()
        return self.data.scanned

    async def set_scanned(self, size: int) -> None:
        self._check()
        self.data.scanned = max(self.data.scanned, size)

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        self.available = False

    def _check(self) -> None:
        if not self.available:
            raise ServiceUnavailable("consent store unavailable")
