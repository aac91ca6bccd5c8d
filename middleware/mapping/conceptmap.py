"""Load and validate one ConceptMap (R5 JSON, or R4/R4B JSON converted by :mod:`.r4`).

Structure is checked with fhir.resources (``fhir.resources.conceptmap`` for R5,
``fhir.resources.R4B.conceptmap`` for R4/R4B); fhir.resources checks neither bindings nor
invariants, so this module checks the codes (``relationship``, ``unmapped.mode``) and the R5
rules cmd-1 to cmd-10 (http://hl7.org/fhir/R5/conceptmap.html#invs) itself. The model instance
is thrown away: the result is built from the JSON.

What the engine cannot apply faithfully is refused at load rather than ignored: element or
target ``valueSet`` instead of a code, ``unmapped.valueSet``, ``dependsOn``/``product`` by
``valueSet`` or ``valueQuantity``, a group without ``source`` or ``target`` system, an
attribute not declared in ``additionalAttribute``, the same mapping twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import pydantic
from fhir.resources.conceptmap import ConceptMap as ConceptMapR5
from fhir.resources.R4B.conceptmap import ConceptMap as ConceptMapR4B

from middleware.mapping.model import (
    RELATIONSHIPS,
    Attribute,
    Concept,
    Relationship,
    normalize_value,
)
from middleware.mapping.r4 import convert_r4, looks_r4, r5_elements

__all__ = ["ConceptMap", "Entry", "Group", "InvalidConceptMap", "Unmapped", "parse_conceptmap"]

UnmappedMode = Literal["use-source-code", "fixed", "other-map"]
_MODES: Final = frozenset({"use-source-code", "fixed", "other-map"})
_VALUE_KEYS: Final = ("valueCode", "valueString", "valueBoolean", "valueCoding")
_REFUSED_VALUE_KEYS: Final = ("valueQuantity", "valueSet")


class InvalidConceptMap(ValueError):
    """The ConceptMap cannot be used; ``problems`` names each fault with its location."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``group.element.target``: ``source`` maps to ``target`` as ``relationship`` says."""

    source: Concept
    target: Concept
    relationship: Relationship
    depends_on: tuple[Attribute, ...] = ()
    product: tuple[Attribute, ...] = ()


@dataclass(frozen=True, slots=True)
class Unmapped:
    """``group.unmapped``: what a source code that has no element in the group becomes."""

    mode: UnmappedMode
    relationship: Relationship | None = None
    fixed: Concept | None = None
    other_map: str | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """The systems of one group, the source codes it lists, and its unmapped rule."""

    source: str
    target: str
    target_version: str | None
    codes: frozenset[str]
    no_map: frozenset[str]
    unmapped: Unmapped | None


@dataclass(frozen=True, slots=True)
class ConceptMap:
    """A validated ConceptMap with R5 semantics, whatever version its file was written in."""

    url: str
    version: str
    written_in: Literal["R4", "R5"]
    groups: tuple[Group, ...]
    entries: tuple[Entry, ...]

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}"


def parse_conceptmap(raw: Mapping[str, Any]) -> ConceptMap:
    """Validate ``raw`` (R5, or R4/R4B which is converted) and build a :class:`ConceptMap`.

    Raises :class:`InvalidConceptMap` listing every problem found.
    """
    problems: list[str] = []
    if raw.get("resourceType") != "ConceptMap":
        raise InvalidConceptMap([f"resourceType is {raw.get('resourceType')!r}, not ConceptMap"])
    written_in: Literal["R4", "R5"] = "R4" if looks_r4(raw) else "R5"
    if written_in == "R4":
        mixed = r5_elements(raw)
        if mixed:
            raise InvalidConceptMap(
                [f"ConceptMap: mixes R4 elements with R5 elements ({', '.join(mixed)})"]
            )
        problems += _structure(ConceptMapR4B, raw)
        if problems:
            raise InvalidConceptMap(problems)
        raw = convert_r4(raw, problems)
    problems += _structure(ConceptMapR5, raw)
    if problems:
        raise InvalidConceptMap(problems)
    for key in ("url", "version"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            problems.append(f"ConceptMap.{key}: required, so that a profile can pin url|version")
    builder = _Builder(
        declared={str(a.get("code")) for a in _dicts(raw.get("additionalAttribute"))},
        draft=raw.get("status") == "draft",
        problems=problems,
    )
    groups = []
    for g, group in enumerate(_dicts(raw.get("group"))):
        built = builder.group(group, f"ConceptMap.group[{g}]")
        if built is not None:
            groups.append(built)
    seen: set[tuple[tuple[str, str], tuple[str, str], tuple[Attribute, ...]]] = set()
    for entry in builder.entries:
        mapping = (entry.source.key, entry.target.key, entry.depends_on)
        if mapping in seen:
            problems.append(f"ConceptMap: {entry.source} -> {entry.target} is mapped twice")
        seen.add(mapping)
    if problems:
        raise InvalidConceptMap(problems)
    return ConceptMap(
        url=raw["url"],
        version=raw["version"],
        written_in=written_in,
        groups=tuple(groups),
        entries=tuple(builder.entries),
    )


def _structure(model: type[pydantic.BaseModel], raw: Mapping[str, Any]) -> list[str]:
    try:
        model.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        return [f"{_location(err['loc'])}: {' '.join(err['msg'].split())}" for err in exc.errors()]
    return []


@dataclass(slots=True)
class _Builder:
    """Collects entries and problems while walking the groups of one map."""

    declared: set[str]
    draft: bool
    problems: list[str]
    entries: list[Entry] = field(default_factory=list)

    def group(self, group: Mapping[str, Any], where: str) -> Group | None:
        source, _ = _split_canonical(group.get("source"))
        target, target_version = _split_canonical(group.get("target"))
        if not source or not target:
            self.problems.append(f"{where}: needs source and target systems (a Coding needs one)")
            return None
        codes: set[str] = set()
        no_map: set[str] = set()
        for e, element in enumerate(_dicts(group.get("element"))):
            at = f"{where}.element[{e}]"
            code = element.get("code")
            if not isinstance(code, str) or "valueSet" in element:
                self.problems.append(
                    f"{at}: needs a code; mapping a valueSet is not supported (cmd-5)"
                )
                continue
            codes.add(code)
            targets = _dicts(element.get("target"))
            if element.get("noMap") is True:
                if targets:
                    self.problems.append(f"{at}: noMap is true, so there must be no target (cmd-4)")
                no_map.add(code)
                continue
            if not targets:
                self.problems.append(f"{at}: has no target; say noMap: true if there is none")
            source_concept = Concept(source, code, element.get("display"))
            positive = 0
            for t, raw_target in enumerate(targets):
                entry = self.entry(
                    raw_target, f"{at}.target[{t}]", source_concept, target_version, target
                )
                # not-related-to is an explicit negative assertion: never a translation
                if entry is not None and entry.relationship != "not-related-to":
                    self.entries.append(entry)
                    positive += 1
            if targets and not positive:
                no_map.add(code)
        unmapped = _unmapped(
            group.get("unmapped"),
            f"{where}.unmapped",
            Concept(target, "", None, target_version),
            self.problems,
        )
        return Group(source, target, target_version, frozenset(codes), frozenset(no_map), unmapped)

    def entry(
        self, raw: Mapping[str, Any], where: str, source: Concept, version: str | None, system: str
    ) -> Entry | None:
        problems = self.problems
        before = len(problems)
        relationship = raw.get("relationship")
        if relationship not in RELATIONSHIPS:
            problems.append(
                f"{where}.relationship: {relationship!r} is not an R5 relationship code"
            )
        elif (
            relationship in ("source-is-broader-than-target", "not-related-to")
            and not raw.get("comment")
            and not self.draft
        ):
            problems.append(f"{where}: relationship '{relationship}' needs a comment (cmd-1)")
        code = raw.get("code")
        if not isinstance(code, str) or "valueSet" in raw:
            problems.append(
                f"{where}: needs a code; mapping to a valueSet is not supported (cmd-7)"
            )
        depends_on = self.attributes(raw.get("dependsOn"), f"{where}.dependsOn")
        product = self.attributes(raw.get("product"), f"{where}.product")
        if len(problems) > before:
            return None
        display = raw.get("display")
        target = Concept(
            system, cast(str, code), display if isinstance(display, str) else None, version
        )
        return Entry(source, target, cast(Relationship, relationship), depends_on, product)

    def attributes(self, value: Any, where: str) -> tuple[Attribute, ...]:
        out = []
        for i, item in enumerate(_dicts(value)):
            at = f"{where}[{i}]"
            name = item.get("attribute")
            if name not in self.declared:
                self.problems.append(
                    f"{at}.attribute: {name!r} is not declared in additionalAttribute"
                )
            refused = [key for key in _REFUSED_VALUE_KEYS if key in item]
            present = [key for key in _VALUE_KEYS if key in item]
            if refused:
                self.problems.append(
                    f"{at}: {refused[0]} is not supported; use a code, string or Coding"
                )
            elif len(present) != 1:
                self.problems.append(f"{at}: needs exactly one value[x] (cmd-6)")
            else:
                out.append(Attribute(str(name), normalize_value(item[present[0]])))
        return tuple(sorted(out, key=lambda a: (a.attribute, a.value)))


def _unmapped(value: Any, where: str, target: Concept, problems: list[str]) -> Unmapped | None:
    if not isinstance(value, Mapping):
        return None
    mode = value.get("mode")
    relationship = value.get("relationship")
    before = len(problems)
    if mode not in _MODES:
        problems.append(f"{where}.mode: {mode!r} is not use-source-code, fixed or other-map")
    if mode != "fixed" and any(k in value for k in ("code", "display", "valueSet")):
        problems.append(f"{where}: code, display and valueSet are only for mode 'fixed' (cmd-8)")
    if mode == "fixed" and ("valueSet" in value or not isinstance(value.get("code"), str)):
        problems.append(f"{where}: mode 'fixed' needs a code; a valueSet is not supported (cmd-2)")
    if mode == "other-map" and not value.get("otherMap"):
        problems.append(f"{where}: mode 'other-map' needs otherMap (cmd-3)")
    if mode != "other-map" and "otherMap" in value:
        problems.append(f"{where}: otherMap is only for mode 'other-map' (cmd-10)")
    if mode != "other-map" and relationship not in RELATIONSHIPS - {"not-related-to"}:
        problems.append(f"{where}.relationship: needed for mode {mode!r} (cmd-9)")
    if len(problems) > before:
        return None
    fixed = None
    if mode == "fixed":
        fixed = Concept(target.system, value["code"], value.get("display"), target.version)
    return Unmapped(
        mode=cast(UnmappedMode, mode),
        relationship=cast("Relationship | None", relationship),
        fixed=fixed,
        other_map=value.get("otherMap"),
    )


def _split_canonical(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, str) or not value:
        return None, None
    system, _, version = value.partition("|")
    return system, version or None


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _location(loc: tuple[int | str, ...]) -> str:
    path = "ConceptMap"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
