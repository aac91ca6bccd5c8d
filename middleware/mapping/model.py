"""The vocabulary of the mapping engine: relationships, concepts, targets, translations.

Relationships are the R5 ``ConceptMapRelationship`` codes
(http://hl7.org/fhir/R5/codesystem-concept-map-relationship.html). A relationship always reads
*from the source of a lookup to its target*: the reverse index stores the inverse
(:func:`inverse`), so ``source-is-narrower-than-target`` read backwards is
``source-is-broader-than-target``. ``not-related-to`` is an explicit negative assertion and
never becomes a :class:`Target`.

Every value here is a frozen dataclass or a literal; nothing does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

__all__ = [
    "MARKER_URL",
    "RELATIONSHIPS",
    "Attribute",
    "Concept",
    "Context",
    "Operation",
    "Relationship",
    "Status",
    "Target",
    "Translation",
    "Via",
    "inverse",
    "normalize_value",
]

Relationship = Literal[
    "related-to",
    "equivalent",
    "source-is-narrower-than-target",
    "source-is-broader-than-target",
    "not-related-to",
]
RELATIONSHIPS: Final[frozenset[str]] = frozenset(get_args(Relationship))

#: Where a mapping is used: on upstream answers, on client search parameters, on client writes.
Operation = Literal["response", "search", "write"]

#: ``mapped``: one target per target system may be applied; ``ambiguous``: some target system
#: has several candidates (never resolved silently); ``no-map``: the map says there is no
#: target (R5 ``noMap``, R4 ``unmatched``/``disjoint``); ``unmapped``: nothing applicable.
Status = Literal["mapped", "ambiguous", "no-map", "unmapped"]

#: How a target was reached: an explicit ``group.element``, or a ``group.unmapped`` mode.
Via = Literal["element", "use-source-code", "fixed"]

#: Values the resource holds for each ConceptMap attribute (``dependsOn``/``product``):
#: attribute name -> normalised values (see :class:`Attribute`).
Context = Mapping[str, frozenset[str]]

#: The extension marking a Coding the gateway added. Complex extension; sub-extensions
#: ``conceptmap`` (valueCanonical ``url|version`` of the map that produced the coding) and
#: ``relationship`` (valueCode, read from the coding next to it to the added coding).
MARKER_URL: Final = "https://consentry.dev/fhir/StructureDefinition/translated-coding"

_INVERSE: Final[Mapping[str, Relationship]] = {
    "related-to": "related-to",
    "equivalent": "equivalent",
    "source-is-narrower-than-target": "source-is-broader-than-target",
    "source-is-broader-than-target": "source-is-narrower-than-target",
    "not-related-to": "not-related-to",
}


def inverse(relationship: Relationship) -> Relationship:
    """The relationship read from target to source (R5 ConceptMapRelationship definitions)."""
    return _INVERSE[relationship]


def normalize_value(value: Any) -> str:
    """The string an :class:`Attribute` compares: a code or string as written, a boolean as
    ``true``/``false``, a Coding (any mapping with ``code``) as ``system|code``, or ``code``
    when it has no system."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        code = str(value.get("code", ""))
        return f"{value['system']}|{code}" if value.get("system") else code
    return str(value)


@dataclass(frozen=True, slots=True)
class Concept:
    """A code in a code system. ``version`` is the code system version, if the map names one."""

    system: str
    code: str
    display: str | None = None
    version: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.system, self.code)

    def __str__(self) -> str:
        return f"{self.system}|{self.code}"


@dataclass(frozen=True, slots=True)
class Attribute:
    """One ``dependsOn`` or ``product`` condition: ``attribute`` must hold ``value``.

    Values are normalised by :func:`normalize_value`.
    """

    attribute: str
    value: str

    def holds(self, context: Context) -> bool:
        return self.value in context.get(self.attribute, frozenset())


@dataclass(frozen=True, slots=True)
class Target:
    """One candidate result of a lookup.

    ``relationship`` reads from the looked-up code to :attr:`concept` (already inverted for a
    reverse lookup). ``depends_on`` and ``product`` must both agree with the resource for the
    target to apply: the gateway never writes a product, so a product that the rest of the
    resource does not already state makes the target inapplicable. ``conceptmap`` is the
    ``url|version`` of the map that produced it (the other map, after ``other-map``).
    """

    concept: Concept
    relationship: Relationship
    conceptmap: str
    depends_on: tuple[Attribute, ...] = ()
    product: tuple[Attribute, ...] = ()
    via: Via = "element"

    @property
    def conditional(self) -> bool:
        return bool(self.depends_on or self.product)

    def holds(self, context: Context) -> bool:
        return all(a.holds(context) for a in self.depends_on) and all(
            a.holds(context) for a in self.product
        )


@dataclass(frozen=True, slots=True)
class Translation:
    """The outcome of translating one code under a policy.

    ``targets``: what may be applied (``mapped``: at most one per target system) or the
    competing candidates (``ambiguous``). ``withheld``: candidates whose relationship the
    policy does not apply automatically. ``conditional``: candidates that depend on
    attributes the caller could not supply (a search has no resource to read them from).
    """

    status: Status
    source: Concept
    targets: tuple[Target, ...] = ()
    withheld: tuple[Target, ...] = ()
    conditional: tuple[Target, ...] = ()
