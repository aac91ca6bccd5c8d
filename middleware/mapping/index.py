"""Forward and reverse lookup indexes built from the same ConceptMaps, and ``other-map`` links.

A lookup is one dict access on ``(system, code)`` plus, for a code a group does not list, that
group's ``unmapped`` rule (R5 ConceptMap ``group.unmapped``: ``use-source-code``, ``fixed``,
``other-map``). ``other-map`` continues in the other map's forward index; the links are resolved
once, at load, where a cycle (a map reaching itself through ``other-map``) is an error.

The reverse index holds each explicit ``element -> target`` pair read backwards: the
relationship is inverted (:func:`~middleware.mapping.model.inverse`) and ``dependsOn`` and
``product`` swap places (what the forward map needed becomes what the reverse map must find
already true). ``group.unmapped`` is defined for source codes only, so it has no reverse.
Entries that do not survive the reversal faithfully are listed as :class:`Irreversible`:
several source codes sharing one target (``many-to-one``) and relationships other than
``equivalent`` (``not-equivalent``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from middleware.mapping.conceptmap import ConceptMap, Unmapped
from middleware.mapping.model import Concept, Target, inverse

__all__ = ["Fallback", "Index", "Indexes", "InvalidMapSet", "Irreversible", "Lookup", "build"]


class InvalidMapSet(ValueError):
    """The maps do not fit together (a missing or cyclic ``other-map``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Every candidate for one code (before any policy), and whether the map says "no map"."""

    targets: tuple[Target, ...] = ()
    no_map: bool = False


@dataclass(frozen=True, slots=True)
class Fallback:
    """One group's ``unmapped`` rule, for the source codes the group does not list."""

    listed: frozenset[str]
    rule: Unmapped
    target: Concept  # system and version of the group's target; code unused
    fixed: Target | None
    other: Index | None


@dataclass(frozen=True, slots=True)
class Index:
    """One direction of one ConceptMap: ``(system, code)`` -> candidates."""

    conceptmap: str
    direction: Literal["forward", "reverse"]
    entries: Mapping[tuple[str, str], tuple[Target, ...]]
    no_map: frozenset[tuple[str, str]]
    fallbacks: Mapping[str, tuple[Fallback, ...]]
    source_systems: frozenset[str]
    target_systems: frozenset[str]

    def lookup(self, system: str, code: str) -> Lookup:
        """All candidates for ``system|code``: explicit ones, then each group's unmapped rule."""
        found = self.entries.get((system, code), ())
        no_map = (system, code) in self.no_map
        for fallback in self.fallbacks.get(system, ()):
            if code in fallback.listed:
                continue
            rule = fallback.rule
            if fallback.fixed is not None:
                found += (fallback.fixed,)
            elif rule.mode == "use-source-code" and rule.relationship is not None:
                concept = Concept(fallback.target.system, code, None, fallback.target.version)
                found += (
                    Target(concept, rule.relationship, self.conceptmap, via="use-source-code"),
                )
            elif fallback.other is not None:
                further = fallback.other.lookup(system, code)
                found += further.targets
                no_map = no_map or further.no_map
        return Lookup(found, no_map)


@dataclass(frozen=True, slots=True)
class Irreversible:
    """A forward entry whose reverse is not faithful; reported at load, not an error."""

    kind: Literal["many-to-one", "not-equivalent"]
    conceptmap: str
    target: Concept
    sources: tuple[Concept, ...]
    relationship: str

    def __str__(self) -> str:
        sources = ", ".join(str(s) for s in self.sources)
        if self.kind == "many-to-one":
            return (
                f"{self.conceptmap}: {self.target} is the target of {sources}; "
                "its reverse is ambiguous"
            )
        return (
            f"{self.conceptmap}: {sources} -> {self.target} is '{self.relationship}'; "
            "its reverse is not equivalent"
        )


@dataclass(frozen=True, slots=True)
class Indexes:
    """Both directions of every map in a set, keyed by ``url|version``."""

    forward: Mapping[str, Index]
    reverse: Mapping[str, Index]
    irreversible: Mapping[str, tuple[Irreversible, ...]]


def build(maps: Iterable[ConceptMap]) -> Indexes:
    """Index ``maps`` both ways; resolve every ``other-map`` among them.

    ``otherMap`` may be ``url|version`` or a bare url that names exactly one map of the set.
    Raises :class:`InvalidMapSet` if a target is missing, ambiguous or part of a cycle.
    """
    by_canonical = {m.canonical: m for m in maps}
    problems: list[str] = []
    links = {c: _links(m, by_canonical, problems) for c, m in by_canonical.items()}
    order = _topological(links, problems)
    if problems:
        raise InvalidMapSet(problems)
    forward: dict[str, Index] = {}
    for canonical in order:
        forward[canonical] = _forward(by_canonical[canonical], links[canonical], forward)
    return Indexes(
        forward=forward,
        reverse={c: _reverse(m) for c, m in by_canonical.items()},
        irreversible={c: _irreversible(m) for c, m in by_canonical.items()},
    )


def _links(
    cm: ConceptMap, by_canonical: Mapping[str, ConceptMap], problems: list[str]
) -> dict[str, str]:
    """otherMap as written -> canonical of the loaded map it names."""
    out: dict[str, str] = {}
    for group in cm.groups:
        ref = group.unmapped.other_map if group.unmapped else None
        if ref is None:
            continue
        matches = [c for c in by_canonical if c == ref or c.split("|", 1)[0] == ref]
        if len(matches) == 1:
            out[ref] = matches[0]
        else:
            why = "is not loaded" if not matches else f"names several: {', '.join(matches)}"
            problems.append(f"{cm.canonical}: other-map {ref} {why}; pin it in the profile")
    return out


def _topological(links: Mapping[str, Mapping[str, str]], problems: list[str]) -> list[str]:
    """Maps ordered so that each comes after the maps it reaches; report every cycle."""
    order: list[str] = []
    state: dict[str, Literal["open", "done"]] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "done":
            return
        if state.get(node) == "open":
            cycle = [*trail[trail.index(node) :], node]
            problems.append("other-map cycle: " + " -> ".join(cycle))
            return
        state[node] = "open"
        for nxt in links.get(node, {}).values():
            visit(nxt, [*trail, node])
        state[node] = "done"
        order.append(node)

    for node in links:
        visit(node, [])
    return order


def _forward(cm: ConceptMap, links: Mapping[str, str], built: Mapping[str, Index]) -> Index:
    entries: dict[tuple[str, str], tuple[Target, ...]] = defaultdict(tuple)
    for e in cm.entries:
        target = Target(e.target, e.relationship, cm.canonical, e.depends_on, e.product)
        entries[e.source.key] += (target,)
    fallbacks: dict[str, tuple[Fallback, ...]] = defaultdict(tuple)
    for group in cm.groups:
        rule = group.unmapped
        if rule is None:
            continue
        system = Concept(group.target, "", None, group.target_version)
        fixed = None
        if rule.fixed is not None and rule.relationship is not None:
            fixed = Target(rule.fixed, rule.relationship, cm.canonical, via="fixed")
        other = built[links[rule.other_map]] if rule.other_map else None
        fallbacks[group.source] += (Fallback(group.codes, rule, system, fixed, other),)
    return Index(
        conceptmap=cm.canonical,
        direction="forward",
        entries=dict(entries),
        no_map=frozenset((g.source, code) for g in cm.groups for code in g.no_map),
        fallbacks=dict(fallbacks),
        source_systems=frozenset(g.source for g in cm.groups),
        target_systems=frozenset(g.target for g in cm.groups),
    )


def _reverse(cm: ConceptMap) -> Index:
    entries: dict[tuple[str, str], tuple[Target, ...]] = defaultdict(tuple)
    for e in cm.entries:
        source = Concept(e.source.system, e.source.code, e.source.display)
        back = Target(source, inverse(e.relationship), cm.canonical, e.product, e.depends_on)
        entries[e.target.key] += (back,)
    return Index(
        conceptmap=cm.canonical,
        direction="reverse",
        entries=dict(entries),
        no_map=frozenset(),
        fallbacks={},
        source_systems=frozenset(g.target for g in cm.groups),
        target_systems=frozenset(g.source for g in cm.groups),
    )


def _irreversible(cm: ConceptMap) -> tuple[Irreversible, ...]:
    out: list[Irreversible] = []
    sources: dict[tuple[str, str], dict[tuple[str, str], Concept]] = defaultdict(dict)
    targets: dict[tuple[str, str], Concept] = {}
    for e in cm.entries:
        sources[e.target.key].setdefault(e.source.key, e.source)
        targets.setdefault(e.target.key, e.target)
        if e.relationship != "equivalent":
            out.append(
                Irreversible("not-equivalent", cm.canonical, e.target, (e.source,), e.relationship)
            )
    for key, found in sources.items():
        if len(found) > 1:
            out.append(
                Irreversible("many-to-one", cm.canonical, targets[key], tuple(found.values()), "")
            )
    return tuple(out)
