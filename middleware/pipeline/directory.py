"""Who may write the records consent memberships are read from.

A consent may name an organization, a practitioner role, a care team or a group
(:mod:`~middleware.pipeline.memberships`), and whether a caller is one of them is read by the
gateway from the upstream (:mod:`~middleware.proxy.membership_reads`): a Practitioner's
PractitionerRoles (``practitioner``, ``organization``, ``active``, ``period``), an
Organization's ``partOf``, a CareTeam's participants, a Group's members, a Person's links.
A caller that could change those records through the gateway could take itself out of a
denied organization (end its role, point it elsewhere, delete it, detach a department from
its hospital) or put itself into a permitted care team, and read what a patient's consent
refused it once the membership cache lets go. So the writes of :data:`DIRECTORY_TYPES`
(create, update, patch, delete, their conditional forms, and the same as entries of a batch
or transaction) are refused (403) to every caller but one holding the configured directory
administrator role (``directory_admin_role``; none by default: nobody writes the directory
through the gateway, it is kept on the FHIR server by its own administrators).

The guard is added to the write's other checks, never in their place: a CareTeam or Group
that is in a patient's compartment (FHIR R4 compartmentdefinition-patient) is still decided
by that patient's consents, for an administrator too.

Not guarded, because no membership is read from them: ``Practitioner`` (a practitioner's
roles, and a role's practitioner, are read from PractitionerRole, which is guarded) and
``RelatedPerson`` (a RelatedPerson caller is itself, named by its token; which RelatedPerson a
Person user acts as is the Person's ``link``, guarded). A type the directory starts reading
must be added here. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from middleware.errors import Forbidden
from middleware.pipeline.caller import Caller

__all__ = ["DIRECTORY_TYPES", "REFUSED", "DirectoryGuard"]

#: The resource types the memberships directory reads (module docstring).
DIRECTORY_TYPES: Final = frozenset(
    {"CareTeam", "Group", "Organization", "Person", "PractitionerRole"}
)
#: The refusal's text: it names the rule, never the record.
REFUSED: Final = "the records consent memberships are read from cannot be written here"
#: The SMART contexts an administrator acts in: a patient-context launch writes for its
#: patient, never the directory.
_ADMIN_CONTEXTS: Final = frozenset({"user", "system"})


@dataclass(frozen=True, slots=True)
class DirectoryGuard:
    """Refuses writes of the directory (module docstring) to callers without
    ``admin_role`` (a role of the token's roles claim, held in a ``user`` or ``system``
    context); an empty ``admin_role`` refuses them to every caller."""

    admin_role: str = ""

    def admits(self, caller: Caller) -> bool:
        """True when ``caller`` may write the directory."""
        return (
            bool(self.admin_role)
            and caller.context in _ADMIN_CONTEXTS
            and self.admin_role in caller.identity.roles
        )

    def check(self, caller: Caller, *types: object) -> None:
        """Raise :class:`Forbidden` when one of ``types`` (the write's resource type as its
        URL names it and, where there is one, as its body does; anything else is ignored) is
        a directory type and ``caller`` may not write the directory. Returns ``None`` when
        the write may go on to its other checks."""
        for rtype in types:
            if isinstance(rtype, str) and rtype in DIRECTORY_TYPES:
                if not self.admits(caller):
                    raise Forbidden(REFUSED)
                return
