"""Who made a consent API attempt about another patient: the caller's pseudonym, resolved.

A patient caller's attempt names none of their accounts (:func:`~middleware.consent.access.
performer`): its evidence is plain text on a chain a shred of the caller does not reach. When
patient A's token tries to read or change patient B's consents (refused), the attempt goes on
B's chain, so B's trail and the compliance officer must still learn that A tried: the
attempt's principal carries A's ledger pseudonym (``patientChain``, hex), 16 random bytes that
say nothing by themselves.

:func:`resolve_chain` maps such a pseudonym back to ``Patient/<id>`` while A exists: the
pseudonym table links a patient to their chain in one direction only (a keyed lookup of the
reference, :mod:`middleware.storage.consent_base`), so a patient is *found* on the chain's
own consent entries (their evidence, the Consent, names its patient) or among ``candidates``
(a suspect the officer names), and *confirmed* only when the table's current pseudonym of
that patient is the one the attempt names. ``consentry audit shred`` forgets A in the table and
erases the evidence of A's consent entries, so afterwards nothing resolves it: the attempt
holds a random value linked to no identity. (The shred keeps one link on purpose, the
tombstone of A's chain under A's keyed lookup, so A's accounting can report shredded
periods: whoever holds the ledger key *and* A's reference can still tell that chain was A's,
as for every leaf on it. The pseudonym table, which this module reads, no longer can.)
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Final

from middleware.consent.access import CALLER_CHAIN
from middleware.consent.records import ATTEMPT_TYPE, consent_keys
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.leaf import PSEUDONYM_SIZE, EntryKind, decode_leaf
from middleware.storage.consent_base import ConsentStore
from middleware.storage.ledger_base import LogStore

__all__ = ["attempt_chain", "resolve_chain"]

_CONSENT_KINDS: Final = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})


def attempt_chain(evidence: bytes) -> bytes | None:
    """The caller's pseudonym an attempt's evidence names (``principal.patientChain``), None
    when it is not an attempt's or names none (the caller is not a patient, or the attempt
    is on their own chain: the entry's pseudonym is theirs)."""
    try:
        record = jsoncodec.decode(evidence, max_depth=STORED_MAX_JSON_DEPTH)
    except jsoncodec.DecodeError:
        return None
    if not isinstance(record, dict) or record.get("type") != ATTEMPT_TYPE:
        return None
    principal = record.get("principal")
    value = principal.get(CALLER_CHAIN) if isinstance(principal, dict) else None
    if not isinstance(value, str) or len(value) != 2 * PSEUDONYM_SIZE:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


async def resolve_chain(
    log: LogStore, consents: ConsentStore, chain: bytes, candidates: Iterable[str] = ()
) -> str | None:
    """``Patient/<id>`` whose current pseudonym is ``chain`` (module docstring): the patient
    named by one of ``candidates`` (``Patient/<id>``, tried first) or by a consent entry of
    the chain, confirmed by the pseudonym table; None when none is (unknown, or forgotten by
    a shred). Reads each leaf of the chain (newest first) and the evidence of its consent
    entries: for the officer's tools, not for a request path."""
    tried: set[str] = set()
    for patient in candidates:
        if patient not in tried:
            tried.add(patient)
            if await _current(consents, patient, chain):
                return patient
    for index in reversed(await log.chain(chain)):
        (raw,) = await log.leaves(index, index + 1)
        if decode_leaf(raw).kind not in _CONSENT_KINDS:
            continue
        stored = await log.evidence(index)
        if stored is None:
            continue
        try:
            keys = consent_keys(jsoncodec.decode(stored.data, max_depth=STORED_MAX_JSON_DEPTH))
        except jsoncodec.DecodeError:
            continue
        if keys is None or keys[2] in tried:
            continue
        tried.add(keys[2])
        if await _current(consents, keys[2], chain):
            return keys[2]
    return None


async def _current(consents: ConsentStore, patient: str, chain: bytes) -> bool:
    """Whether the table's pseudonym of ``patient`` is ``chain`` (constant time)."""
    stored = await consents.pseudonym(patient)
    return stored is not None and hmac.compare_digest(stored, chain)
