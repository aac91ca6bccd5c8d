"""Translate the search parameters of a client's query into the upstream's codes and systems.

Token parameters a profile binds (``Observation.code``): each ``system|code`` becomes an OR of
itself and its upstream translations (``code=http://loinc.org|2345-7`` ->
``code=http://loinc.org|2345-7,http://hospital-a.example/CodeSystem/lab|GLU``). Several
upstream codes are not ambiguous here: a search for a code should find every upstream code
that means it, so all applicable ones are OR-ed. A composite value (``code$value``) has its
first component translated and the rest kept.

Identifier parameters (``identifier``, ``*.identifier``, ``:identifier``) have their system
renamed by the alias table.

What cannot be translated faithfully is never guessed:

- modifiers that change what a code means (``:text``, ``:in``, ``:not-in``, ``:below``,
  ``:above``, ``:not``, ``:code-text``, ``:text-advanced``...) pass unchanged or are refused
  with 400, as the profile's ``search.modifiers`` says (``:missing`` and, for identifiers,
  ``:of-type`` are faithful and always pass);
- a ``system|`` (any code) value and candidates that hold only under ``dependsOn``/``product``
  attributes a query cannot state are left out, or refused with 400 in a strict profile;
- an in-scope code with no translation follows the binding's ``search`` unmapped policy.

Values without a system (``code=2345-7``, ``code=|2345-7``) name no code system to map from
and pass unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from middleware.errors import BadRequest
from middleware.mapping.profile import Binding, Profile
from middleware.mapping.tokens import format_token, parse_token, split
from middleware.mapping.translate import translate

__all__ = ["SearchMapped", "map_search"]

_FAITHFUL: Final = frozenset({"missing"})
_FAITHFUL_FOR_IDENTIFIERS: Final = frozenset({"missing", "of-type"})


@dataclass(frozen=True, slots=True)
class SearchMapped:
    """The rewritten query (same order, same repetitions) and what was left out, for the log."""

    params: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]


def map_search(
    resource_type: str, params: Sequence[tuple[str, str]], profile: Profile
) -> SearchMapped:
    """Rewrite ``params`` (decoded ``name``/``value`` pairs of a search on ``resource_type``).

    Raises :class:`BadRequest` (400) for what the profile refuses (see the module docstring).
    """
    bound = profile.search.get(resource_type, {})
    notes: list[str] = []
    out: list[tuple[str, str]] = []
    for name, value in params:
        base, _, modifier = name.partition(":")
        if _identifier_param(base, modifier):
            out.append((name, _identifier(name, modifier, value, profile)))
            continue
        bindings = bound.get(base)
        if not bindings or modifier in _FAITHFUL:
            out.append((name, value))
        elif modifier:
            out.append((name, _modifier(name, value, profile)))
        else:
            out.append((name, _tokens(name, value, bindings, profile, notes)))
    return SearchMapped(tuple(out), tuple(notes))


def _identifier_param(base: str, modifier: str) -> bool:
    if modifier == "identifier" or modifier.endswith(".identifier"):
        return True
    return base.rsplit(".", 1)[-1] == "identifier"


def _identifier(name: str, modifier: str, value: str, profile: Profile) -> str:
    if not profile.identifiers.to_upstream:
        return value
    if modifier and modifier != "identifier" and not modifier.endswith(".identifier"):
        return value if modifier in _FAITHFUL_FOR_IDENTIFIERS else _modifier(name, value, profile)
    parts = split(value, ",")
    return ",".join(profile.identifiers.rewrite_token(part, "upstream") for part in parts)


def _modifier(name: str, value: str, profile: Profile) -> str:
    if profile.modifiers == "reject":
        raise BadRequest(
            f"search parameter {name}: this modifier cannot be translated to the upstream's "
            "codes faithfully; search by system|code instead",
            code="not-supported",
        )
    return value


def _tokens(
    name: str, value: str, bindings: tuple[Binding, ...], profile: Profile, notes: list[str]
) -> str:
    alternatives: list[str] = []
    for part in split(value, ","):
        head, *rest = split(part, "$")
        suffix = "".join(f"${r}" for r in rest)
        for code in (head, *_translations(name, head, bindings, profile, notes)):
            if code + suffix not in alternatives:
                alternatives.append(code + suffix)
    return ",".join(alternatives)


def _translations(
    name: str, text: str, bindings: tuple[Binding, ...], profile: Profile, notes: list[str]
) -> list[str]:
    token = parse_token(text)
    out: list[str] = []
    for binding in bindings:
        index = binding.to_upstream
        if not token.system or token.system not in index.source_systems:
            continue
        if not token.code:
            _unfaithful(name, f"{token.system}| (any code)", profile, notes)
            continue
        found = translate(
            index, token.system, token.code, auto=binding.auto("search"), context=None
        )
        if found.conditional:
            _unfaithful(
                name, f"{token.system}|{token.code} (depends on other elements)", profile, notes
            )
        if found.targets:
            out += [format_token(t.concept.system, t.concept.code) for t in found.targets]
        elif found.conditional:
            continue  # not unmapped: translatable, but not by a search
        elif binding.unmapped("search").mode == "reject":
            raise BadRequest(
                f"search parameter {name}: {token.system}|{token.code} has no upstream equivalent",
                code="code-invalid",
            )
        else:
            notes.append(f"{name}: {token.system}|{token.code} has no upstream translation")
    return out


def _unfaithful(name: str, what: str, profile: Profile, notes: list[str]) -> None:
    if profile.strict:
        raise BadRequest(
            f"search parameter {name}: {what} cannot be translated to the upstream's codes "
            "faithfully",
            code="not-supported",
        )
    notes.append(f"{name}: {what} left untranslated")
