"""Map the codings and identifiers of resources: answers toward the client, writes back.

Answers (:func:`map_response`): identifier systems are renamed by the alias table; in every
configured element, each translatable coding gets its translation *added next to it* (never
replacing it), marked with the :data:`~middleware.mapping.model.MARKER_URL` extension naming
the ConceptMap (``url|version``) and the relationship. A translation is not added when the
element already holds that coding, or another code of the same system (the upstream's own
coding wins; the conflict becomes a :class:`Note`). Ambiguous translations add nothing.

Writes (:func:`prepare_write`): every marked coding is removed (:func:`strip_added`), identifier
systems are renamed back, and an element holding no upstream coding gets the reverse
translation of the client's codings, marked the same way. A strict profile refuses an
ambiguous reverse with 422.

Everything else is left exactly as it was: the functions copy only the dicts and lists on the
way to a change, so decimals (:class:`msgspec.Raw`) and unknown elements pass through. Bundle
entries and contained resources are mapped as resources of their own.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from middleware.errors import UnprocessableEntity, UpstreamError
from middleware.mapping.model import MARKER_URL, Concept, Operation, Status
from middleware.mapping.paths import ElementPath, attribute_values, rewrite
from middleware.mapping.profile import Binding, Profile
from middleware.mapping.translate import translate

__all__ = [
    "CodingWalk",
    "LazyContext",
    "Mapped",
    "Note",
    "added_coding",
    "is_added",
    "map_response",
    "prepare_write",
    "strip_added",
]


@dataclass(frozen=True, slots=True)
class Note:
    """Something the caller should log: a code left untranslated, and why."""

    element: str
    source: str
    status: Status | None
    detail: str


@dataclass(frozen=True, slots=True)
class Mapped:
    """The mapped resource (the input object itself if nothing changed) and the notes."""

    resource: Any
    notes: tuple[Note, ...]


def added_coding(concept: Concept, conceptmap: str, relationship: str) -> dict[str, Any]:
    """A Coding for ``concept`` carrying the gateway's marker extension."""
    marker = {
        "url": MARKER_URL,
        "extension": [
            {"url": "conceptmap", "valueCanonical": conceptmap},
            {"url": "relationship", "valueCode": relationship},
        ],
    }
    coding: dict[str, Any] = {"extension": [marker], "system": concept.system}
    if concept.version:
        coding["version"] = concept.version
    coding["code"] = concept.code
    if concept.display:
        coding["display"] = concept.display
    return coding


def is_added(coding: Any) -> bool:
    """True for a Coding the gateway added (it carries the marker extension)."""
    extensions = coding.get("extension") if isinstance(coding, dict) else None
    return isinstance(extensions, list) and any(
        isinstance(e, dict) and e.get("url") == MARKER_URL for e in extensions
    )


def map_response(resource: Any, profile: Profile) -> Mapped:
    """The answer as the client should see it (see the module docstring).

    Raises :class:`UpstreamError` (502) where the profile's ``response`` unmapped policy is
    ``reject`` and a code has no translation.
    """
    walk = CodingWalk(profile, "response")
    mapped = walk.resource(profile.identifiers.rewrite(resource, "client"))
    return Mapped(mapped, tuple(walk.notes))


def prepare_write(resource: Any, profile: Profile) -> Mapped:
    """The client's resource as the upstream should receive it (see the module docstring).

    Raises :class:`UnprocessableEntity` (422) for an ambiguous reverse translation under a
    strict profile, or an untranslatable code under a ``reject`` write policy.
    """
    walk = CodingWalk(profile, "write")
    mapped = walk.resource(profile.identifiers.rewrite(strip_added(resource), "upstream"))
    return Mapped(mapped, tuple(walk.notes))


def strip_added(node: Any) -> Any:
    """``node`` without any Coding the gateway added, wherever it sits; copy-on-write.

    A ``coding`` list left empty is dropped (FHIR allows no empty arrays).
    """
    if isinstance(node, list):
        items = [strip_added(item) for item in node]
        return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] | None = None
    for key, value in node.items():
        if key == "coding" and isinstance(value, list) and any(is_added(c) for c in value):
            kept = [strip_added(c) for c in value if not is_added(c)]
            out = out if out is not None else dict(node)
            if kept:
                out[key] = kept
            else:
                del out[key]
            continue
        new = strip_added(value) if isinstance(value, dict | list) else value
        if new is not value:
            out = out if out is not None else dict(node)
            out[key] = new
    return node if out is None else out


#: What a translated code adds: each target concept, its map and the relationship.
_Targets = tuple[tuple[Concept, str, str], ...]


class CodingWalk:
    """One pass over one resource tree: the profile, the operation, what to log, and a cache.

    Translations that did not read the resource's attributes are the same for every resource
    of the pass, so they are cached by (map, system, code); those that did (a candidate with
    ``dependsOn`` or ``product``) are the same for every resource with the same attribute
    values, so they are cached by (map, system, code, those values). Only ``mapped`` ones,
    because the other outcomes log a note or raise for each occurrence.
    """

    def __init__(self, profile: Profile, op: Operation) -> None:
        self.profile = profile
        self.op = op
        self.notes: list[Note] = []
        self.cache: dict[tuple[str, str, str], _Targets] = {}
        #: Codes whose translation read the attributes, and their results by attribute values.
        self.conditional: set[tuple[str, str, str]] = set()
        self.by_context: dict[tuple[tuple[str, str, str], Hashable], _Targets] = {}

    def resource(self, resource: Any) -> Any:
        if type(resource) is not dict:
            return resource
        kind = resource.get("resourceType")
        out = resource
        if kind == "Bundle":
            out = rewrite(out, ("entry", "resource"), self.resource)
        if "contained" in out:
            out = rewrite(out, ("contained",), self.resource)
        bound = self.profile.elements.get(kind) if isinstance(kind, str) else None
        contexts: dict[str, LazyContext] = {}
        for binding, path in bound or ():
            context = contexts.get(binding.canonical)
            if context is None:
                context = contexts[binding.canonical] = LazyContext(resource, binding)
            out = rewrite(out, path.steps, partial(self.element, binding, path, context))
        return out

    def element(self, binding: Binding, path: ElementPath, context: LazyContext, cc: Any) -> Any:
        """Translate one CodeableConcept found at ``path``."""
        codings = cc.get("coding") if type(cc) is dict else None
        if type(codings) is not list:
            return cc
        index = binding.index(self.op)
        present: set[tuple[str, str]] = set()
        systems: set[str] = set()
        for coding in codings:
            system, code = (
                (coding.get("system"), coding.get("code")) if type(coding) is dict else (None, None)
            )
            if type(system) is str and system:
                systems.add(system)
                if type(code) is str and code:
                    present.add((system, code))
        sources = sorted(key for key in present if key[0] in index.source_systems)
        if not sources or (self.op == "write" and systems & index.target_systems):
            return cc
        added: list[dict[str, Any]] = []
        for system, code in sources:
            for concept, conceptmap, relationship in self.targets(
                binding, path, context, system, code
            ):
                if concept.key in present:
                    continue
                if concept.system in systems:
                    self.note(path, system, code, None, f"already has a {concept.system} code")
                    continue
                added.append(added_coding(concept, conceptmap, relationship))
                present.add(concept.key)
                systems.add(concept.system)
        return {**cc, "coding": [*codings, *added]} if added else cc

    def targets(
        self, binding: Binding, path: ElementPath, context: LazyContext, system: str, code: str
    ) -> tuple[tuple[Concept, str, str], ...]:
        key = (binding.canonical, system, code)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        if key in self.conditional:
            hit = self.by_context.get((key, context.values_key()))
            if hit is not None:
                return hit
        auto = binding.auto(self.op)
        found = translate(binding.index(self.op), system, code, auto=auto, context=context)
        if found.status == "mapped":
            result = tuple((t.concept, t.conceptmap, t.relationship) for t in found.targets)
            if not context.read:
                self.cache[key] = result
            else:
                self.conditional.add(key)
                self.by_context[(key, context.values_key())] = result
            return result
        if found.status == "ambiguous":
            choices = ", ".join(str(t.concept) for t in found.targets)
            if self.op == "write" and self.profile.strict:
                raise UnprocessableEntity(
                    f"{path}: {system}|{code} has several upstream equivalents ({choices}); "
                    "send the upstream code as well"
                )
            self.note(path, system, code, found.status, f"several candidates ({choices})")
            return ()
        policy = binding.unmapped(self.op)
        if policy.mode == "reject" and self.op == "write":
            raise UnprocessableEntity(f"{path}: {system}|{code} has no upstream equivalent")
        if policy.mode == "reject":
            raise UpstreamError(
                f"{path}: a code in the upstream answer has no mapping (profile {self.profile.id})"
            )
        detail = (
            f"{len(found.withheld)} withheld by policy, {len(found.conditional)} conditional; "
            f"unmapped policy {policy.mode}"
        )
        self.note(path, system, code, found.status, detail)
        if policy.mode == "fixed" and policy.coding and policy.relationship:
            return ((policy.coding, binding.canonical, policy.relationship),)
        return ()

    def note(
        self, path: ElementPath, system: str, code: str, status: Status | None, detail: str
    ) -> None:
        self.notes.append(Note(str(path), f"{system}|{code}", status, detail))


class LazyContext(Mapping[str, frozenset[str]]):
    """The resource's attribute values, read on first use (only candidates with dependsOn or
    product use them); ``read`` tells whether anything did."""

    def __init__(self, resource: Any, binding: Binding) -> None:
        self._resource = resource
        self._paths = binding.spec.attributes
        self._values: Mapping[str, frozenset[str]] | None = None
        self.read = False

    def _load(self) -> Mapping[str, frozenset[str]]:
        self.read = True
        if self._values is None:
            self._values = attribute_values(self._resource, self._paths)
        return self._values

    def __getitem__(self, key: str) -> frozenset[str]:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def values_key(self) -> Hashable:
        """Every attribute value of the resource, hashable: what a translation that read the
        context depends on (besides the code)."""
        return frozenset(self._load().items())
