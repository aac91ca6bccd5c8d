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

The no-consent default is not enough after a shred: under ``opt-out`` it permits, so a patient
who had opted out would be released the moment their consent was erased. A patient whose
chain a shred tombstoned (``LogStore.shredded_chains`` of their lookup, the link the shred
keeps) and who has recorded no consent since is judged by :func:`erased_policy` instead: it
denies every consent action but ``collect``, which is what the ``opt-in`` default does, so
under opt-in nothing changes and under opt-out the patient's data stays closed until they
record a new consent.

Last, the shred appends its *marker* on the patient's chain: a ``consent-revoke`` entry
whose evidence is the shred's record (:func:`is_shred_marker`). It moves the ledger's
consent position, which every consent registry reads before deciding, so a running gateway
(any process on the store) re-reads the patient's consents at its next request instead of
enforcing the erased ones from memory. It records nothing and blocks nobody. A real consent
entry's evidence is a Consent (``resourceType``), so no Consent passes for a marker. A
gateway of an earlier version finds it unrecordable and keys it by its pseudonym, which the
shred has forgotten: it blocks nobody there either, and the moved position still makes that
gateway recompile the patient.
"""

from __future__ import annotations

from typing import Final

from middleware.consent.model import DENY, CodingSet, Policy, Provision
from middleware.fhir import jsoncodec
from middleware.ledger.leaf import EntryKind, Leaf, decode_leaf
from middleware.storage.ledger_base import LogStore

__all__ = [
    "ERASED_CONSENT",
    "SHRED_TYPE",
    "erased_policy",
    "is_shred_evidence",
    "is_shred_marker",
    "is_shred_record",
    "shredded_entry",
]

#: The ``type`` of a shred's admin evidence.
SHRED_TYPE: Final = "consentry/audit-shred"
#: The consent id :func:`erased_policy` carries (in traces and the audit facts' consents).
ERASED_CONSENT: Final = "erased-by-shred"
_ACTION: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
#: Every FHIR consentaction but ``collect`` (R4 and R5 share the code system).
_CLOSED: Final = CodingSet.of((_ACTION, code) for code in ("access", "use", "disclose", "correct"))


def erased_policy(patient: str) -> Policy:
    """The policy of ``patient`` (``Patient/<id>``) once a shred erased their consents and
    none was recorded since (module docstring): active, no base decision, one provision
    denying ``access``, ``use``, ``disclose`` and ``correct``; ``collect`` falls to the
    defaults. No ledger index: no entry holds it."""
    deny = Provision(path="Consent.provision[0]", effect=DENY, actions=_CLOSED)
    root = Provision(path="Consent", effect=None, children=(deny,))
    return Policy(ERASED_CONSENT, patient, "active", "R5", None, root)


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


def is_shred_marker(leaf: Leaf, data: bytes | None) -> bool:
    """Whether ``leaf`` (with evidence ``data``) is a shred's marker (module docstring): a
    ``consent-revoke`` entry whose evidence is a shred's record, not a resource."""
    if leaf.kind is not EntryKind.CONSENT_REVOKE or data is None:
        return False
    try:
        value = jsoncodec.decode(data)
    except jsoncodec.DecodeError:
        return False
    return is_shred_record(value)


def is_shred_record(value: object) -> bool:
    """Whether decoded evidence ``value`` is a shred's record, not a resource: a JSON object
    of ``type`` :data:`SHRED_TYPE` without ``resourceType`` (a marker's evidence, for a
    caller that has decoded it already)."""
    return (
        isinstance(value, dict) and value.get("type") == SHRED_TYPE and "resourceType" not in value
    )
