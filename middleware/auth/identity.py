"""Who a verified bearer token speaks for: the frozen :class:`Identity` built from its claims.

:func:`identity_from_claims` runs only on claims whose signature, issuer, audience and times
:mod:`middleware.auth.verify` has already checked. A claim that is present but malformed raises
:class:`ClaimError` (the token is refused): reading it loosely or skipping it could change whose
data is released, so we fail closed.

Claims read (SMART App Launch 2.x, "Scopes and Launch Context"; RFC 9068 §2.2):
``sub``, ``iss``, ``exp``, ``jti``, ``client_id`` (else ``azp``), ``scope`` (a space-separated
string, or a list of strings), ``fhirUser`` (a Patient, Practitioner, PractitionerRole,
RelatedPerson or Person: relative ``Type/id``, or absolute under a FHIR base the gateway
accepts; see :func:`parse_fhir_user`), ``patient`` (the launch context id),
the purpose-of-use claim (IHE IUA, ITI-71 ``purpose_of_use``: codings or codes), the roles
claim and the organization claim (the caller's organization, recorded as the audit index's
"agent organization": ``Organization/<id>`` or a plain name, see :func:`parse_organization`),
and, when configured, the memberships claim (the organizations, care teams, groups, roles and
related-person records the caller acts for, as FHIR references: see :func:`parse_memberships`).
Claim names may be dotted paths into nested objects (``realm_access.roles``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from middleware.auth.scopes import Coding, ParsedScopes, Scope, parse_scopes

__all__ = [
    "V3_ACT_REASON",
    "ClaimError",
    "Identity",
    "IdentityKind",
    "IdentityRules",
    "identity_from_claims",
    "MEMBER_TYPES",
    "parse_fhir_user",
    "parse_memberships",
    "parse_organization",
]

#: HL7 v3 ActReason, the code system of PurposeOfUse values (TREAT, ETREAT, HPAYMT, ...).
V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

IdentityKind = Literal["patient", "user", "system", "none"]

# SMART 2.x §"fhirUser": the user is one of these resource types.
_USER_TYPES: Final = frozenset(
    {"Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Person"}
)
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 §2.24.0.1 "id"
# FHIR R4 §3.1.0.1.1 (Reference.reference): a relative reference is Type/id, optionally
# /_history/vid; an absolute one is a service base URL followed by exactly that.
_TAIL: Final = (
    rf"(?P<type>[A-Z][A-Za-z]*)/(?P<id>{_FHIR_ID.pattern})(?:/_history/{_FHIR_ID.pattern})?"
)
_RELATIVE: Final = re.compile(_TAIL)
_ABSOLUTE: Final = re.compile(rf"(?P<base>https?://[^/?#]+(?:/[^?#]*)?)/{_TAIL}")
#: Longest organization claim kept: it is written into every audit row of the caller.
ORGANIZATION_MAX: Final = 256
#: Resource types a memberships claim may name: the parties a consent's ``provision.actor``
#: names that a user acts for (FHIR R4 Consent.provision.actor.reference: Device, Group,
#: CareTeam, Organization, Patient, Practitioner, RelatedPerson, PractitionerRole; a user's
#: own Practitioner or Patient is its ``fhirUser``, not a membership).
MEMBER_TYPES: Final = frozenset(
    {"Organization", "CareTeam", "Group", "PractitionerRole", "RelatedPerson"}
)
#: Most memberships one token may carry: they are compared on every consent decision.
MEMBERSHIPS_MAX: Final = 64


class ClaimError(ValueError):
    """A claim is present but malformed; the message names the claim, never its value."""


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """How claims become an :class:`Identity`; one per gateway, from the auth settings.

    ``purpose_system`` is given to purpose-of-use codes that arrive without a system.
    Break-the-glass is *allowed* when the token carries one of ``break_glass_scopes`` or one of
    ``break_glass_roles``; invoking it is the consent decision's business.
    ``fhir_user_bases`` are the FHIR base URLs (no trailing ``/``) an absolute ``fhirUser``
    may be under: the gateway's own public base and any configured ones.
    """

    purpose_claim: str = "purpose_of_use"
    purpose_system: str = V3_ACT_REASON
    roles_claim: str = "roles"
    organization_claim: str = "organization"
    #: The claim listing the caller's memberships; empty: none is read.
    membership_claim: str = ""
    break_glass_scopes: frozenset[str] = frozenset()
    break_glass_roles: frozenset[str] = frozenset()
    fhir_user_bases: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified caller. ``fhir_user`` is a ``Type/id`` reference; ``patient`` the launch
    patient id; ``purpose_of_use`` ``(system, code)`` pairs; ``expires_at`` the ``exp`` claim
    (seconds since the epoch); ``organization`` the caller's organization (``Organization/<id>``
    or a plain name); ``memberships`` the ``Type/id`` references of the memberships claim
    (:data:`MEMBER_TYPES`). ``dropped_scopes`` lists scopes that were not understood and
    grant nothing."""

    subject: str
    issuer: str
    expires_at: float
    scopes: tuple[Scope, ...] = ()
    client_id: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    purpose_of_use: tuple[Coding, ...] = ()
    roles: frozenset[str] = frozenset()
    break_the_glass: bool = False
    token_id: str | None = None
    organization: str | None = None
    memberships: frozenset[str] = frozenset()
    dropped_scopes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def kind(self) -> IdentityKind:
        """``patient`` with a launch patient and patient/ scopes; else ``user`` with a
        ``fhirUser`` or user/ scopes; else ``system`` with system/ scopes; else ``none``."""
        contexts = {scope.context for scope in self.scopes}
        if self.patient is not None and "patient" in contexts:
            return "patient"
        if self.fhir_user is not None or "user" in contexts:
            return "user"
        if "system" in contexts:
            return "system"
        return "none"


def identity_from_claims(claims: Mapping[str, Any], rules: IdentityRules | None = None) -> Identity:
    """Build the :class:`Identity` of verified ``claims``; raise :class:`ClaimError` when a
    claim it reads is present but malformed."""
    rules = rules or IdentityRules()
    subject = _required_str(claims, "sub")
    issuer = _required_str(claims, "iss")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not -1e18 < exp < 1e18:
        raise ClaimError("exp: expected a NumericDate")
    parsed = _scopes(claims.get("scope"), rules.break_glass_scopes)
    fhir_user = claims.get("fhirUser")
    patient = _optional_str(claims, "patient")
    if patient is not None and not _FHIR_ID.fullmatch(patient):
        raise ClaimError("patient: expected a FHIR resource id")
    roles = _roles(_claim(claims, rules.roles_claim), rules.roles_claim)
    client_id = _optional_str(claims, "client_id") or _optional_str(claims, "azp")
    return Identity(
        subject=subject,
        issuer=issuer,
        expires_at=float(exp),
        scopes=parsed.scopes,
        client_id=client_id,
        fhir_user=None if fhir_user is None else parse_fhir_user(fhir_user, rules.fhir_user_bases),
        patient=patient,
        purpose_of_use=_purposes(_claim(claims, rules.purpose_claim), rules),
        roles=roles,
        break_the_glass=bool(
            parsed.recognised & rules.break_glass_scopes or roles & rules.break_glass_roles
        ),
        token_id=_optional_str(claims, "jti"),
        organization=_organization(_claim(claims, rules.organization_claim), rules),
        memberships=_memberships(claims, rules),
        dropped_scopes=parsed.dropped,
    )


def parse_fhir_user(value: object, bases: Collection[str] = ()) -> str:
    """``Type/id`` of a ``fhirUser`` claim (SMART App Launch 2.x: the URL of a Patient,
    Practitioner, PractitionerRole, RelatedPerson or Person), optionally versioned
    (``/_history/2``, the version is dropped).

    Strict, because the result decides whose data is released: the claim is either exactly
    relative ``Type/id`` or ``base/Type/id`` where ``base`` is one of ``bases`` (scheme and
    host compared case-insensitively, the path exactly). Anything else raises
    :class:`ClaimError`: dot segments (``Practitioner/../Patient/x``), percent-encoding, a
    query, fragment or user information, another server's URL, an id of dots only.
    """
    if not isinstance(value, str):
        raise ClaimError("fhirUser: expected a string")
    relative = _RELATIVE.fullmatch(value)
    absolute = None if relative else _ABSOLUTE.fullmatch(value)
    match = relative or absolute
    if match is None:
        raise ClaimError(
            "fhirUser: expected Type/id or <FHIR base>/Type/id, without dot segments, "
            "percent-encoding, query or fragment"
        )
    if match["type"] not in _USER_TYPES:
        raise ClaimError(f"fhirUser: expected a {', '.join(sorted(_USER_TYPES))}")
    if not match["id"].strip("."):
        raise ClaimError("fhirUser: the id is not a FHIR resource id")
    allowed = {key for key in map(_base_key, bases) if key is not None}
    if absolute is not None and _base_key(absolute["base"]) not in allowed:
        raise ClaimError(
            "fhirUser: the URL is not under this gateway's FHIR base or an allowed one"
        )
    return f"{match['type']}/{match['id']}"


def parse_organization(value: object, name: str = "organization") -> str:
    """The caller's organization from claim ``name``: a FHIR reference ``Organization/<id>``
    (kept as given) or a plain name (an organization the FHIR server does not hold).

    Printable text of 1..:data:`ORGANIZATION_MAX` characters with no leading or trailing
    space; anything else raises :class:`ClaimError`. It is copied into the audit index and the
    45 CFR 164.528 accounting, so a control character or an unbounded value must not get in.
    A value that starts ``Organization/`` must be a valid reference (FHIR R4 §2.24.0.1 id).
    """
    if not isinstance(value, str):
        raise ClaimError(f"{name}: expected a string")
    if not 0 < len(value) <= ORGANIZATION_MAX or not value.isprintable() or value != value.strip():
        raise ClaimError(
            f"{name}: expected printable text of 1..{ORGANIZATION_MAX} characters "
            "without surrounding spaces"
        )
    kind, slash, ident = value.partition("/")
    if kind == "Organization" and slash and not (_FHIR_ID.fullmatch(ident) and ident.strip(".")):
        raise ClaimError(f"{name}: expected Organization/<FHIR id> or a plain name")
    return value


def parse_memberships(value: object, name: str = "memberships") -> frozenset[str]:
    """The memberships of claim ``name``: a list of relative FHIR references ``Type/id``
    (or one such string, or a space-separated string of them), each type one of
    :data:`MEMBER_TYPES`, at most :data:`MEMBERSHIPS_MAX`.

    Strict for the reason :func:`parse_fhir_user` is: a consent that denies an organization
    is enforced on these, so an entry the gateway cannot read refuses the token
    (:class:`ClaimError`) rather than being skipped. Absolute URLs are refused too: the
    issuer names records of the FHIR server the gateway fronts, in its relative form.
    """
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ClaimError(f"{name}: expected a list of Type/id references")
    if len(items) > MEMBERSHIPS_MAX:
        raise ClaimError(f"{name}: more than {MEMBERSHIPS_MAX} memberships")
    found: set[str] = set()
    for item in items:
        match = _RELATIVE.fullmatch(item)
        if match is None or match["type"] not in MEMBER_TYPES or not match["id"].strip("."):
            raise ClaimError(
                f"{name}: expected Type/id references of {', '.join(sorted(MEMBER_TYPES))}"
            )
        found.add(f"{match['type']}/{match['id']}")
    return frozenset(found)


def _memberships(claims: Mapping[str, Any], rules: IdentityRules) -> frozenset[str]:
    if not rules.membership_claim:
        return frozenset()
    value = _claim(claims, rules.membership_claim)
    return frozenset() if value is None else parse_memberships(value, rules.membership_claim)


def _organization(value: Any, rules: IdentityRules) -> str | None:
    return None if value is None else parse_organization(value, rules.organization_claim)


def _base_key(base: str) -> tuple[str, str, str] | None:
    """A base URL compared as RFC 3986 §6.2.2.1 allows: scheme and host in lower case, the
    path exactly (no trailing ``/``); None for a base that must never match (user
    information, percent-encoding, dot segments)."""
    parts = urlsplit(base.rstrip("/"))
    segments = parts.path.split("/")
    if "@" in parts.netloc or "%" in base or any(s in (".", "..") for s in segments):
        return None
    return parts.scheme.lower(), parts.netloc.lower(), parts.path


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    # A top-level claim of exactly this name wins (names may be URLs holding dots); otherwise
    # a dotted name walks nested objects.
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _required_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise ClaimError(f"{name}: expected a non-empty string")
    return value


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ClaimError(f"{name}: expected a non-empty string")
    return value


def _scopes(value: Any, extra: frozenset[str]) -> ParsedScopes:
    if value is None:
        return ParsedScopes()
    if isinstance(value, str):
        return parse_scopes(value, extra=extra)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return parse_scopes(value, extra=extra)
    raise ClaimError("scope: expected a space-separated string or a list of strings")


def _roles(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ClaimError(f"{name}: expected a string or a list of strings")
    return frozenset(items)


def _purposes(value: Any, rules: IdentityRules) -> tuple[Coding, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out: dict[Coding, None] = {}
    for item in items:
        for coding in _purpose(item, rules):
            out.setdefault(coding)
    return tuple(out)


def _purpose(item: Any, rules: IdentityRules) -> list[Coding]:
    # IHE IUA (ITI-71) carries purpose of use as Codings; plain codes and "system|code" are
    # accepted too, and a code without a system is read as v3 ActReason (or as configured).
    where = rules.purpose_claim
    if isinstance(item, str):
        system, bar, code = item.rpartition("|")
        if not code or (bar and not system):
            raise ClaimError(f"{where}: expected a code or system|code")
        return [(system if bar else rules.purpose_system, code)]
    if isinstance(item, Mapping) and isinstance(item.get("coding"), list):
        return [c for coding in item["coding"] for c in _purpose(_as_coding(coding, where), rules)]
    if isinstance(item, Mapping):
        value, given = item.get("code"), item.get("system", rules.purpose_system)
        if isinstance(value, str) and value and isinstance(given, str) and given:
            return [(given, value)]
    raise ClaimError(f"{where}: expected codes, Codings or CodeableConcepts")


def _as_coding(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ClaimError(f"{where}: a CodeableConcept's coding must hold Codings")
    return value
