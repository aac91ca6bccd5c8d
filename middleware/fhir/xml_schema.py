"""What FHIR XML needs to know about each type that JSON does not say: element order, which
elements repeat, and which primitives are JSON numbers or booleans.

FHIR XML (R4 xml.html) writes elements in the order of the StructureDefinition and repeats an
element for each item of a list; FHIR JSON (R4 json.html) writes a list as an array and
numbers and booleans without quotes. Neither direction can be done from the document alone, so
the order and cardinality come from the ``fhir.resources`` R4B models (``elements_sequence``
and field annotations, through ``fhir_core``'s type helpers). R4B has R4's structure for the
resources clinical exchanges carry; the models are used only as this table, never to validate
or serialise (they rewrite decimals: ``1.50`` becomes ``1.5``, ``0.000001`` becomes ``1e-06``).

Names come from clients (an XML root element) and from upstream answers: every lookup first
checks the name against the fixed set of types the models define (:data:`_KNOWN`), so the
caches below hold at most that many entries whatever is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir_core.utils import get_fhir_type_name, is_list_type, is_primitive_type

__all__ = ["Element", "Kind", "elements", "is_resource_type"]

Kind = Literal["string", "number", "boolean", "xhtml", "complex", "resource"]

#: FHIR primitive types written as JSON numbers (R4 json.html §2.6.2); every other primitive
#: is a JSON string but ``boolean``.
_NUMBERS: Final = frozenset({"integer", "positiveInt", "unsignedInt", "decimal"})
#: The version prefix ``fhir_core`` files the R4B types under.
_PREFIX: Final = "R4."
#: Every type name the models define (``fhirtypes`` names each ``<Name>Type``): the only names
#: ever looked up or cached.
_KNOWN: Final = frozenset(
    name[:-4] for name in dir(fhirtypes) if name.endswith("Type") and name[:1].isupper()
)


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a type: its JSON/XML name, whether it repeats, what it holds, and for a
    ``complex`` element the name of its type (a datatype or a backbone element)."""

    name: str
    many: bool
    kind: Kind
    type_name: str | None = None


def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a resource type the models know (an XML root or contained
    resource's element name)."""
    return name in _KNOWN and _is_resource_type(name)


def elements(type_name: str) -> Mapping[str, Element] | None:
    """The elements of ``type_name`` in FHIR order, by name; ``None`` for an unknown type."""
    return _elements(type_name) if type_name in _KNOWN else None


@cache
def _is_resource_type(name: str) -> bool:
    model = _model(name)
    return model is not None and hasattr(model, "get_resource_type") and _is_resource(model)


@cache
def _elements(type_name: str) -> Mapping[str, Element] | None:
    model = _model(type_name)
    if model is None:
        return None
    aliases = model.get_alias_mapping()
    table: dict[str, Element] = {}
    for name in model.elements_sequence():
        field = model.model_fields[aliases[name]]
        table[name] = _element(name, field)
    return table


def _element(name: str, field: Any) -> Element:
    many = is_list_type(field)
    try:
        fhir_type = get_fhir_type_name(field, prefix=_PREFIX)
    except ValueError:
        fhir_type = None
    if is_primitive_type(field):
        if fhir_type == "xhtml":
            return Element(name, many, "xhtml")
        if fhir_type == "boolean":
            return Element(name, many, "boolean")
        return Element(name, many, "number" if fhir_type in _NUMBERS else "string")
    if fhir_type == "Resource":
        return Element(name, many, "resource")
    return Element(name, many, "complex", fhir_type)


def _is_resource(model: Any) -> bool:
    return any(base.__name__ == "Resource" for base in model.__mro__)


def _model(name: str) -> Any:
    try:
        return get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
