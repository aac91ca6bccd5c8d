"""Apply ``_summary`` and ``_elements`` at the gateway, after consent is decided (pure).

Consent is decided over each resource's patient compartment (``subject``, ``patient`` ...).
A subset asked of the upstream could strip exactly those references, and a resource that
cannot be judged cannot be released. So the pipeline takes both parameters out of the upstream
query (:func:`split_subset`), judges full resources, and then subsets what it releases
(:func:`apply_subset_to_answer`). FHIR R4 search.html:

==================  ===========================================================================
parameter           what a subsetted resource keeps (always ``resourceType``, ``id``, ``meta``)
==================  ===========================================================================
``_summary=true``   the type's ``isSummary`` elements (#summary), plus its mandatory elements;
                    ``contained``, ``text`` and ``extension`` are not summary in R4, so go
``_summary=text``   ``text`` and the type's mandatory elements
``_summary=data``   everything but ``text``
``_summary=false``  everything (nothing is subsetted, nothing is tagged)
``_elements=a,b``   the listed elements and the type's mandatory ones (#elements: "Servers
                    SHOULD always return mandatory elements whether they are requested or not")
==================  ===========================================================================

Decisions the spec leaves open, taken here:

- Subsetting is of top-level elements only (the tables in
  :mod:`middleware.fhir.summary_data`); a kept element is kept whole.
- A primitive's ``_name`` companion (R4 json.html#primitive) goes with ``name``.
- ``_elements`` names a choice element by its base name (``value`` keeps ``valueQuantity``)
  or by one JSON name (``valueQuantity``). A name may carry its type (``Observation.code``),
  which then applies to that type only; unqualified names apply to every type.
- A type the tables do not know keeps only ``resourceType``, ``id`` and ``meta`` (and
  ``text`` for ``_summary=text``): without its definition, less data is the safe guess.
  ``_summary=data`` needs no definition and removes ``text`` from any type.
- Every subsetted resource is tagged ``SUBSETTED`` (#summary, #elements: "Servers SHOULD mark
  the resources with the tag SUBSETTED"), so that it is not taken for the whole resource.
- In a searchset only the matches are subsetted; ``include`` and ``outcome`` entries stay
  whole (#elements: the list of elements does not apply to included resources).
- ``_summary=count`` is not a subset: :func:`split_subset` leaves it in the query for the
  stage that refuses or forwards counts.

Errors are :class:`~middleware.errors.BadRequest` (400) naming the parameter, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from middleware.errors import BadRequest
from middleware.fhir.summary_data import (
    CHOICE_ELEMENTS,
    CHOICE_SUFFIXES,
    MANDATORY_ELEMENTS,
    SUMMARY_ELEMENTS,
)

__all__ = [
    "SUBSETTED_TAG",
    "SUBSET_PARAMS",
    "SUMMARY_VALUES",
    "Subset",
    "apply_subset",
    "apply_subset_to_answer",
    "split_subset",
]

_SUMMARY: Final = "_summary"
_ELEMENTS: Final = "_elements"
#: The search result parameters this module takes over from the upstream.
SUBSET_PARAMS: Final = frozenset({_SUMMARY, _ELEMENTS})
#: The ``_summary`` values that subset (``count`` is not one: see the module docstring).
SUMMARY_VALUES: Final = frozenset({"true", "text", "data", "false"})
_COUNT: Final = "count"
#: The tag a subsetted resource carries (R4 search.html#summary; v3 ObservationValue).
SUBSETTED_TAG: Final[Mapping[str, str]] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS: Final = frozenset({"resourceType", "id", "meta"})
_TEXT: Final = "text"
#: An ``_elements`` item: an element name, optionally qualified by a resource type.
_ITEM: Final = re.compile(r"(?:[A-Z][A-Za-z0-9]*\.)?[A-Za-z][A-Za-z0-9_]*")
#: Bundle types whose entries are the answer (a searchset's matches, a history's versions);
#: any other Bundle is itself the resource that was read.
_ENTRY_BUNDLES: Final = frozenset({"searchset", "history"})
_SUBSETTED_MODES: Final = frozenset({"match", None})


@dataclass(frozen=True, slots=True)
class Subset:
    """What the client asked for: exactly one of a ``_summary`` value (one of
    :data:`SUMMARY_VALUES`) and a non-empty set of ``_elements`` items. Validated on
    construction (``ValueError``): client input goes through :func:`split_subset`."""

    summary: str | None = None
    elements: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if (self.summary is None) == (self.elements is None):
            raise ValueError("a Subset has exactly one of summary and elements")
        if self.summary is not None and self.summary not in SUMMARY_VALUES:
            raise ValueError(f"not a subsetting _summary value: {self.summary!r}")
        if self.elements is not None and not (
            self.elements and all(_ITEM.fullmatch(item) for item in self.elements)
        ):
            raise ValueError("_elements must be non-empty element names")


def split_subset(
    params: Sequence[tuple[str, str]],
) -> tuple[Subset | None, list[tuple[str, str]]]:
    """``(subset, rest)``: the ``_summary``/``_elements`` request taken out of decoded search
    params, and the other params unchanged and in order. ``subset`` is ``None`` when neither
    is given, or for ``_summary=count``, which stays in ``rest``.

    Raises :class:`BadRequest` for a repeated ``_summary`` or ``_elements``, both together, a
    modifier on either, an unknown ``_summary`` value (values and names are case-sensitive),
    or an empty or malformed ``_elements`` item.
    """
    summaries: list[str] = []
    elements: list[str] = []
    rest: list[tuple[str, str]] = []
    for name, value in params:
        if name.partition(":")[0] in SUBSET_PARAMS and name not in SUBSET_PARAMS:
            # search.html defines no modifier for result parameters; forwarding one could
            # make the upstream subset what the gateway must judge whole.
            raise BadRequest(f"{name.partition(':')[0]} takes no modifier")
        if name == _SUMMARY:
            summaries.append(value)
            if value == _COUNT:
                rest.append((name, value))
        elif name == _ELEMENTS:
            elements.append(value)
        else:
            rest.append((name, value))
    for given, param in ((summaries, _SUMMARY), (elements, _ELEMENTS)):
        if len(given) > 1:
            raise BadRequest(f"{param} is repeated")
    if summaries and elements:
        raise BadRequest(f"{_SUMMARY} and {_ELEMENTS} cannot be used together")
    if summaries:
        if summaries[0] == _COUNT:
            return None, rest
        if summaries[0] not in SUMMARY_VALUES:
            raise BadRequest(f"{_SUMMARY} must be one of true, text, data, count, false")
        return Subset(summary=summaries[0]), rest
    if elements:
        items = elements[0].split(",")
        if not all(_ITEM.fullmatch(item) for item in items):
            raise BadRequest(
                f"{_ELEMENTS} must be a comma-separated list of element names, "
                "e.g. code,status or Observation.code"
            )
        return Subset(elements=frozenset(items)), rest
    return None, rest


def apply_subset(resource: dict[str, Any], subset: Subset) -> dict[str, Any]:
    """The subset view of one resource: a new dict, tagged ``SUBSETTED`` unless
    ``_summary=false``. ``resource`` is not changed; kept values other than ``meta`` are
    shared with it, not copied."""
    if subset.summary == "false":
        return dict(resource)
    if subset.summary == "data":
        return _keep(resource, lambda name: name != _TEXT)
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in SUMMARY_ELEMENTS:
        unknown = (_ALWAYS | {_TEXT}) if subset.summary == "text" else _ALWAYS
        return _keep(resource, unknown.__contains__)
    wanted = _ALWAYS | MANDATORY_ELEMENTS[rtype]
    if subset.summary == "text":
        return _keep(resource, (wanted | {_TEXT}).__contains__)
    if subset.elements is None:  # _summary=true: false, data and text are handled above
        return _keep(resource, (wanted | SUMMARY_ELEMENTS[rtype]).__contains__)
    listed = _listed(subset.elements, rtype)
    choices = CHOICE_ELEMENTS.get(rtype, frozenset()) & listed
    wanted |= listed
    return _keep(resource, lambda name: name in wanted or _of(name, choices))


def apply_subset_to_answer(document: Any, subset: Subset) -> Any:
    """The answer with :func:`apply_subset` applied to what it returns: a plain resource, or
    the ``entry[].resource`` of a searchset's matches (``search.mode`` ``match`` or absent)
    and of a history's versions. Bundle-level elements, ``include`` and ``outcome`` entries
    and entries without a resource are untouched; any other Bundle is the resource read.
    ``document`` is not changed; it is returned as is for ``_summary=false`` and when it is
    not a JSON object."""
    if not isinstance(document, dict) or subset.summary == "false":
        return document
    if document.get("resourceType") != "Bundle" or document.get("type") not in _ENTRY_BUNDLES:
        return apply_subset(document, subset)
    entries = document.get("entry")
    if not isinstance(entries, list):
        return document
    return {**document, "entry": [_subset_entry(entry, subset) for entry in entries]}


def _subset_entry(entry: Any, subset: Subset) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
        return entry
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, dict) else None
    if mode not in _SUBSETTED_MODES:
        return entry
    return {**entry, "resource": apply_subset(entry["resource"], subset)}


def _base(name: str) -> str:
    """The element a JSON property belongs to: ``_status`` (a primitive's id and extensions,
    R4 json.html#primitive) belongs to ``status``."""
    return name[1:] if name.startswith("_") else name


def _listed(elements: frozenset[str], rtype: str) -> frozenset[str]:
    """The ``_elements`` items that apply to ``rtype``, without their type qualifier."""
    names: set[str] = set()
    for item in elements:
        qualifier, _, name = item.rpartition(".")
        if qualifier in ("", rtype):
            names.add(name)
    return frozenset(names)


def _of(name: str, choices: frozenset[str]) -> bool:
    """Whether JSON property ``name`` is a typed form of one of the choice elements
    ``choices`` (``valueQuantity`` of ``value``; R4 formats.html#choice)."""
    return any(name.startswith(base) and name[len(base) :] in CHOICE_SUFFIXES for base in choices)


def _keep(resource: Mapping[str, Any], keep: Callable[[str], bool]) -> dict[str, Any]:
    """A fresh dict of the properties of ``resource`` whose element ``keep`` accepts, tagged."""
    return _tag({name: value for name, value in resource.items() if keep(_base(name))})


def _tag(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` (a fresh dict) with a fresh ``meta`` carrying :data:`SUBSETTED_TAG` once."""
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    tags = meta.get("tag")
    tags = list(tags) if isinstance(tags, list) else []
    if not any(_is_subsetted(tag) for tag in tags):
        tags.append(dict(SUBSETTED_TAG))
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def _is_subsetted(tag: Any) -> bool:
    return isinstance(tag, dict) and all(
        tag.get(key) == SUBSETTED_TAG[key] for key in ("system", "code")
    )
