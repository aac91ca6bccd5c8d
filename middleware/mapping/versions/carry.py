"""Cross-version extensions: carry an element that has no counterpart in the other FHIR release.

FHIR gives every element of one release a canonical extension URL for use in another
(http://hl7.org/fhir/R5/versions.html#extensions, the ``hl7.fhir.uv.xver-r5.r4`` and
``xver-r4.r5`` packages): ``http://hl7.org/fhir/5.0/StructureDefinition/extension-<path>`` for an
R5 element used in R4, ``http://hl7.org/fhir/4.0/...`` for an R4 element used in R5. As those
packages define them:

- the extension sits on the element's parent (the resource for a top-level element);
- a choice element is named without ``[x]`` (``extension-Observation.instantiates``) and the
  value type tells the alternatives apart;
- a primitive or datatype travels in the natural ``value[x]`` (``valueCode``,
  ``valueCodeableConcept``), a primitive's own id/extensions in ``_value[x]``;
- a backbone element becomes a complex extension with one sub-extension per child, ``url`` the
  child's name; a type the host release lacks (``CodeableReference`` in R4) the same way;
- a repeating element repeats the extension, in order.

A :class:`Spec` says which of these applies. :func:`encode` and :func:`decode` are inverses:
:func:`encode` returns None for a value it cannot carry faithfully (an element the spec does not
name, a value of the wrong shape), which it learns by decoding what it produced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["Release", "Spec", "decode", "encode", "parse_spec", "value_key", "xver_url"]

Release = Literal["R4", "R5"]

PRIMITIVES: Final = frozenset(
    {"base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id"}
    | {"instant", "integer", "integer64", "markdown", "oid", "positiveInt", "string", "time"}
    | {"unsignedInt", "uri", "url", "uuid"}
)
DATATYPES: Final = frozenset(
    {"Address", "Age", "Annotation", "Attachment", "CodeableConcept", "CodeableReference"}
    | {"Coding", "ContactDetail", "ContactPoint", "Count", "Distance", "Dosage", "Duration"}
    | {"Expression", "HumanName", "Identifier", "Meta", "Money", "Period", "Quantity", "Range"}
    | {"Ratio", "RatioRange", "Reference", "RelatedArtifact", "SampledData", "Signature"}
    | {"Timing", "UsageContext"}
)
BACKBONE: Final = "BackboneElement"
_NAME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(\[\])?$")
_CHILD: Final = re.compile(r"^[a-z][A-Za-z0-9]*$")


@dataclass(frozen=True, slots=True)
class Spec:
    """The type of an element: a primitive, a datatype, or a backbone with named children."""

    type: str
    many: bool = False
    children: tuple[tuple[str, Spec], ...] = ()

    def child(self, name: str) -> Spec | None:
        return next((spec for key, spec in self.children if key == name), None)


#: Types that R4's Extension.value[x] cannot hold, and how R4 carries them instead.
_IN_R4: Final = {
    "CodeableReference": Spec(
        BACKBONE, children=(("concept", Spec("CodeableConcept")), ("reference", Spec("Reference")))
    ),
    "RatioRange": Spec(
        BACKBONE,
        children=(
            ("lowNumerator", Spec("Quantity")),
            ("highNumerator", Spec("Quantity")),
            ("denominator", Spec("Quantity")),
        ),
    ),
    "integer64": Spec("string"),
}


def parse_spec(raw: Any, where: str, problems: list[str]) -> Spec | None:
    """``"code"``, ``"CodeableConcept[]"``, ``{"child": spec}`` (a backbone) or
    ``[{"child": spec}]`` (a repeating backbone); a problem names ``where``."""
    if isinstance(raw, str):
        match = _NAME.match(raw)
        if match is None or match.group(1) not in PRIMITIVES | DATATYPES:
            problems.append(f"{where}: {raw!r} is not a FHIR primitive or datatype name")
            return None
        return Spec(match.group(1), many=bool(match.group(2)))
    many = isinstance(raw, list)
    if many:
        raw = raw[0] if len(raw) == 1 else None
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{where}: a type, {{child: type}} or [{{child: type}}]")
        return None
    children: list[tuple[str, Spec]] = []
    for name, sub in raw.items():
        if not _CHILD.match(name):
            problems.append(f"{where}.{name}: not an element name")
            continue
        spec = parse_spec(sub, f"{where}.{name}", problems)
        if spec is not None:
            children.append((name, spec))
    return Spec(BACKBONE, many=many, children=tuple(children))


def xver_url(release: Release, path: str) -> str:
    """The cross-version extension URL of element ``path`` (``Type.element``) of ``release``."""
    version = "4.0" if release == "R4" else "5.0"
    return f"http://hl7.org/fhir/{version}/StructureDefinition/extension-{path}"


def value_key(spec: Spec, host: Release) -> str | None:
    """``valueCode``, ``valueCodeableConcept``, ...; None for a complex (nested) extension."""
    spec = _hosted(spec, host)
    return None if spec.type == BACKBONE else "value" + spec.type[0].upper() + spec.type[1:]


def encode(
    value: Any, meta: Any, spec: Spec, url: str, host: Release
) -> list[dict[str, Any]] | None:
    """The extensions carrying ``value`` (and ``meta``, a primitive's ``_element``) into a resource
    of release ``host``; None if they would not give it back exactly."""
    hosted = _hosted(spec, host)
    if spec.many:
        if type(value) is not list or not value:
            return None
        metas = meta if type(meta) is list else [meta] * len(value)
        if len(metas) != len(value):
            return None
        out = [_one(item, m, hosted, url, host) for item, m in zip(value, metas, strict=True)]
    else:
        out = [_one(value, meta, hosted, url, host)]
    if any(item is None for item in out):
        return None
    exts = [item for item in out if item is not None]
    try:
        back = decode(exts, spec, host)
    except ValueError:
        return None
    return exts if back == (value, _norm_meta(meta, spec)) else None


def decode(exts: list[dict[str, Any]], spec: Spec, host: Release) -> tuple[Any, Any]:
    """``(value, meta)`` from extensions :func:`encode` made; ValueError if they are not that."""
    hosted = _hosted(spec, host)
    items = [_read(ext, hosted, host) for ext in exts]
    if spec.many:
        return [v for v, _ in items], _norm_meta([m for _, m in items], spec)
    if len(items) != 1:
        raise ValueError("a single element carried more than once")
    return items[0]


def _hosted(spec: Spec, host: Release) -> Spec:
    if host == "R4" and spec.type in _IN_R4:
        sub = _IN_R4[spec.type]
        return Spec(sub.type, many=spec.many, children=sub.children)
    return spec


def _norm_meta(meta: Any, spec: Spec) -> Any:
    if spec.many and type(meta) is list and all(m is None for m in meta):
        return None
    return meta


def _one(value: Any, meta: Any, spec: Spec, url: str, host: Release) -> dict[str, Any] | None:
    ext: dict[str, Any] = {"url": url}
    if spec.type != BACKBONE:
        key = value_key(spec, host)
        shape_ok = (type(value) is dict) == (spec.type in DATATYPES) and type(value) is not list
        shape_ok = shape_ok and value is not None
        if key is None or not shape_ok or (meta is not None and spec.type in DATATYPES):
            return None
        ext[key] = value
        if meta is not None:
            ext["_" + key] = meta
        return ext
    if type(value) is not dict:
        return None
    subs: list[dict[str, Any]] = []
    for name, item in value.items():
        if name == "id":
            ext["id"] = item
            continue
        if name == "extension" and type(item) is list:
            subs.extend(item)
            continue
        child = spec.child(name)
        if child is None:
            if name.startswith("_") and spec.child(name[1:]) is not None:
                continue
            return None
        carried = encode(item, value.get("_" + name), child, name, host)
        if carried is None:
            return None
        subs.extend(carried)
    if subs:
        ext["extension"] = subs
    return ext


def _read(ext: Any, spec: Spec, host: Release) -> tuple[Any, Any]:
    if type(ext) is not dict:
        raise ValueError("an extension is not an object")
    if spec.type != BACKBONE:
        key = value_key(spec, host)
        if key is None or key not in ext or set(ext) - {"url", key, "_" + key}:
            raise ValueError("not the value this element carries")
        return ext[key], ext.get("_" + key)
    if set(ext) - {"url", "id", "extension"}:
        raise ValueError("a complex extension with a value")
    item: dict[str, Any] = {}
    if "id" in ext:
        item["id"] = ext["id"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for sub in ext.get("extension", []):
        name = sub.get("url") if type(sub) is dict else None
        if isinstance(name, str) and spec.child(name) is not None:
            if name not in groups:
                groups[name] = []
                item[name] = None  # keeps the children in the order they were carried
            groups[name].append(sub)
        else:
            item.setdefault("extension", []).append(sub)
    for name, subs in groups.items():
        child = spec.child(name)
        assert child is not None
        item[name], meta = decode(subs, child, host)
        if meta is not None:
            item["_" + name] = meta
    return item, None
