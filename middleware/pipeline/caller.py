"""Who is asking, in the terms the enforcement stages use, and what their scopes let them try.

:func:`caller_of` turns a verified :class:`~middleware.auth.identity.Identity` into a
:class:`Caller`: the consent :class:`~middleware.consent.request.Principal`, the purposes of
use, the SMART context whose scopes count (``patient``, ``user`` or ``system``: the one
:attr:`Identity.kind` names, never a mix), and the binding string paging cursors are sealed to.

Scopes are checked twice: :func:`check_interaction` before anything is forwarded (the caller
holds *some* scope granting the interaction's permission on the type: SMART App Launch 2.x,
"Scopes for requesting clinical data"), and :meth:`Caller.may_see` on every resource of an
answer (an ``_include`` of another type, a version in a history Bundle, a resource whose
category a granular scope excludes). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from middleware.auth.identity import Identity
from middleware.auth.scopes import ContextKind, allows, candidate_scopes
from middleware.consent.model import Coding
from middleware.consent.principals import principal_of
from middleware.consent.request import Principal
from middleware.errors import Forbidden
from middleware.fhir.request import FhirRequest, Interaction
from middleware.recent import RecentByIdentity

__all__ = [
    "ACTION_ACCESS",
    "ACTION_COLLECT",
    "ACTION_CORRECT",
    "Caller",
    "caller_of",
    "check_interaction",
    "permission_for",
]

_CONSENT_ACTION: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
#: FHIR consentaction codes the gateway asks consents about: reading is ``access``, creating
#: is ``collect``, changing or deleting what exists is ``correct``.
ACTION_ACCESS: Final[Coding] = (_CONSENT_ACTION, "access")
ACTION_COLLECT: Final[Coding] = (_CONSENT_ACTION, "collect")
ACTION_CORRECT: Final[Coding] = (_CONSENT_ACTION, "correct")

#: SMART 2.x permission letter per interaction (c create, r read, u update, d delete,
#: s search). History of one instance reads it; history of a type or the system searches.
_PERMISSIONS: Final = {
    Interaction.READ: "r",
    Interaction.VREAD: "r",
    Interaction.HISTORY_INSTANCE: "r",
    Interaction.SEARCH_TYPE: "s",
    Interaction.SEARCH_SYSTEM: "s",
    Interaction.SEARCH_COMPARTMENT: "s",
    Interaction.HISTORY_TYPE: "s",
    Interaction.HISTORY_SYSTEM: "s",
    Interaction.CREATE: "c",
    Interaction.UPDATE: "u",
    Interaction.PATCH: "u",
    Interaction.DELETE: "d",
    Interaction.OPERATION: "r",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller as the pipeline sees it (see the module docstring).

    ``patient`` is ``Patient/<id>`` of the launch context for a patient-context caller, else
    None; ``binding`` names issuer, subject and client for cursor binding.
    """

    identity: Identity
    principal: Principal
    purposes: frozenset[Coding]
    context: ContextKind
    patient: str | None
    binding: str

    @property
    def purpose_key(self) -> tuple[str, ...]:
        """The purposes of use as ``system|code`` strings (cursor binding)."""
        return tuple(sorted(f"{system}|{code}" for system, code in self.purposes))

    def may(self, resource_type: str, permission: str) -> bool:
        """True when some scope of the caller's context grants ``permission`` on the type,
        granular constraints not yet checked (see :func:`candidate_scopes`)."""
        scopes = self.identity.scopes
        return bool(candidate_scopes(scopes, self.context, resource_type, permission))

    def may_see(self, resource: Mapping[str, Any]) -> bool:
        """True when the caller's scopes let it read or search this resource, its categories
        tested against granular scopes (SMART 2.x ``?category=``)."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return False
        categories = frozenset(_categories(resource.get("category")))
        scopes = self.identity.scopes
        return allows(scopes, self.context, rtype, "r", categories) or allows(
            scopes, self.context, rtype, "s", categories
        )


def _make_caller(identity: Identity) -> Caller:
    kind = identity.kind
    if kind == "none":
        raise Forbidden("the token grants no access to FHIR resources")
    patient = f"Patient/{identity.patient}" if kind == "patient" else None
    principal = principal_of(identity)
    binding = "\x00".join((identity.issuer, identity.subject, identity.client_id or ""))
    return Caller(
        identity=identity,
        principal=principal,
        purposes=frozenset(identity.purpose_of_use),
        context=kind,
        patient=patient,
        binding=binding,
    )


_RECENT_SIZE: Final = 1024
#: Callers made recently, by the identity object they were made of (see
#: :mod:`middleware.recent`). The token verifier hands out the same :class:`Identity` for a
#: token it verified before, so a caller's requests reuse one Caller until the token leaves
#: the verifier's cache. Module-level, not an attribute of its user: caller_of is a pure
#: function (enforcement and the benchmarks call it), a Caller is a pure function of its
#: identity object, so sharing the memo can only save work, never answer wrongly; bounded.
_RECENT: Final = RecentByIdentity[Identity, Caller](_make_caller, _RECENT_SIZE)

#: The :class:`Caller` of a verified identity; raises :class:`Forbidden` when its token grants
#: no SMART resource scope at all (``none``: nothing to enforce against). The same identity
#: object gives the same Caller (a function of the identity alone, made once). The memo's own
#: function, not a wrapper around it: a hit is one call (70 ns; a wrapper 95 ns).
caller_of: Final = _RECENT.made


def permission_for(request: FhirRequest) -> str:
    """The SMART permission letter ``request`` needs on its resource type."""
    return _PERMISSIONS[request.interaction]


def check_interaction(caller: Caller, request: FhirRequest) -> None:
    """Raise :class:`Forbidden` unless some scope of ``caller`` grants the permission
    ``request`` needs on its resource type (any type for system-level interactions, whose
    answers are then checked resource by resource)."""
    permission = permission_for(request)
    rtype = request.resource_type
    if rtype is None:
        granted = any(
            scope.context == caller.context and permission in scope.permissions
            for scope in caller.identity.scopes
        )
    else:
        granted = caller.may(rtype, permission)
    if not granted:
        # Names the permission and type the client asked for: its own request, no PHI.
        raise Forbidden(
            f"the token grants no {caller.context}/ scope with '{permission}' on "
            f"{rtype or 'any resource type'}"
        )


def _categories(value: object) -> Iterator[Coding]:
    for item in value if isinstance(value, list) else (value,):
        if not isinstance(item, Mapping):
            continue
        codings = item.get("coding")
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                system = coding.get("system")
                yield (system if isinstance(system, str) else ""), coding["code"]
