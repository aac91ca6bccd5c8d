"""Recording one consent entry: the ledger first, then the consent store (the store is
rebuilt from the ledger, :mod:`middleware.consent.service`). Consent changes
(:mod:`middleware.consent.changes`) and key registrations (:mod:`middleware.consent.signers`)
record through :func:`record_entry`."""

from __future__ import annotations

from middleware.consent.service import ConsentService, Trail
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, new_pseudonym
from middleware.storage.consent_base import ConsentRecord

__all__ = ["record_entry"]


async def record_entry(
    svc: ConsentService,
    trail: Trail,
    kind: EntryKind,
    data: bytes,
    *,
    consent_id: str,
    patient: str,
    status: str,
    previous: ConsentRecord | None,
) -> ConsentRecord:
    """Append ``data`` (canonical bytes) to the ledger as a ``kind`` entry of
    ``patient``, linked to the ``previous`` record of the same id, then record it in the
    store (ledger first: the store is rebuilt from the ledger); the trail names both."""
    store = await svc.store()
    pseudonym = await store.pseudonym_for(patient, new_pseudonym())
    recorded_us = svc.now_us()
    entry = NewEntry.create(
        kind,
        data,
        recorded_us=recorded_us,
        pseudonym=pseudonym,
        consent=None if previous is None else previous.ledger_index,
    )
    index = await svc.ledger.append(entry)
    record = await store.record(
        ConsentRecord(
            ledger_index=index,
            consent_id=consent_id,
            patient=patient,
            status=status,
            revoked=kind is EntryKind.CONSENT_REVOKE,
            recorded_us=recorded_us,
            data=data,
        )
    )
    trail.consent_entry, trail.version = index, record.version
    return record
