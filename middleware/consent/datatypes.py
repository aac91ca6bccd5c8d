"""Reading FHIR datatypes out of submitted JSON while collecting problems, not raising.

A :class:`Reader` yields what it can read and records, with a FHIRPath-like location, what a
consent rule could not be matched on: a Coding without a code, a CodeableConcept with text
only (http://hl7.org/fhir/R4/datatypes.html#CodeableConcept), a Period whose start is after its
end (invariant per-1). Values of the wrong JSON type are skipped silently: the fhir.resources
structure check reports those.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from middleware.consent.fhirtime import bounds
from middleware.consent.model import Coding, Period

__all__ = ["Reader", "items"]


def items(value: object) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(index, object) for each object in a JSON array; anything else yields nothing."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                yield index, item


class Reader:
    """Collects problems in ``problems`` as ``"<path>: <message>"`` strings."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def period(self, node: object, path: str) -> Period | None:
        """The Period at ``node`` as instant bounds, or None if there is none."""
        if not isinstance(node, Mapping):
            return None
        start, end = node.get("start"), node.get("end")
        low = bounds(start) if isinstance(start, str) else None
        high = bounds(end) if isinstance(end, str) else None
        if low is not None and high is not None and low[0] >= high[1]:
            self.fail(path, "start must not be after end (FHIR invariant per-1)")
        return Period(start=low[0] if low else None, end=high[1] if high else None)

    def codings(self, value: object, path: str, *, strict: bool = True) -> Iterator[Coding]:
        """Yield (system, code) of each Coding in a JSON array."""
        for i, coding in items(value):
            code, system = coding.get("code"), coding.get("system", "")
            if isinstance(code, str) and code and isinstance(system, str):
                yield system, code
            elif strict:
                self.fail(f"{path}[{i}]", "a coding without a code cannot be matched")

    def concepts(self, value: object, path: str, *, strict: bool = True) -> Iterator[Coding]:
        """Yield the codings of each CodeableConcept in a JSON array."""
        for i, concept in items(value):
            yield from self.concept(concept, f"{path}[{i}]", strict=strict)

    def concept(self, value: object, path: str, *, strict: bool = True) -> Iterator[Coding]:
        """Yield the codings of one CodeableConcept (nothing if ``value`` is not an object)."""
        if not isinstance(value, Mapping):
            return
        codings = value.get("coding")
        if strict and not codings:
            self.fail(path, "needs a coding; text alone cannot be matched")
        yield from self.codings(codings, f"{path}.coding", strict=strict)
