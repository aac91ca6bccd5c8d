"""FHIR XML <-> FHIR JSON at the edge, numbers kept as written and lists in their order.

The gateway works on FHIR JSON only; a client that speaks XML (R4 xml.html) has its request
body converted to JSON before anything looks at it, and its answer converted to XML after
everything else is done. The ``fhir.resources`` models can do both (``model_validate_xml``,
``model_dump_xml``) but not faithfully: measured with fhir.resources 8.3, a Quantity's
``1.50`` comes out as ``1.5`` and ``0.000001`` as ``1e-06`` (FHIR decimals carry their
precision in their text, R4 datatypes §2.24.0.1), and a model validates, so a resource the
upstream would judge is refused or reshaped here. This converter therefore does the mapping
itself, with lxml for the XML, and takes from the models only what a document cannot say:
element order, repetition and primitive kinds (:mod:`middleware.fhir.xml_schema`). Number
text passes unchanged both ways (checked against the JSON number grammar before it is
written into JSON); element and list order are kept.

Parsing is safe by construction: a document carrying a DTD (``<!DOCTYPE``, hence any entity
declaration: billion laughs, external entities) is refused before parsing; the lxml parser
resolves no entities, loads no DTD, never touches the network, keeps libxml2's default size
guards (no ``huge_tree``) and drops comments and processing instructions; nesting deeper than
the configured limit is refused before conversion. Every failure is a :class:`BadRequest`
(400 OperationOutcome), never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from lxml import etree

from middleware.errors import BadRequest, NotAcceptable
from middleware.fhir.limits import HARD_MAX_JSON_DEPTH, JsonTooDeep, check_depth
from middleware.fhir.xml_schema import Element, elements, is_resource_type

__all__ = ["FHIR_NS", "XHTML_NS", "json_to_xml", "xml_to_json"]

FHIR_NS: Final = "http://hl7.org/fhir"
XHTML_NS: Final = "http://www.w3.org/1999/xhtml"
_F: Final = "{" + FHIR_NS + "}"
#: RFC 8259 §6 number grammar: only text matching it is written unquoted into JSON.
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DTD: Final = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)


class _Number(str):
    """A JSON number's text, as written."""

    __slots__ = ()


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


# ---------------------------------------------------------------- XML -> JSON (requests)


def xml_to_json(body: bytes, *, max_depth: int) -> bytes:
    """The FHIR JSON of the FHIR XML resource ``body``; :class:`BadRequest` when it is not
    well-formed, carries a DTD, nests deeper than ``max_depth``, is not in the FHIR namespace,
    or names an element its type does not have."""
    if _DTD.search(body):
        raise BadRequest("FHIR XML must not carry a DTD or entity declarations", code="security")
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise BadRequest("request body is not well-formed XML", code="structure") from exc
    depth = _depth(root, max_depth)
    if depth > max_depth:
        raise BadRequest(
            f"the request body nests deeper than {max_depth} levels", code="too-costly"
        )
    return _dump(_resource(root)).encode()


def _depth(root: Any, limit: int) -> int:
    """The nesting of ``root``'s tree, counted without recursion; stops past ``limit``."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            break
        stack.extend((child, level + 1) for child in node)
    return deepest


def _resource(node: Any) -> dict[str, Any]:
    qname = etree.QName(node)
    if qname.namespace != FHIR_NS:
        raise BadRequest(
            f"the root element must be in the FHIR namespace {FHIR_NS}", code="structure"
        )
    if not is_resource_type(qname.localname):
        raise BadRequest(f"unknown resource type {qname.localname!r}", code="not-supported")
    out: dict[str, Any] = {"resourceType": qname.localname}
    _read(node, qname.localname, out, resource=True)
    return out


def _read(node: Any, type_name: str, out: dict[str, Any], *, resource: bool = False) -> None:
    """Fill ``out`` from the attributes and child elements of ``node`` of ``type_name``."""
    table = elements(type_name) or {}
    for attr, value in node.attrib.items():
        if (attr == "id" and not resource) or (attr == "url" and type_name == "Extension"):
            out[attr] = value
        elif attr != "xmlns":
            raise BadRequest(f"unexpected attribute {attr!r} on {type_name}", code="structure")
    if (node.text or "").strip():
        raise BadRequest(f"unexpected text in {type_name}", code="structure")
    values: dict[str, list[Any]] = {}
    extras: dict[str, list[Any]] = {}
    for child in node:
        if (child.tail or "").strip():
            raise BadRequest(f"unexpected text in {type_name}", code="structure")
        qname = etree.QName(child)
        element = table.get(qname.localname)
        xhtml = element is not None and element.kind == "xhtml"
        if element is None or qname.namespace != (XHTML_NS if xhtml else FHIR_NS):
            raise BadRequest(
                f"unknown element {qname.localname!r} in {type_name}", code="structure"
            )
        value, extra = _child(child, element)
        values.setdefault(element.name, []).append(value)
        extras.setdefault(element.name, []).append(extra)
    for name, items in values.items():
        element = table[name]
        if len(items) > 1 and not element.many:
            raise BadRequest(f"{type_name}.{name} does not repeat", code="structure")
        more = extras[name]
        if any(item is not None for item in items):
            out[name] = items if element.many else items[0]
        if any(item is not None for item in more):
            out["_" + name] = more if element.many else more[0]


def _child(node: Any, element: Element) -> tuple[Any, Any]:
    """(value, primitive extension) of one child element."""
    if element.kind == "xhtml":
        if etree.QName(node).localname != "div":
            raise BadRequest("narrative must be an XHTML div", code="structure")
        return etree.tostring(node, encoding="unicode", with_tail=False), None
    if element.kind == "resource":
        inner = list(node)
        if len(inner) != 1:
            raise BadRequest(f"{element.name} must hold exactly one resource", code="structure")
        return _resource(inner[0]), None
    if element.kind == "complex":
        out: dict[str, Any] = {}
        _read(node, element.type_name or "Element", out)
        return out, None
    text = node.get("value")
    extra: dict[str, Any] = {}
    _read(_without_value(node), "Element", extra)
    return (_primitive(text, element) if text is not None else None), (extra or None)


def _without_value(node: Any) -> Any:
    copy = etree.Element(node.tag, {k: v for k, v in node.attrib.items() if k != "value"})
    copy.text = node.text
    copy.extend(node)
    return copy


def _primitive(text: str, element: Element) -> Any:
    if element.kind == "boolean":
        if text not in ("true", "false"):
            raise BadRequest(f"{element.name} must be true or false", code="value")
        return text == "true"
    if element.kind == "number":
        if not _NUMBER.fullmatch(text):
            raise BadRequest(f"{element.name} must be a number", code="value")
        return _Number(text)
    return text


def _dump(value: Any) -> str:
    """JSON text of ``value``; a :class:`_Number` is written as its text."""
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_dump(item) for item in value) + "]"
    return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value.items()) + "}"


# ---------------------------------------------------------------- JSON -> XML (answers)


def json_to_xml(body: bytes) -> bytes:
    """The FHIR XML of the FHIR JSON resource ``body`` (UTF-8, with an XML declaration).

    :class:`NotAcceptable` when ``body`` is not a JSON resource (it cannot be said in XML).
    Elements the models do not know are written after the known ones, in JSON order."""
    try:
        check_depth(body, HARD_MAX_JSON_DEPTH)
        document = json.loads(body, parse_float=_Number, parse_int=_Number)
    except (JsonTooDeep, ValueError) as exc:
        raise NotAcceptable("this answer cannot be rendered as FHIR XML") from exc
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise NotAcceptable("this answer cannot be rendered as FHIR XML")
    root = _write_resource(document)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")  # type: ignore[no-any-return]


def _write_resource(document: Mapping[str, Any]) -> Any:
    kind = document["resourceType"]
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Z][A-Za-z]*", kind):
        raise NotAcceptable("this answer cannot be rendered as FHIR XML")
    node = etree.Element(_F + kind, nsmap={None: FHIR_NS})
    _write(node, document, kind, resource=True)
    return node


def _ordered(document: Mapping[str, Any], type_name: str | None) -> Iterator[tuple[str, Any]]:
    table = elements(type_name) if type_name else None
    names = [k for k in document if k != "resourceType" and not k.startswith("_")]
    names += [k[1:] for k in document if k.startswith("_") and k[1:] not in document]
    if table:
        known = [name for name in table if name in names]
        names = known + [name for name in names if name not in table]
    for name in names:
        yield name, (table or {}).get(name)


def _write(
    node: Any, document: Mapping[str, Any], type_name: str | None, *, resource: bool = False
) -> None:
    for name, element in _ordered(document, type_name):
        value, extra = document.get(name), document.get("_" + name)
        if (not resource and name == "id") or (type_name == "Extension" and name == "url"):
            node.set(name, str(value))  # XML attributes (R4 xml.html §2.6.3)
            continue
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
            raise NotAcceptable("this answer cannot be rendered as FHIR XML")
        if isinstance(value, list) or isinstance(extra, list):
            values = value if isinstance(value, list) else []
            extras = extra if isinstance(extra, list) else []
            for i in range(max(len(values), len(extras))):
                item = values[i] if i < len(values) else None
                more = extras[i] if i < len(extras) else None
                _write_one(node, name, item, more, element)
        else:
            _write_one(node, name, value, extra, element)


def _write_one(node: Any, name: str, value: Any, extra: Any, element: Element | None) -> None:
    if element is not None and element.kind == "xhtml" and isinstance(value, str):
        try:
            div = etree.fromstring(value.encode(), parser=_parser())
        except etree.XMLSyntaxError as exc:
            raise NotAcceptable("this answer's narrative is not XHTML") from exc
        node.append(div)
        return
    if element is not None and element.kind == "resource" and isinstance(value, dict):
        etree.SubElement(node, _F + name).append(_write_resource(value))
        return
    child = etree.SubElement(node, _F + name)
    if isinstance(value, dict):
        _write(child, value, element.type_name if element else None)
        return
    if isinstance(value, bool):
        child.set("value", "true" if value else "false")
    elif value is not None:
        child.set("value", str(value))
    if isinstance(extra, dict):
        _write(child, extra, "Element")
