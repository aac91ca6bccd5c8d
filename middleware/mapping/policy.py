"""One ``conceptmaps[]`` entry of a profile: the pin, where it applies, what applies by itself.

``auto`` lists, per operation, the relationships applied without a human: they read in the
direction of that operation's translation (upstream -> client for ``response``, client ->
upstream for ``search`` and ``write``). ``unmapped`` says, per operation, what happens to a
code the map does not translate (after the map's own ``group.unmapped``): ``pass`` leaves it
alone, ``reject`` refuses (502 for an answer, 400 for a search, 422 for a write), ``fixed``
adds the given coding (not for searches: a catch-all code is no search term).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from middleware.mapping.model import RELATIONSHIPS, Concept, Operation, Relationship
from middleware.mapping.paths import ElementPath, check, parse_path

__all__ = [
    "DEFAULT_AUTO",
    "DEFAULT_UNMAPPED",
    "BindingSpec",
    "Side",
    "UnmappedPolicy",
    "parse_binding",
]

Side = Literal["upstream", "client"]
UnmappedMode = Literal["pass", "reject", "fixed"]
OPERATIONS: Final[tuple[Operation, ...]] = ("response", "search", "write")
DEFAULT_AUTO: Final[frozenset[Relationship]] = frozenset({"equivalent"})
DEFAULT_UNMAPPED: Final[Mapping[Operation, UnmappedMode]] = {
    "response": "pass",
    "search": "pass",
    "write": "reject",
}
_KEYS: Final = frozenset(
    {"canonical", "file", "source", "elements", "search", "attributes", "auto", "unmapped"}
)
_PARAM: Final = re.compile(r"^_?[a-z][a-z0-9-]*$")


@dataclass(frozen=True, slots=True)
class UnmappedPolicy:
    """What the gateway does with a code its map leaves untranslated."""

    mode: UnmappedMode = "pass"
    coding: Concept | None = None
    relationship: Relationship | None = None


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """A validated ``conceptmaps[]`` entry, before its map is indexed.

    ``side``: whose codes are the map's *source* codes (``upstream``: a map from the upstream's
    codes to the client's). ``search`` holds ``(resource type, parameter)`` pairs.
    ``attributes``: for each ``dependsOn``/``product`` attribute, the elements it is read from.
    """

    canonical: str
    file: str
    side: Side
    elements: tuple[ElementPath, ...]
    search: tuple[tuple[str, str], ...]
    attributes: Mapping[str, tuple[ElementPath, ...]]
    auto: Mapping[Operation, frozenset[Relationship]]
    unmapped: Mapping[Operation, UnmappedPolicy]


def parse_binding(
    raw: Any, where: str, versions: tuple[str, ...], problems: list[str]
) -> BindingSpec | None:
    """Validate one entry; element paths are checked in every FHIR version of ``versions``."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be an object")
        return None
    before = len(problems)
    problems += [f"{where}: unknown key {k!r}" for k in sorted(set(raw) - _KEYS)]
    canonical = raw.get("canonical")
    url, _, version = canonical.partition("|") if isinstance(canonical, str) else ("", "", "")
    if not url or not version:
        problems.append(f"{where}.canonical: required, the map's url|version")
    if not isinstance(raw.get("file"), str) or not raw["file"]:
        problems.append(f"{where}.file: required, the ConceptMap's path in the mappings folder")
    side = raw.get("source", "upstream")
    if side not in ("upstream", "client"):
        problems.append(f"{where}.source: {side!r} is not 'upstream' or 'client'")
    elements = _paths(
        raw.get("elements", []), f"{where}.elements", versions, "CodeableConcept", problems
    )
    search = _search(raw.get("search", []), f"{where}.search", versions, problems)
    attributes: dict[str, tuple[ElementPath, ...]] = {}
    attrs = raw.get("attributes", {})
    if not isinstance(attrs, Mapping):
        problems.append(f"{where}.attributes: must map each attribute to a list of element paths")
    else:
        for name, paths in attrs.items():
            attributes[name] = _paths(paths, f"{where}.attributes.{name}", versions, None, problems)
    auto = _auto(raw.get("auto", {}), f"{where}.auto", problems)
    unmapped = _unmapped(raw.get("unmapped", {}), f"{where}.unmapped", problems)
    if len(problems) > before:
        return None
    return BindingSpec(
        canonical=cast(str, canonical),
        file=raw["file"],
        side=cast(Side, side),
        elements=elements,
        search=search,
        attributes=MappingProxyType(attributes),
        auto=auto,
        unmapped=unmapped,
    )


def _paths(
    raw: Any, where: str, versions: tuple[str, ...], want: str | None, problems: list[str]
) -> tuple[ElementPath, ...]:
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list of element paths like 'Observation.code'")
        return ()
    out = []
    for i, text in enumerate(raw):
        path = parse_path(text)
        if path is None:
            problems.append(f"{where}[{i}]: {text!r} is not a path like 'Observation.code'")
            continue
        faults = [f for f in (check(path, v, want=want) for v in versions) if f]
        problems += [f"{where}[{i}]: {fault}" for fault in faults]
        out.append(path)
    return tuple(out)


def _search(
    raw: Any, where: str, versions: tuple[str, ...], problems: list[str]
) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list like ['Observation.code']")
        return ()
    out = []
    for i, text in enumerate(raw):
        kind, _, param = text.partition(".") if isinstance(text, str) else ("", "", "")
        if not kind[:1].isupper() or not _PARAM.match(param):
            problems.append(f"{where}[{i}]: {text!r} is not 'ResourceType.parameter'")
            continue
        # A resource type is valid if some element path of it resolves: check via 'id'.
        faults = [
            f for f in (check(ElementPath(kind, ("id",)), v, want=None) for v in versions) if f
        ]
        problems += [f"{where}[{i}]: {fault}" for fault in faults]
        out.append((kind, param))
    return tuple(out)


def _auto(raw: Any, where: str, problems: list[str]) -> Mapping[Operation, frozenset[Relationship]]:
    out: dict[Operation, frozenset[Relationship]] = dict.fromkeys(OPERATIONS, DEFAULT_AUTO)
    if not isinstance(raw, Mapping) or set(raw) - set(OPERATIONS):
        problems.append(f"{where}: must map response/search/write to lists of relationships")
        return out
    for op, codes in raw.items():
        usable = RELATIONSHIPS - {"not-related-to"}
        if not isinstance(codes, list) or not all(c in usable for c in codes):
            problems.append(
                f"{where}.{op}: {codes!r} must list R5 relationship codes (not not-related-to)"
            )
            continue
        out[op] = frozenset(cast(list[Relationship], codes))
    return MappingProxyType(out)


def _unmapped(raw: Any, where: str, problems: list[str]) -> Mapping[Operation, UnmappedPolicy]:
    out = {op: UnmappedPolicy(DEFAULT_UNMAPPED[op]) for op in OPERATIONS}
    if not isinstance(raw, Mapping) or set(raw) - set(OPERATIONS):
        problems.append(f"{where}: must map response/search/write to a policy")
        return out
    for op, policy in raw.items():
        at = f"{where}.{op}"
        mode = policy.get("mode") if isinstance(policy, Mapping) else None
        if mode not in ("pass", "reject", "fixed") or (op == "search" and mode == "fixed"):
            allowed = "pass or reject" if op == "search" else "pass, reject or fixed"
            problems.append(f"{at}.mode: {mode!r} is not {allowed}")
            continue
        keys = {"mode", "coding", "relationship"} if mode == "fixed" else {"mode"}
        if set(policy) - keys:
            problems.append(f"{at}: unexpected {sorted(set(policy) - keys)}")
            continue
        if mode != "fixed":
            out[op] = UnmappedPolicy(mode)
            continue
        coding, relationship = policy.get("coding"), policy.get("relationship")
        if not (
            isinstance(coding, Mapping)
            and isinstance(coding.get("system"), str)
            and coding["system"]
            and isinstance(coding.get("code"), str)
            and coding["code"]
            and set(coding) <= {"system", "code", "display"}
        ):
            problems.append(f"{at}.coding: needs system and code (a Coding always has a system)")
        elif relationship not in RELATIONSHIPS - {"not-related-to"}:
            problems.append(f"{at}.relationship: {relationship!r} is not a usable R5 relationship")
        else:
            concept = Concept(coding["system"], coding["code"], coding.get("display"))
            out[op] = UnmappedPolicy("fixed", concept, cast(Relationship, relationship))
    return MappingProxyType(out)
