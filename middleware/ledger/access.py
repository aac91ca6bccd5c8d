"""Who may read a ledger leaf's contents: a pure decision over the verified :class:`Identity`.

A leaf is PHI-free, but not anonymous: its pseudonym is stable per patient, its time is exact
to the microsecond and its kind and flags say *disclosure*, *consent-revoke* or
*break-the-glass*. Whoever can list leaves and links one of them to a person (a receipt seen
over a shoulder, a visit at a known minute) can follow that person's whole history through the
pseudonym and the ``previous`` chain. So the ``/ledger`` API serves anonymously only what a
verifier needs, which links nobody: signed checkpoints, consistency proofs and inclusion
proofs made of hashes (:mod:`middleware.ledger.http`). Leaf *contents* (``/ledger/entries``,
the leaf carried in a receipt) are served to a verified token only, by this table:

==================  ======================================================  ==================
reader              token                                                   leaves it may read
==================  ======================================================  ==================
auditor             the ``ledger_auditor_role`` role *and* a ``user/`` or    every leaf (and the
                    ``system/`` scope granting ``AuditEvent.r``             entry listing)
consent admin       the ``consent_admin_role`` role *and* a ``user/`` or     ``consent`` and
                    ``system/`` scope granting ``Consent.r`` (as the         ``consent-revoke``
                    consent API asks to read a consent)                    leaves
patient             a patient-context token (launch patient) with           the patient's own
                    ``patient/Consent.r``                                   consent leaves
patient             ... with ``patient/AuditEvent.r``                       every leaf of the
                                                                            patient's own
==================  ======================================================  ==================

The role is the person's authority, the scope the client's: both must agree, as for the
consent API (:mod:`middleware.consent.access`). "Own" means the leaf's pseudonym is the one
the consent store holds for ``Patient/<launch patient>``: the reader never learns any other
patient's pseudonym. Only the auditor may list leaves; everybody else asks for one receipt by
index, and a receipt of a leaf the reader may not read is refused (403) the same way whether
the leaf names another patient or no patient. Nobody reads evidence here: it stays beside the
log (``consentry ledger export --with-evidence`` is the auditor's way to it).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final, Literal

from middleware.auth.identity import Identity
from middleware.auth.scopes import allows
from middleware.errors import Forbidden
from middleware.ledger.leaf import EntryKind, Leaf

__all__ = [
    "CONSENT_KINDS",
    "DEFAULT_AUDITOR_ROLE",
    "Reader",
    "check_leaf",
    "check_listing",
    "reader_of",
]

DEFAULT_AUDITOR_ROLE: Final = "ledger-auditor"
#: The leaves the consent API hands out receipts for (``X-Consentry-Ledger-Receipt``).
CONSENT_KINDS: Final = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})


@dataclass(frozen=True, slots=True)
class Reader:
    """A caller allowed to read some leaves. ``as_`` says which row of the table it is;
    ``patient`` is ``Patient/<id>`` for a patient (None otherwise); ``kinds`` the leaf kinds
    it may read (None: every kind)."""

    as_: Literal["auditor", "consent-admin", "patient"]
    patient: str | None = None
    kinds: frozenset[EntryKind] | None = None


def reader_of(identity: Identity, *, auditor_role: str, admin_role: str) -> Reader:
    """Which reader ``identity`` is (the first row of the module's table that it satisfies);
    raises :class:`Forbidden` (403) when it is none of them."""
    scopes = identity.scopes
    if auditor_role in identity.roles and _user_or_system(identity, "AuditEvent"):
        return Reader("auditor")
    if admin_role in identity.roles and _user_or_system(identity, "Consent"):
        return Reader("consent-admin", kinds=CONSENT_KINDS)
    if identity.kind == "patient" and identity.patient is not None:
        patient = f"Patient/{identity.patient}"
        if allows(scopes, "patient", "AuditEvent", "r", ()):
            return Reader("patient", patient)
        if allows(scopes, "patient", "Consent", "r", ()):
            return Reader("patient", patient, CONSENT_KINDS)
    raise Forbidden(
        "ledger entries are served to an auditor (role "
        f"{auditor_role} with user/AuditEvent.r), a consent administrator (consent entries) "
        "or the patient they are about (patient/Consent.r or patient/AuditEvent.r)"
    )


def check_listing(reader: Reader) -> None:
    """Raise :class:`Forbidden` unless ``reader`` may list leaves (only an auditor may)."""
    if reader.as_ != "auditor":
        raise Forbidden("only a ledger auditor may list ledger entries")


def check_leaf(reader: Reader, leaf: Leaf, own_pseudonym: bytes | None) -> None:
    """Raise :class:`Forbidden` unless ``reader`` may read ``leaf``. ``own_pseudonym`` is the
    pseudonym the consent store holds for ``reader.patient`` (None: it has none yet); it is
    only consulted for a patient."""
    if reader.kinds is not None and leaf.kind not in reader.kinds:
        raise Forbidden("not allowed to read this ledger entry")
    if reader.as_ == "patient" and (
        own_pseudonym is None
        or leaf.pseudonym is None
        or not hmac.compare_digest(leaf.pseudonym, own_pseudonym)
    ):
        raise Forbidden("not allowed to read this ledger entry")


def _user_or_system(identity: Identity, resource_type: str) -> bool:
    return allows(identity.scopes, "user", resource_type, "r", ()) or allows(
        identity.scopes, "system", resource_type, "r", ()
    )
