"""The operations a conversion step can apply to the elements of one node.

An operation reads the values of its elements in one release and returns those of the other
(:meth:`Op.apply`); it is pure and written once for both directions, from the R4 side (``r4``)
to the R5 side (``r5``). The engine calls it both ways to learn whether a value survives the
round trip; what does not is carried in a cross-version extension (or reported), so an
operation may approximate freely. Operations never mutate what they are given.

Operations and their parameters (built and validated by :mod:`middleware.mapping.versions.build`):

``rename``
    one element each side; ``item`` converts each value and ``whole`` the whole value
    (:mod:`middleware.mapping.versions.items`); ``to5``/``to4`` map codes; cardinality follows
    the specs (``T`` <-> ``T[]``).
``carry``
    elements of one side only: always carried.
``codeable-reference``
    R4 ``concept`` + ``reference`` elements (or children of a ``group``) <-> one R5
    CodeableReference element, each item optionally wrapped as ``{wrap: [item]}``.
``participants``
    R4 Reference elements <-> one R5 list of ``{role: CodeableConcept, actor: Reference}``
    whose role code (``functions``, in ``system``) says which R4 element it was.
``hoist``
    an R4 backbone whose ``children`` move up to the parent, the rest renamed ``into``.
``choice``
    R4 choice alternatives <-> separate R5 elements (``alternatives``).
``join``
    several R4 elements <-> one R5 list, split back ``into`` one of them.
``unit``
    an R4 value with an implied ``unit`` <-> R5 value + unit elements.
``outcome``, ``network``, ``display``
    AuditEvent's outcome, agent network and agent name (see each class).
``consent``
    Consent's decision and provision tree (:mod:`middleware.mapping.versions.consent`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from middleware.mapping.versions.carry import Release, Spec
from middleware.mapping.versions.items import ABSENT, Item, as_list, single

__all__ = [
    "Carry",
    "Choice",
    "CodeableReference",
    "Hoist",
    "Join",
    "Op",
    "Participants",
    "Rename",
    "Unit",
]


class Op(Protocol):
    """Converts the values of one step's elements into the other release."""

    @property
    def keeps_meta(self) -> bool:
        """A primitive's ``_element`` (id, extensions) moves along with the value."""
        ...

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Rename:
    r4: tuple[str, Spec]
    r5: tuple[str, Spec]
    item: Item | None = None
    whole: Item | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    to5: Mapping[str, str] = field(default_factory=dict)
    to4: Mapping[str, str] = field(default_factory=dict)

    @property
    def keeps_meta(self) -> bool:
        same_shape = self.r4[1].many == self.r5[1].many
        return same_shape and self.item is None and self.whole is None

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        (skey, sspec), (tkey, tspec) = (self.r4, self.r5) if target == "R5" else (self.r5, self.r4)
        if skey not in values:
            return {}
        codes = self.to5 if target == "R5" else self.to4
        if self.whole is not None:
            out = self.whole(values[skey], target, self.params)
            return {} if out is ABSENT else {tkey: out}
        items = as_list(values[skey]) if sspec.many else [values[skey]]
        converted = []
        for item in items:
            value = codes.get(item, item) if target == "R5" and isinstance(item, str) else item
            if self.item is not None:
                value = self.item(value, target, self.params)
            if target == "R4" and isinstance(value, str):
                value = codes.get(value, value)
            if value is not ABSENT:
                converted.append(value)
        out = single(converted, tspec)
        return {} if out is None else {tkey: out}


@dataclass(frozen=True, slots=True)
class Carry:
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class CodeableReference:
    """R4 ``concept``/``reference`` lists (or a ``group`` list of both) <-> R5 CodeableReference."""

    concept: str
    reference: str
    r5: tuple[str, Spec]
    specs4: Mapping[str, Spec]
    group: str | None = None
    wrap: str | None = None
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        key5, spec5 = self.r5
        if target == "R5":
            pairs: list[dict[str, Any]] = []
            groups = as_list(values.get(self.group)) if self.group else [values]
            for group in groups:
                if type(group) is not dict:
                    continue
                pairs += [{"concept": c} for c in as_list(group.get(self.concept))]
                pairs += [{"reference": r} for r in as_list(group.get(self.reference))]
            items = [{self.wrap: [p]} for p in pairs] if self.wrap else pairs
            out = single(items, spec5)
            return {} if out is None else {key5: out}
        found = as_list(values.get(key5))
        if self.wrap:
            found = [p for w in found if type(w) is dict for p in as_list(w.get(self.wrap))]
        concepts = [p["concept"] for p in found if type(p) is dict and "concept" in p]
        references = [p["reference"] for p in found if type(p) is dict and "reference" in p]
        if self.group:
            groups = [{self.concept: [c]} for c in concepts]
            groups += [{self.reference: [r]} for r in references]
            return {self.group: groups} if groups else {}
        result: dict[str, Any] = {}
        for key, items in ((self.concept, concepts), (self.reference, references)):
            shaped = single(items, self.specs4[key])
            if shaped is not None:
                result[key] = shaped
        return result


@dataclass(frozen=True, slots=True)
class Participants:
    """R4 Reference elements <-> an R5 list whose items name their role with a code."""

    functions: Mapping[str, str]  # R4 element -> role code
    system: str
    r5: str
    role: str
    actor: str
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        if target == "R5":
            items = [
                {self.role: {"coding": [{"system": self.system, "code": code}]}, self.actor: ref}
                for key, code in self.functions.items()
                if (ref := values.get(key)) is not None
            ]
            return {self.r5: items} if items else {}
        by_code = {code: key for key, code in self.functions.items()}
        result: dict[str, Any] = {}
        for item in as_list(values.get(self.r5)):
            role = item.get(self.role) if type(item) is dict else None
            codings = role.get("coding") if type(role) is dict else None
            coding = codings[0] if type(codings) is list and len(codings) == 1 else None
            if type(coding) is dict and coding.get("system") == self.system:
                key = by_code.get(coding.get("code", ""))
                if key and key not in result and self.actor in item:
                    result[key] = item[self.actor]
        return result


@dataclass(frozen=True, slots=True)
class Hoist:
    """An R4 backbone whose ``children`` move up to the parent in R5 (renamed); the rest of
    it becomes R5 ``into`` (or has no place when ``into`` is None)."""

    r4: str
    into: str | None
    children: Mapping[str, str]  # R4 child -> R5 element of the parent
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        if target == "R5":
            backbone = values.get(self.r4)
            if type(backbone) is not dict:
                return {}
            moved = {new: backbone[old] for old, new in self.children.items() if old in backbone}
            rest = {k: v for k, v in backbone.items() if k not in self.children}
            if rest and self.into:
                moved = {self.into: rest, **moved}
            return moved
        built = dict(values[self.into]) if self.into and type(values.get(self.into)) is dict else {}
        for old, new in self.children.items():
            if new in values:
                built[old] = values[new]
        return {self.r4: built} if built else {}


@dataclass(frozen=True, slots=True)
class Choice:
    """R4 choice alternatives (``asNeededBoolean | asNeededCodeableConcept``) <-> separate R5
    elements; back in R4 only the first R5 element present survives (a choice holds one)."""

    alternatives: Mapping[str, str]  # R4 alternative -> R5 element
    specs: Mapping[Release, Mapping[str, Spec]]
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        pairs = self.alternatives.items()
        if target == "R4":
            pairs = {new: old for old, new in pairs}.items()
        source: Release = "R4" if target == "R5" else "R5"
        for old, new in pairs:
            if old in values:
                items = as_list(values[old]) if self.specs[source][old].many else [values[old]]
                shaped = single(items, self.specs[target][new])
                return {} if shaped is None else {new: shaped}
        return {}


@dataclass(frozen=True, slots=True)
class Join:
    """Several R4 elements (``masterIdentifier``, ``identifier``) <-> one R5 list; back, all of
    it goes ``into`` one R4 element."""

    r4: tuple[str, ...]
    r5: str
    into: str
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        if target == "R5":
            items = [item for key in self.r4 for item in as_list(values.get(key))]
            return {self.r5: items} if items else {}
        items = as_list(values.get(self.r5))
        return {self.into: items} if items else {}


@dataclass(frozen=True, slots=True)
class Unit:
    """An R4 value in an implied unit (SampledData.period, milliseconds) <-> R5 value + unit."""

    r4: str
    value: str
    unit_key: str
    unit: str
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        if target == "R5":
            return (
                {self.value: values[self.r4], self.unit_key: self.unit} if self.r4 in values else {}
            )
        if self.value in values and values.get(self.unit_key) == self.unit:
            return {self.r4: values[self.value]}
        return {}
