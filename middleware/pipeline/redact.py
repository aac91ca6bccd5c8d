"""Redaction by security label (HL7 FHIR DS4P), for a consent decision's obligations.

A consent decision can oblige the gateway to remove everything carrying some security labels
(``(system, code)`` pairs) before an answer leaves. :func:`redact` does that to one resource
(the caller applies it to each resource of an answer):

- a resource whose ``meta.security`` carries one of the labels is withheld whole (``None``);
- otherwise a copy is returned (the input is never changed) without every element that
  carries one of the labels:

  - a JSON object at any depth carrying a DS4P inline security label extension
    (:data:`INLINE_LABEL_URL`, ``valueCoding``; DS4P IG "Inline Security Labels") in its
    ``extension`` or ``modifierExtension`` is removed from its parent array, or its key from
    its parent object;
  - a primitive's label sits in its ``_name`` sibling (FHIR R4 json.html#primitive): then the
    value goes too (``name`` and ``_name``, or the same position of both arrays), else
    removing only the label would release the value it protects;
  - a nested resource whose ``meta.security`` carries a label (a ``contained`` resource, a
    resource inside a Bundle resource) is removed likewise;
  - an array or object left empty by a removal is removed in turn (FHIR R4 json.html:
    objects and arrays are never empty);
  - when anything was removed, ``meta.security`` gains the ``REDACTED`` label of
    :data:`REDACTED` (HL7 v3 ObservationValue, used by DS4P to mark an incomplete resource),
    once.

- a resource whose root element itself carries an inline label is withheld, and so is one
  nested deeper than :data:`MAX_DEPTH` levels: what the gateway cannot read it cannot vouch
  for (fail closed).

Labels compare by system and code, each alias of a v3 code system (the retired
``http://hl7.org/fhir/v3/...`` URLs, the HL7 OIDs) read as that code system
(:func:`~middleware.consent.model.canonical_system`). Pure: no
I/O; values are plain decoded JSON, anything not a dict or list is an opaque leaf.
"""

from __future__ import annotations

from typing import Any, Final

from middleware.consent.labels import meta_list
from middleware.consent.model import canonical_system as _system
from middleware.consent.summary import INLINE_LABEL_URL

__all__ = ["INLINE_LABEL_URL", "MAX_DEPTH", "REDACTED", "redact"]

#: The label added to ``meta.security`` of a resource something was removed from.
REDACTED: Final = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "REDACTED")
#: The deepest JSON nesting :func:`redact` reads; deeper resources are withheld.
MAX_DEPTH: Final = 200

_EXTENSION_KEYS: Final = ("extension", "modifierExtension")


class _TooDeep(Exception):
    """The resource nests deeper than :data:`MAX_DEPTH`."""


class _Remove:
    """The marker :meth:`_Redactor.walk` returns for an element that must go."""


_REMOVE: Final = _Remove()


def redact(resource: dict[str, Any], labels: frozenset[tuple[str, str]]) -> dict[str, Any] | None:
    """A copy of ``resource`` without what carries ``labels``, or ``None`` to withhold it.

    See the module docstring for what is removed and when the whole resource is withheld.
    """
    redactor = _Redactor(frozenset((_system(system), code) for system, code in labels))
    if redactor.labelled(resource):
        return None
    try:
        result = redactor.walk(resource, 0)
    except _TooDeep:
        return None
    if not isinstance(result, dict):  # the root element carries an inline label
        return None
    if redactor.removed:
        _mark_redacted(result)
    return result


def _emptied(before: Any, after: Any) -> bool:
    """Whether a non-empty array or object was left empty by removals."""
    return isinstance(before, dict | list) and bool(before) and not after


class _Redactor:
    """One redaction: the wanted labels, and whether anything was removed."""

    def __init__(self, wanted: frozenset[tuple[str, str]]) -> None:
        self.wanted = wanted
        self.removed = False

    def matches(self, coding: Any) -> bool:
        if not isinstance(coding, dict):
            return False
        system, code = coding.get("system"), coding.get("code")
        return (
            isinstance(system, str)
            and isinstance(code, str)
            and (_system(system), code) in self.wanted
        )

    def labelled(self, node: dict[str, Any]) -> bool:
        """Whether the resource-level labels (``meta.security``) carry a wanted label."""
        meta = node.get("meta")
        security = meta.get("security") if isinstance(meta, dict) else None
        return isinstance(security, list) and any(self.matches(c) for c in security)

    def inline_labelled(self, element: Any) -> bool:
        """Whether the element carries a wanted DS4P inline security label extension."""
        if not isinstance(element, dict):
            return False
        for key in _EXTENSION_KEYS:
            extensions = element.get(key)
            if not isinstance(extensions, list):
                continue
            for extension in extensions:
                if (
                    isinstance(extension, dict)
                    and extension.get("url") == INLINE_LABEL_URL
                    and self.matches(extension.get("valueCoding"))
                ):
                    return True
        return False

    def walk(self, node: Any, depth: int) -> Any:
        """A copy of ``node`` without its labelled elements, or :data:`_REMOVE`."""
        if not isinstance(node, dict | list):
            return node
        if depth >= MAX_DEPTH:
            raise _TooDeep
        if isinstance(node, list):
            return self._walk_list(node, depth + 1)
        if self.inline_labelled(node) or (depth > 0 and self.labelled(node)):
            self.removed = True
            return _REMOVE
        whole, positions = self._labelled_primitives(node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in whole:
                self.removed = True
                continue
            if key in positions and isinstance(value, list):
                self.removed = True
                before = [v for i, v in enumerate(value) if i not in positions[key]]
            else:
                before = value
            if key.startswith("_") and isinstance(before, list):
                kept = self._walk_positional(before, depth + 1)
            else:
                kept = self.walk(before, depth + 1)
            if kept is not _REMOVE and not _emptied(value, kept):
                out[key] = kept
        return _REMOVE if _emptied(node, out) else out

    def _walk_list(self, items: list[Any], depth: int) -> Any:
        out: list[Any] = []
        for item in items:
            kept = self.walk(item, depth)
            if kept is not _REMOVE and not _emptied(item, kept):
                out.append(kept)
        return _REMOVE if _emptied(items, out) else out

    def _walk_positional(self, items: list[Any], depth: int) -> Any:
        """A ``_name`` array: position ``i`` holds the id and extensions of the primitive at
        position ``i`` of ``name``, so an emptied entry becomes ``null`` rather than going
        (FHIR R4 json.html#primitive); an array of nothing but ``null`` goes."""
        out: list[Any] = []
        for item in items:
            kept = self.walk(item, depth)
            out.append(None if kept is _REMOVE or _emptied(item, kept) else kept)
        return _REMOVE if all(kept is None for kept in out) else out

    def _labelled_primitives(self, node: dict[str, Any]) -> tuple[set[str], dict[str, set[int]]]:
        """The keys of labelled primitives to drop with their ``_name`` siblings, and, by key,
        the positions to drop from labelled primitive arrays and their ``_name`` arrays."""
        whole: set[str] = set()
        positions: dict[str, set[int]] = {}
        for key, sibling in node.items():
            if not key.startswith("_") or len(key) < 2:
                continue
            if self.inline_labelled(sibling):
                whole.update((key, key[1:]))
            elif isinstance(sibling, list):
                drop = {i for i, entry in enumerate(sibling) if self.inline_labelled(entry)}
                if drop:
                    positions[key] = positions[key[1:]] = drop
        return whole, positions


def _mark_redacted(resource: dict[str, Any]) -> None:
    """Add :data:`REDACTED` to ``meta.security`` unless it is there already."""
    security = meta_list(resource, "security")
    system, code = REDACTED
    if not any(
        isinstance(c, dict) and (c.get("system"), c.get("code")) == REDACTED for c in security
    ):
        security.append({"system": system, "code": code})
