"""Element paths such as ``Observation.component.code``: checked at load, walked per resource.

A path is a resource type followed by JSON element names (a choice element is named with its
type, ``valueCodeableConcept``). Lists are walked element by element, like FHIRPath's
implicit flattening. At load, :func:`check` resolves every step against the fhir.resources
model of a FHIR version, so a typo or an element that is not a CodeableConcept stops the
gateway instead of silently matching nothing.

Walking never mutates: :func:`rewrite` copies only the dicts and lists on the way to a
changed node and returns the very same object when nothing changed.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from fhir.resources import get_fhir_model_class as r5_model
from fhir.resources.R4B import get_fhir_model_class as r4_model

from middleware.mapping.model import normalize_value

__all__ = ["ElementPath", "attribute_values", "check", "nodes", "parse_path", "rewrite"]

_PRIMITIVE: Final = "primitive"


@dataclass(frozen=True, slots=True)
class ElementPath:
    """``Type.step.step``: ``resource_type`` and the element names below it."""

    resource_type: str
    steps: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join((self.resource_type, *self.steps))


def parse_path(text: str) -> ElementPath | None:
    """Split ``Type.a.b``; None unless every part is a plain name and there is at least one step."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) < 2 or not all(p.isidentifier() and p.isascii() for p in parts):
        return None
    if not parts[0][0].isupper():
        return None
    return ElementPath(parts[0], tuple(parts[1:]))


def check(path: ElementPath, version: str, *, want: str | None) -> str | None:
    """Why ``path`` does not name an element of ``version`` (``R4``/``R4B``/``R5``) whose type is
    ``want`` (``CodeableConcept``; None: any type); None if it does."""
    resolve = r5_model if version == "R5" else r4_model
    try:
        model = resolve(path.resource_type)
    except (ValueError, KeyError):
        return f"{path.resource_type} is not a resource type in {version}"
    kind = path.resource_type
    for i, step in enumerate(path.steps):
        if kind == _PRIMITIVE:
            return f"{'.'.join(path.steps[:i])} is a primitive; it has no element {step!r}"
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if step not in fields:
            return f"{kind} has no element {step!r} in {version}"
        kind = _type_name(fields[step].annotation)
        if kind != _PRIMITIVE:
            model = resolve(kind)
    if want is not None and kind != want:
        found = "a primitive" if kind == _PRIMITIVE else f"a {kind}"
        return f"{path} is {found} in {version}, not a {want}"
    return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _type_name(args[0])
    if origin is typing.Annotated or not isinstance(annotation, type):
        return _PRIMITIVE
    name = annotation.__name__
    return name[: -len("Type")] if name.endswith("Type") and name != "Type" else _PRIMITIVE


def nodes(node: Any, steps: tuple[str, ...]) -> Iterator[Any]:
    """Every value at ``steps`` below ``node``, lists flattened."""
    if isinstance(node, list):
        for item in node:
            yield from nodes(item, steps)
    elif not steps:
        yield node
    elif isinstance(node, dict) and steps[0] in node:
        yield from nodes(node[steps[0]], steps[1:])


def rewrite(node: Any, steps: tuple[str, ...], change: Callable[[Any], Any]) -> Any:
    """``node`` with ``change`` applied to every value at ``steps`` (lists flattened).

    Copy-on-write: returns ``node`` itself when ``change`` returned every value unchanged.
    """
    if isinstance(node, list):
        items = [rewrite(item, steps, change) for item in node]
        return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
    if not steps:
        return change(node)
    if not isinstance(node, dict) or steps[0] not in node:
        return node
    child = node[steps[0]]
    new = rewrite(child, steps[1:], change)
    return node if new is child else {**node, steps[0]: new}


def attribute_values(
    resource: Any, paths: Mapping[str, tuple[ElementPath, ...]]
) -> dict[str, frozenset[str]]:
    """For each attribute, the normalised values its paths reach in ``resource``.

    A primitive gives its text (decimals as written); a Coding or Quantity gives ``code`` and
    ``system|code``; a CodeableConcept gives that for each coding.
    """
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    out: dict[str, frozenset[str]] = {}
    for name, candidates in paths.items():
        found: set[str] = set()
        for path in candidates:
            if path.resource_type == kind:
                for value in nodes(resource, path.steps):
                    found.update(_values(value))
        out[name] = frozenset(found)
    return out


def _values(value: Any) -> Iterator[str]:
    if isinstance(value, msgspec.Raw):
        yield bytes(value).decode()
    elif isinstance(value, dict):
        if isinstance(value.get("coding"), list):
            for coding in value["coding"]:
                yield from _values(coding)
        elif "code" in value:
            yield str(value["code"])
            if value.get("system"):
                yield normalize_value(value)
    elif isinstance(value, str | bool | int):
        yield normalize_value(value)
