"""Per-value conversions used by the ``rename`` step, named from the R4 side to the R5 side.

Each takes a value of one release and returns the other's, or :data:`ABSENT` when the value
has nothing to carry over (an R5 CodeableReference without a concept, going to an R4
CodeableConcept). They approximate freely: the engine carries whatever does not survive the
round trip (:mod:`middleware.mapping.versions.engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from middleware.mapping.versions.carry import Release, Spec

__all__ = ["ABSENT", "ITEMS", "NEEDS_SYSTEM", "WHOLE", "Item", "as_list", "single"]


class _Absent:
    """No value (an item transform found nothing to carry over)."""


ABSENT: Final = _Absent()
Item = Callable[[Any, Release, Mapping[str, str]], Any]


def as_list(value: Any) -> list[Any]:
    return list(value) if type(value) is list else [] if value is None else [value]


def single(values: list[Any], spec: Spec) -> Any:
    """``values`` shaped as ``spec`` says: the list, its first item, or None when empty."""
    if spec.many:
        return values or None
    return values[0] if values else None


def _only(mapping: Any, key: str) -> Any:
    return mapping.get(key, ABSENT) if type(mapping) is dict else ABSENT


def _coding_concept(value: Any, target: Release, _: Mapping[str, str]) -> Any:
    if target == "R5":
        return {"coding": [value]}
    codings = _only(value, "coding")
    return codings[0] if type(codings) is list and codings else ABSENT


def _code_concept(value: Any, target: Release, params: Mapping[str, str]) -> Any:
    if target == "R5":
        return {"coding": [{"system": params["system"], "code": value}]}
    codings = _only(value, "coding")
    for coding in codings if type(codings) is list else ():
        if type(coding) is dict and coding.get("system") == params["system"] and "code" in coding:
            return coding["code"]
    return ABSENT


def _code_coding(value: Any, target: Release, params: Mapping[str, str]) -> Any:
    if target == "R5":
        return {"system": params["system"], "code": value}
    if type(value) is dict and value.get("system") == params["system"] and "code" in value:
        return value["code"]
    return ABSENT


def _wrap(key: str) -> Item:
    def item(value: Any, target: Release, _: Mapping[str, str]) -> Any:
        return {key: value} if target == "R5" else _only(value, key)

    return item


def _string_text(value: Any, target: Release, _: Mapping[str, str]) -> Any:
    # R4 AuditEvent.entity.detail.type (string, required) <-> R5 CodeableConcept: its text, or
    # else the first coding's display or code.
    if target == "R5":
        return {"text": value}
    if isinstance(_only(value, "text"), str):
        return value["text"]
    codings = _only(value, "coding")
    for coding in codings if type(codings) is list else ():
        for key in ("display", "code"):
            if type(coding) is dict and isinstance(coding.get(key), str):
                return coding[key]
    return ABSENT


def _datetime_date(value: Any, target: Release, _: Mapping[str, str]) -> Any:
    # R4 Consent.dateTime -> R5 Consent.date: the date part (a date is a valid dateTime back).
    return value[:10] if target == "R5" and isinstance(value, str) else value


def _integer_string(value: Any, target: Release, _: Mapping[str, str]) -> Any:
    # R5 integer64 is a JSON string (http://hl7.org/fhir/R5/json.html#primitive).
    if target == "R5":
        return str(value) if type(value) is int else ABSENT
    return int(value) if isinstance(value, str) and value.isdigit() else ABSENT


#: Per-item conversions, named from the R4 side to the R5 side.
ITEMS: Final[Mapping[str, Item]] = {
    "coding-concept": _coding_concept,
    "code-concept": _code_concept,
    "code-coding": _code_coding,
    "concept-reference": _wrap("concept"),
    "reference-reference": _wrap("reference"),
    "string-display": _wrap("display"),
    "string-text": _string_text,
    "coding-profile": _wrap("valueCoding"),
    "datetime-date": _datetime_date,
    "integer-string": _integer_string,
}
NEEDS_SYSTEM: Final = frozenset({"code-concept", "code-coding"})


def _codings_concept(value: Any, target: Release, _: Mapping[str, str]) -> Any:
    if target == "R5":
        return {"coding": list(value)} if type(value) is list and value else ABSENT
    codings = _only(value, "coding")
    return list(codings) if type(codings) is list and codings else ABSENT


#: Whole-value conversions (list <-> single), named from the R4 side to the R5 side.
WHOLE: Final[Mapping[str, Item]] = {"codings-concept": _codings_concept}
