"""Who may use the consent API for what: a pure decision over the verified :class:`Identity`.

Two kinds of caller are let in, and nobody else (403):

* **the patient**: a patient-context token (SMART 2.x launch context ``patient`` with
  ``patient/`` scopes, :attr:`Identity.kind` ``patient``) whose scopes grant the operation's
  permission on Consent (``patient/Consent.c`` to create, ``.u`` to update or revoke, ``.r`` to
  read, read a version, read the history or ask for an explanation, ``.s`` to search; ``.u``
  to register the key that signs their consents). It acts
  only on consents of its own patient, ``Patient/<launch patient>``.
* **a consent administrator**: a token carrying the configured role (``consent-admin`` by
  default; the roles claim is set in ``[auth]``) *and* a ``user/`` or ``system/`` scope granting
  the permission on Consent. The role is the person's authority, the scope the client's: both
  must agree. It may act for any patient and is recorded as the performer.

An administrator's rule is checked first, so a token that satisfies both acts as administrator.
Granular scopes (``?category=``) never grant here: consents are not filtered by category.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from middleware.auth.identity import Identity
from middleware.auth.scopes import allows
from middleware.errors import Forbidden

__all__ = [
    "CALLER_CHAIN",
    "CALLER_OWN",
    "CALLER_TAG",
    "DEFAULT_ADMIN_ROLE",
    "OPERATIONS",
    "Acting",
    "Operation",
    "authorize",
    "check_patient",
    "patient_caller",
    "performer",
]

Operation = Literal[
    "create", "update", "revoke", "read", "vread", "history", "search", "explain", "register-key"
]

#: The SMART permission letter each operation needs on Consent.
OPERATIONS: Final[dict[Operation, str]] = {
    "create": "c",
    "update": "u",
    "revoke": "u",
    "read": "r",
    "vread": "r",
    "history": "r",
    "search": "s",
    "explain": "r",
    "register-key": "u",  # the key that signs the patient's consent changes
}
DEFAULT_ADMIN_ROLE: Final = "consent-admin"
#: The attempt principal's field naming a patient caller's *tag* (hex) when the attempt is on
#: another chain than theirs (:func:`performer`, :func:`middleware.consent.callers.caller_tag`).
CALLER_TAG: Final = "patientTag"
#: The attempt principal's field, ``true``, saying the caller is the patient on whose chain the
#: attempt is (or, for an attempt concerning no patient, on their own): the only attempts the
#: officer's listing attributes to the chain's patient (:func:`performer`).
CALLER_OWN: Final = "ownChain"
#: Where attempts written before the tag named the caller's ledger pseudonym in the clear
#: (hex): still read, shown pseudonymous, never resolved.
CALLER_CHAIN: Final = "patientChain"


@dataclass(frozen=True, slots=True)
class Acting:
    """How an authorized caller acts: ``as_`` ``patient`` (then ``patient`` is its
    ``Patient/<id>``) or ``consent-admin`` (``patient`` None: any patient)."""

    as_: Literal["patient", "consent-admin"]
    patient: str | None = None


def authorize(identity: Identity, operation: Operation, *, admin_role: str) -> Acting:
    """How ``identity`` may perform ``operation``; raises :class:`Forbidden` (403) when it may
    not at all. The target patient is checked afterwards with :func:`check_patient`."""
    permission = OPERATIONS[operation]
    scopes = identity.scopes
    if admin_role in identity.roles and (
        allows(scopes, "user", "Consent", permission, ())
        or allows(scopes, "system", "Consent", permission, ())
    ):
        return Acting("consent-admin")
    if (
        identity.kind == "patient"
        and identity.patient is not None
        and allows(scopes, "patient", "Consent", permission, ())
    ):
        return Acting("patient", f"Patient/{identity.patient}")
    raise Forbidden(
        f"not allowed to {operation} consents: needs a patient-context token with "
        f"patient/Consent.{permission}, or the {admin_role} role with user/Consent.{permission}"
    )


def check_patient(acting: Acting, patient: str) -> None:
    """Raise :class:`Forbidden` unless ``acting`` may act for ``patient`` (``Patient/<id>``)."""
    if acting.as_ == "patient" and acting.patient != patient:
        raise Forbidden("a patient may only act on their own consents")


def performer(
    identity: Identity, *, tag: bytes | None = None, own: bool = False
) -> dict[str, object]:
    """Who acted, for the attempt evidence: no token, no scopes, no purpose of use, and
    nothing of a patient. A patient caller (:func:`patient_caller`) is named neither by
    ``fhirUser`` nor by its account (``sub``, ``jti``): the evidence is plain text a shred
    of that patient may not reach (an attempt on another patient's chain, or on none). On
    the caller's own chain (``own``: the entry's pseudonym is theirs) it says so,
    :data:`CALLER_OWN`; on another chain it carries ``tag``, the caller's tag
    (:func:`middleware.consent.callers.caller_tag`, derived from the evidence key the
    caller's shred deletes), as :data:`CALLER_TAG` (hex): the officer's tool names the
    caller by it while they exist, and nothing links it to anyone after their shred.
    ``tag`` and ``own`` are ignored for a caller that is not a patient: they are named by
    their account."""
    patient = patient_caller(identity)
    who: dict[str, object] = {"iss": identity.issuer}
    if patient is not None and tag is not None:
        who[CALLER_TAG] = tag.hex()
    elif patient is not None and own:
        who[CALLER_OWN] = True
    if patient is None:
        who["sub"] = identity.subject
    if identity.client_id is not None:
        who["clientId"] = identity.client_id
    if identity.fhir_user is not None and patient is None:
        who["fhirUser"] = identity.fhir_user
    if identity.roles:
        who["roles"] = sorted(identity.roles)
    if identity.token_id is not None and patient is None:
        who["jti"] = identity.token_id
    return who


def patient_caller(identity: Identity) -> str | None:
    """``Patient/<id>`` when ``identity`` speaks for a patient (a patient-context token whose
    ``fhirUser``, if any, is a Patient, or a ``fhirUser`` that is a Patient), else None; the
    launch patient first. A clinician's EHR-launch token carries a launch patient too, but its
    ``fhirUser`` names the clinician, who acts and must stay named."""
    fhir_user = identity.fhir_user
    patient_user = fhir_user is not None and fhir_user.startswith("Patient/")
    if identity.kind == "patient" and identity.patient is not None:
        if fhir_user is None or patient_user:
            return f"Patient/{identity.patient}"
        return None
    return fhir_user if patient_user else None
