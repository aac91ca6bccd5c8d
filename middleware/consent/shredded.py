"""Consent entries a crypto-shred erased: how the ledger alone tells them from damage.

``consentry audit shred`` (:mod:`middleware.audit.cli_admin`) first appends, on each of the
patient's pseudonym chains, an ``admin`` entry whose evidence is plain canonical JSON of
``type`` :data:`SHRED_TYPE`; then it removes the evidence of the chains' ``consent`` and
``consent-revoke`` entries (the Consents are PHI in the clear) and erases the patient's rows
in the consent store. A consent entry without evidence is therefore either *shredded* (its
chain carries such an admin entry after it) or missing for another reason (a damaged or
tampered store). The consent registry and the rebuild treat the first as absent (the patient
has no consent on file: the no-consent default applies to them) and keep failing closed on
the second (:mod:`middleware.consent.registry`).
"""

from __future__ import annotations

from typing import Final

from middleware.fhir import jsoncodec
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.storage.ledger_base import LogStore

__all__ = ["SHRED_TYPE", "is_shred_evidence", "shredded_entry"]

#: The ``type`` of a shred's admin evidence.
SHRED_TYPE: Final = "consentry/audit-shred"


async def shredded_entry(log: LogStore, index: int, pseudonym: bytes | None) -> bool:
    """Whether entry ``index`` (its leaf naming ``pseudonym``) lost its evidence to a shred:
    it has no evidence, and a later entry on its chain is a shred's admin entry (kind
    ``admin``, evidence a JSON object of ``type`` :data:`SHRED_TYPE`). False for an entry
    that still has evidence, one naming no pseudonym, and one whose chain records no shred
    after it."""
    if pseudonym is None or await log.evidence(index) is not None:
        return False
    for later in reversed(await log.chain(pseudonym)):
        if later <= index:
            return False
        (raw,) = await log.leaves(later, later + 1)
        if decode_leaf(raw).kind is not EntryKind.ADMIN:
            continue
        stored = await log.evidence(later)
        if stored is not None and is_shred_evidence(stored.data):
            return True
    return False


def is_shred_evidence(data: bytes) -> bool:
    """Whether admin evidence ``data`` is a shred's: a JSON object of ``type``
    :data:`SHRED_TYPE`."""
    try:
        value = jsoncodec.decode(data)
    except jsoncodec.DecodeError:
        return False
    return isinstance(value, dict) and value.get("type") == SHRED_TYPE
