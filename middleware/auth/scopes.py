"""SMART on FHIR scopes, v1 and v2, parsed into frozen values, and the access test over them.

Grammar (SMART App Launch 2.x, "Scopes and Launch Context",
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html)::

    v2:  ( patient | user | system ) "/" ( ResourceType | "*" ) "." [c][r][u][d][s] [ "?" query ]
    v1:  ( patient | user | system ) "/" ( ResourceType | "*" ) "." ( read | write | "*" )

v2 permissions are letters in the fixed order ``cruds``, each at most once. v1 ``read`` is
``rs``, ``write`` is ``cud`` and ``*`` is ``cruds`` (the spec's "Scope Equivalence" table).
A v2 scope may carry granular constraints (``?category=system|code``, §"Finer-grained resource
constraints using search parameters"); a constrained scope grants only resources matching every
constraint.

Fail closed: a scope we cannot parse completely is *dropped* and reported, never read loosely
(dropping a scope can only narrow access; reading ``?category=bad`` as "no constraint" would
widen it). ``openid``, ``fhirUser``, ``profile``, ``launch``, ``launch/<context>``,
``offline_access`` and ``online_access`` are recognised and grant no resource access.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import unquote

from middleware.fhir.resource_types import RESOURCE_TYPES

__all__ = [
    "ALL_PERMISSIONS",
    "Coding",
    "ContextKind",
    "ParsedScopes",
    "Permission",
    "Scope",
    "allows",
    "candidate_scopes",
    "parse_scope",
    "parse_scopes",
]

ContextKind = Literal["patient", "user", "system"]
Permission = Literal["c", "r", "u", "d", "s"]
Coding = tuple[str, str]
"""``(system, code)``; ``system`` is ``""`` when the coding has none (as in ``consent.model``)."""

ALL_PERMISSIONS: Final = frozenset("cruds")
_CONTEXTS: Final[Mapping[str, ContextKind]] = {
    "patient": "patient",
    "user": "user",
    "system": "system",
}
# "Scope Equivalence" (SMART 2.x §scopes-for-requesting-fhir-resources): v1 names in v2 letters.
_V1_PERMISSIONS: Final = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": ALL_PERMISSIONS,
}
_V2_PERMISSIONS: Final = re.compile(r"c?r?u?d?s?")
_SCOPE: Final = re.compile(
    r"(?P<context>[a-z]+)/(?P<type>\*|[A-Za-z]+)\.(?P<perm>[a-z*]+)(?:\?(?P<query>.*))?",
    re.DOTALL,
)
_PARAM_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_\-:.]*")
_NON_ACCESS: Final = frozenset(
    {"openid", "fhirUser", "profile", "launch", "offline_access", "online_access"}
)
_LAUNCH_CONTEXT: Final = re.compile(r"launch/[A-Za-z]+")
#: The only granular constraint :func:`allows` can evaluate (SMART 2.x requires servers to
#: support ``category`` on Observation and Condition; others are kept but never grant).
_CATEGORY: Final = "category"


@dataclass(frozen=True, slots=True)
class Scope:
    """One parsed resource scope: who (context), what (resource type or ``*``), which
    permissions (letters of ``cruds``), and granular constraints as ``(param, value)`` pairs
    with values percent-decoded. ``text`` is the scope as the token carried it."""

    context: ContextKind
    resource_type: str
    permissions: frozenset[str]
    constraints: tuple[tuple[str, str], ...] = ()
    text: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class ParsedScopes:
    """The result of :func:`parse_scopes`: resource ``scopes`` (in order, no duplicates),
    ``recognised`` non-resource scopes, and ``dropped`` scopes that were not understood."""

    scopes: tuple[Scope, ...] = ()
    recognised: frozenset[str] = frozenset()
    dropped: tuple[str, ...] = ()


def parse_scope(text: str) -> Scope | None:
    """Parse one resource scope; None when ``text`` is not a complete, valid resource scope."""
    match = _SCOPE.fullmatch(text)
    context = None if match is None else _CONTEXTS.get(match["context"])
    if match is None or context is None:
        return None
    resource_type = match["type"]
    if resource_type != "*" and resource_type not in RESOURCE_TYPES:
        return None
    perm, query = match["perm"], match["query"]
    if perm in _V1_PERMISSIONS:
        if query is not None:  # granular constraints are a v2 feature only
            return None
        permissions = _V1_PERMISSIONS[perm]
    elif perm and _V2_PERMISSIONS.fullmatch(perm):
        permissions = frozenset(perm)
    else:
        return None
    constraints: tuple[tuple[str, str], ...] = ()
    if query is not None:
        parsed = _parse_query(query)
        if parsed is None:
            return None
        constraints = parsed
    return Scope(context, resource_type, permissions, constraints, text)


def parse_scopes(value: str | Iterable[str], *, extra: Iterable[str] = ()) -> ParsedScopes:
    """Parse a space-separated scope string (RFC 6749 §3.3) or a list of scope strings.

    ``extra`` names further non-resource scopes to recognise (e.g. the configured
    break-the-glass scope) rather than report as dropped.
    """
    items = value.split() if isinstance(value, str) else [s for v in value for s in v.split()]
    known = frozenset(extra)
    scopes: dict[Scope, None] = {}
    recognised: set[str] = set()
    dropped: list[str] = []
    for item in items:
        if item in _NON_ACCESS or item in known or _LAUNCH_CONTEXT.fullmatch(item):
            recognised.add(item)
            continue
        scope = parse_scope(item)
        if scope is None:
            dropped.append(item)
        else:
            scopes.setdefault(scope)
    return ParsedScopes(tuple(scopes), frozenset(recognised), tuple(dropped))


def candidate_scopes(
    scopes: Iterable[Scope], context_kind: ContextKind, resource_type: str, permission: str
) -> tuple[Scope, ...]:
    """The scopes of ``context_kind`` that name ``resource_type`` (or ``*``) and grant
    ``permission``, constraints not yet checked: what a search must be narrowed by."""
    _check_permission(permission)
    return tuple(
        s
        for s in scopes
        if s.context == context_kind
        and s.resource_type in (resource_type, "*")
        and permission in s.permissions
    )


def allows(
    scopes: Iterable[Scope],
    context_kind: ContextKind,
    resource_type: str,
    permission: str,
    resource_categories: Iterable[Coding] | None = None,
) -> bool:
    """True when some scope grants ``permission`` on ``resource_type`` in ``context_kind``.

    An unconstrained scope grants every resource of its type. A granular scope grants a resource
    only when each of its constraints is a ``category`` constraint matched by one of
    ``resource_categories`` (FHIR token search semantics: ``code``, ``system|code``, ``|code``,
    ``system|``; a comma means "or"). With ``resource_categories=None`` (not known yet, e.g.
    before a search has run) granular scopes grant nothing: use :func:`candidate_scopes` to
    narrow the query instead.
    """
    categories = None if resource_categories is None else frozenset(resource_categories)
    for scope in candidate_scopes(scopes, context_kind, resource_type, permission):
        if not scope.constraints:
            return True
        if categories is not None and all(
            name == _CATEGORY and _token_matches(value, categories)
            for name, value in scope.constraints
        ):
            return True
    return False


def _check_permission(permission: str) -> None:
    if permission not in ALL_PERMISSIONS:
        raise ValueError(f"permission must be one of c, r, u, d, s; got {permission!r}")


def _parse_query(query: str) -> tuple[tuple[str, str], ...] | None:
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        name, sep, raw = part.partition("=")
        value = unquote(raw)
        if not sep or not _PARAM_NAME.fullmatch(name) or not value:
            return None
        pairs.append((name, value))
    return tuple(pairs)


def _token_matches(value: str, categories: frozenset[Coding]) -> bool:
    # FHIR search, token parameters (http://hl7.org/fhir/R4/search.html#token).
    for alternative in value.split(","):
        if "|" not in alternative:  # [code]: any system
            if any(code == alternative for _, code in categories if code):
                return True
            continue
        system, _, code = alternative.partition("|")
        if not code:  # [system]|: any code in that system
            if system and any(have == system for have, c in categories if c):
                return True
        elif (system, code) in categories:  # [system]|[code], and |[code] for "no system"
            return True
    return False
