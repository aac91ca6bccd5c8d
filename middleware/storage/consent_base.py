"""The consent store contract: patient pseudonyms and an index of the Consents on the ledger.

The ledger is the source of truth for consents: each version of a Consent is the evidence of
a ``consent`` or ``consent-revoke`` entry. This store holds what the gateway must find without
scanning the ledger, and nothing that cannot be rebuilt from it
(:func:`middleware.consent.rebuild.rebuild_from_ledger`):

=================  ================================================================  ==========
table              holds                                                             rebuilt
=================  ================================================================  ==========
``chains``         lookup -> 16 random bytes (the ledger chain's name); the lookup   from leaf
                   is a keyed digest of the patient reference (:func:`lookup_of`)    + evidence
``versions``       one row per recorded Consent version: ledger index, consent id,   from
                   version, patient, status, revoked?, recorded time, the evidence   evidence
``scan``           the one row: the ledger size up to which the ledger was scanned   by a scan
=================  ================================================================  ==========

SQL backends prefix the tables ``consentry_consent_``. The pseudonym is random
(:func:`middleware.ledger.leaf.new_pseudonym`) and never derived from the reference: this
table is the only link between a patient and their chain, so deleting a row
(:meth:`ConsentStore.forget`) unlinks them. The table never holds the patient reference: a row
is found by ``lookup_of(lookup_key, patient)``, an HMAC under a key derived from the ledger key
(``derive_box_key(ledger key, "pseudonyms")``), so a dump of the database names nobody and
nobody without the ledger key can test a guessed reference against it. Nothing needs the
reverse direction (pseudonym -> patient): every caller starts from a patient reference. A
table of the previous format (``consentry_consent_pseudonyms``, plain references) is migrated
when a store opens, in one transaction, and dropped.

Every backend (memory, SQLite, PostgreSQL) honours this contract; one behaviour suite
(``tests/contract/test_consent_store.py``) runs on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from middleware.ledger.signing import keyed_digest

__all__ = ["LOOKUP_PURPOSE", "ConsentRecord", "ConsentStore", "PatientMark", "lookup_of"]

#: The ``derive_box_key`` purpose of the pseudonym table's lookup key.
LOOKUP_PURPOSE: Final = "pseudonyms"
_LOOKUP_LABEL: Final = b"consentry/consent/pseudonym-lookup/v1"


def lookup_of(lookup_key: bytes, patient: str) -> bytes:
    """The 32-byte lookup of ``patient`` (``Patient/<id>``) in the pseudonym table: HMAC-SHA256
    under ``lookup_key`` (32 bytes) of a domain label and the reference's UTF-8 bytes
    (:func:`~middleware.ledger.signing.keyed_digest`). A key of the wrong size raises
    :class:`~middleware.ledger.errors.MalformedError`."""
    return keyed_digest(lookup_key, [_LOOKUP_LABEL, patient.encode("utf-8")])


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One recorded version of a Consent.

    ``ledger_index`` is the entry whose evidence is ``data`` (the Consent's canonical bytes,
    exactly as committed); ``revoked`` says the entry is a ``consent-revoke``. ``patient`` is
    ``Patient/<id>``. ``version`` is the record's 1-based position among the records of
    ``consent_id`` in ledger order; the store assigns it (a record handed in carries 0).
    """

    ledger_index: int
    consent_id: str
    patient: str
    status: str
    revoked: bool
    recorded_us: int
    data: bytes
    version: int = 0


@dataclass(frozen=True, slots=True)
class PatientMark:
    """What changes whenever a consent of a patient is recorded: the number of records and the
    highest ledger index among them (None when there are none).

    The count matters as well as the index: two replicas may record ledger entries 10 and 11
    in the order 11, 10, and only the count tells the second insert apart."""

    count: int
    latest: int | None


class ConsentStore(Protocol):
    """Pseudonyms and the consent index (see the module docstring).

    Contract:

    - :meth:`pseudonym_for` is atomic across processes: of two concurrent callers for one
      patient, both get the pseudonym that was stored first. A pseudonym is never replaced;
      it is only removed, by :meth:`forget`.
    - Every backend is opened with a 32-byte lookup key and stores the pseudonym under
      :func:`lookup_of`, never under the reference: stores opened with different keys on one
      database do not see each other's pseudonyms.
    - :meth:`record` is idempotent by ledger index: recording an index already present changes
      nothing and returns the stored record. It numbers versions by ledger order even when
      records arrive out of order (later versions are renumbered in the same transaction).
    - Reads see only committed writes; every method raises
      :class:`~middleware.errors.ServiceUnavailable` when the database cannot be reached.
    - :meth:`close` is idempotent.
    """

    name: str

    def lookup(self, patient: str) -> bytes:
        """``lookup_of(lookup key, patient)``: the patient's row key in the pseudonym table,
        and the link a shred keeps in its tombstones (``LogStore.shredded_chains``)."""
        ...

    async def pseudonym(self, patient: str) -> bytes | None:
        """The pseudonym of ``patient``, or None if it has none yet."""
        ...

    async def pseudonym_for(self, patient: str, candidate: bytes) -> bytes:
        """The pseudonym of ``patient``, storing ``candidate`` (16 random bytes) if it has
        none; returns whichever is stored."""
        ...

    async def forget(self, patient: str) -> bool:
        """Delete the pseudonym row of ``patient`` (the crypto-shred's unlinking step); True if
        there was one. The patient's next :meth:`pseudonym_for` stores a fresh pseudonym: a new
        chain, unlinked from the shredded one. The consent versions are kept (:meth:`erase`
        deletes them)."""
        ...

    async def erase(self, patient: str) -> tuple[int, ...]:
        """Delete every recorded version whose patient is ``patient`` (the crypto-shred's
        consent step: the rows hold the reference and the Consent in the clear); returns the
        ledger indexes of the versions deleted, ascending (empty when there were none). The
        pseudonym row stays (:meth:`forget` removes it). Afterwards :meth:`for_patient` and
        :meth:`mark` see no consent of the patient, :meth:`current` and :meth:`history` none
        of the consents erased, and :meth:`recorded` none of those indexes. SQLite overwrites
        the deleted bytes (``secure_delete``) and truncates the WAL; PostgreSQL keeps the dead
        tuples until VACUUM."""
        ...

    async def record(self, record: ConsentRecord) -> ConsentRecord:
        """Store ``record`` (see the contract) and return it with its version."""
        ...

    async def current(self, consent_id: str) -> ConsentRecord | None:
        """The latest version of ``consent_id``, or None."""
        ...

    async def version(self, consent_id: str, version: int) -> ConsentRecord | None:
        """Version ``version`` of ``consent_id``, or None."""
        ...

    async def history(self, consent_id: str) -> list[ConsentRecord]:
        """Every version of ``consent_id``, oldest first (empty if unknown)."""
        ...

    async def for_patient(self, patient: str) -> list[ConsentRecord]:
        """The latest version of each consent of ``patient``, by ascending ledger index."""
        ...

    async def mark(self, patient: str) -> PatientMark:
        """The patient's :class:`PatientMark`: one indexed query, asked before every use of a
        cached policy set."""
        ...

    async def recorded(self, indexes: Sequence[int]) -> frozenset[int]:
        """Those of the ledger ``indexes`` that have a record (any number of them; one query
        per thousand or so)."""
        ...

    async def scanned(self) -> int:
        """The ledger size up to which a scan has recorded every consent entry (0 at first)."""
        ...

    async def set_scanned(self, size: int) -> None:
        """Raise the scanned size to ``size`` (a lower value is ignored)."""
        ...

    async def ping(self) -> None:
        """Return when the store can serve now; raise ``ServiceUnavailable`` otherwise."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...
