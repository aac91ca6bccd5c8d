"""The consent :class:`~middleware.consent.request.Principal` of a verified identity. Pure.

One definition for enforcement (:mod:`middleware.pipeline.caller`) and the consent API's
``$explain`` (which asks about the caller when no principal is given), so both decide the
caller as the same party.
"""

from __future__ import annotations

from middleware.auth.identity import Identity
from middleware.consent.model import Coding
from middleware.consent.request import Principal

__all__ = ["principal_of"]


def principal_of(identity: Identity) -> Principal:
    """The consent :class:`Principal` a verified identity is decided as.

    ``reference`` is its ``fhirUser`` (for a patient-context caller without one, the launch
    patient); its ``memberships`` are the token's memberships claim and its organization
    claim when that is a reference ``Organization/<id>`` (a plain name is no FHIR record a
    consent can name): a consent whose ``provision.actor`` names the organization, care
    team, group or role the caller acts for applies to the caller. A ``fhirUser`` that is a
    PractitionerRole is matched as the reference itself. Memberships the token does not
    carry are looked up upstream only where a consent needs them
    (:mod:`middleware.pipeline.memberships`).
    """
    patient = f"Patient/{identity.patient}" if identity.kind == "patient" else None
    memberships = identity.memberships
    organization = identity.organization
    if organization is not None and organization.startswith("Organization/"):
        memberships = memberships | {organization}
    return Principal(
        reference=identity.fhir_user or patient,
        roles=frozenset(_role(role) for role in identity.roles),
        identifiers=frozenset({(identity.issuer, identity.subject)}),
        memberships=memberships,
        patient=patient,
    )


def _role(role: str) -> Coding:
    """A token role as a Coding: ``system|code`` when it has a system, else code alone."""
    system, sep, code = role.rpartition("|")
    return (system, code) if sep else ("", role)
