"""Translate one code through an index under a policy.

The index gives every candidate (:meth:`Index.lookup`); this module decides which of them
apply. A candidate applies when its ``dependsOn`` and ``product`` agree with the context (R5
ConceptMap ``group.element.target.dependsOn``: "this mapping is only applicable if the
specified data attribute can be resolved, and it has the specified value") and its
relationship is one the policy applies automatically. Several applicable candidates in one
target system make the result ``ambiguous``: this module never picks one of them.
"""

from __future__ import annotations

from collections.abc import Collection

from middleware.mapping.index import Index
from middleware.mapping.model import (
    Concept,
    Context,
    Relationship,
    Status,
    Target,
    Translation,
)

__all__ = ["translate"]


def translate(
    index: Index,
    system: str,
    code: str,
    *,
    auto: Collection[Relationship],
    context: Context | None,
) -> Translation:
    """Translate ``system|code``; ``auto`` lists the relationships applied automatically.

    ``context`` holds the attribute values of the resource the code sits in; ``None`` means
    there is no resource (a search parameter), so every candidate with ``dependsOn`` or
    ``product`` is set aside as ``conditional`` rather than guessed.

    Status: ``mapped`` if some candidate applies and no target system has two different
    ones; ``ambiguous`` if one has; ``no-map`` if the map states there is no target and
    nothing else applies; otherwise ``unmapped`` (``withheld`` and ``conditional`` say why).
    """
    source = Concept(system, code)
    lookup = index.lookup(system, code)
    allowed: list[Target] = []
    withheld: list[Target] = []
    conditional: list[Target] = []
    seen: set[tuple[str, str]] = set()
    for target in lookup.targets:
        if target.concept.key in seen:
            continue
        if target.conditional:
            if context is None:
                conditional.append(target)
                continue
            if not target.holds(context):
                continue
        seen.add(target.concept.key)
        (allowed if target.relationship in auto else withheld).append(target)
    if allowed:
        systems = [t.concept.system for t in allowed]
        status: Status = "ambiguous" if len(set(systems)) < len(systems) else "mapped"
        return Translation(status, source, tuple(allowed), tuple(withheld), tuple(conditional))
    if lookup.no_map and not withheld and not conditional:
        return Translation("no-map", source)
    return Translation("unmapped", source, (), tuple(withheld), tuple(conditional))
