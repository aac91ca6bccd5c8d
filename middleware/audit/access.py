"""Who may read the audit trail over FHIR (ITI-81 search, read, ``$accounting``, bulk export).

A pure decision over the verified :class:`~middleware.auth.identity.Identity`, in the manner
of the ledger's own table (:mod:`middleware.ledger.access`): the person's authority (a role)
and the client's (a SMART scope) must agree.

========  ===================================================  ================================
reader    token                                                what it reads
========  ===================================================  ================================
auditor   the ``audit_role`` role *and* a ``user/`` or          every event; the only reader of
          ``system/`` scope granting ``AuditEvent`` (``r`` to   bulk exports
          read, ``s`` to search or export)
patient   a patient-context token (launch patient) with         the events about its own record
          ``patient/AuditEvent`` (``r``/``s``)                  ("who looked at my record") and
                                                                its own accounting
========  ===================================================  ================================

Everybody else is refused with 403; a request without a valid token never gets here (401).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from middleware.auth.identity import Identity
from middleware.auth.scopes import allows
from middleware.errors import Forbidden

__all__ = ["AuditReader", "audit_reader"]

Permission = Literal["r", "s"]


@dataclass(frozen=True, slots=True)
class AuditReader:
    """A caller allowed to read audit events: ``patient`` is ``Patient/<id>`` for a patient
    reader (whose every search is pinned to it), None for an auditor."""

    as_: Literal["auditor", "patient"]
    patient: str | None = None


def audit_reader(identity: Identity, *, role: str, permission: Permission) -> AuditReader:
    """Which reader ``identity`` is (module table), or raise :class:`Forbidden`."""
    scopes = identity.scopes
    if role in identity.roles and (
        allows(scopes, "user", "AuditEvent", permission, ())
        or allows(scopes, "system", "AuditEvent", permission, ())
    ):
        return AuditReader("auditor")
    if (
        identity.kind == "patient"
        and identity.patient is not None
        and allows(scopes, "patient", "AuditEvent", permission, ())
    ):
        return AuditReader("patient", f"Patient/{identity.patient}")
    # The message names no role: which role makes an auditor is configuration, and a caller
    # refused is not told what to claim.
    raise Forbidden(
        "the audit trail is served to auditors and to the patient it is about"
        f" (patient/AuditEvent.{permission})"
    )
