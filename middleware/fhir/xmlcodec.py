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

Parsing is safe by construction. FHIR XML is UTF-8 (R4 xml.html): a body in any other
encoding (a UTF-16 or UTF-32 byte order mark, NUL bytes, bytes that are not UTF-8, or an XML
declaration naming another encoding) is refused before parsing, and the parser is told UTF-8
whatever the document says, so the checks below see the bytes libxml2 reads. A document
carrying a DTD (``<!DOCTYPE``, hence any entity declaration: billion laughs, external
entities) is refused before parsing and again after it (``docinfo``); the lxml parser resolves
no entities, loads no DTD, never touches the network, keeps libxml2's default size guards (no
``huge_tree``) and drops comments and processing instructions; an entity reference left in the
tree is refused. Before conversion, more than :data:`MAX_XML_ELEMENTS` elements is refused;
while converting, nesting deeper than the configured limit; after it, the JSON produced is
measured with the limit JSON bodies get (:func:`middleware.fhir.limits.check_depth`: a
repeating element adds a JSON level its XML does not have). The JSON is written by msgspec
(numbers as their text, through ``msgspec.Raw``). Every failure is a :class:`BadRequest`
(400 OperationOutcome), never a 500.

The other direction, answers from JSON to XML, is :mod:`middleware.fhir.xmlrender`.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from lxml import etree

from middleware.errors import BadRequest
from middleware.fhir.limits import JsonTooDeep, check_depth
from middleware.fhir.xml_schema import Element, elements, is_resource_type

__all__ = ["FHIR_NS", "MAX_XML_ELEMENTS", "XHTML_NS", "safe_parser", "xml_to_json"]

FHIR_NS: Final = "http://hl7.org/fhir"
XHTML_NS: Final = "http://www.w3.org/1999/xhtml"
#: Most elements a request body may hold (a 4 MiB body of real resources holds about 100,000;
#: converting 190,000 cost 0.38 s of CPU, measured; the edge does it off the event loop).
MAX_XML_ELEMENTS: Final = 200_000
#: RFC 8259 §6 number grammar: only text matching it is written unquoted into JSON.
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DTD: Final = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)
#: Byte order marks of the encodings FHIR XML is not in (UTF-32 before UTF-16: FF FE 00 00).
_OTHER_BOMS: Final = (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00", b"\xfe\xff", b"\xff\xfe")
_UTF8_BOM: Final = b"\xef\xbb\xbf"
#: The encoding an XML declaration names (XML 1.0 §4.3.3 EncName).
_DECLARED: Final = re.compile(rb"<\?xml[^>]*?\sencoding\s*=\s*[\"']([A-Za-z0-9._-]*)[\"']")


def safe_parser() -> etree.XMLParser:
    """An lxml parser that reads UTF-8 only and resolves, loads and fetches nothing."""
    return etree.XMLParser(
        encoding="utf-8",
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


# ---------------------------------------------------------------- XML -> JSON (requests)


def xml_to_json(body: bytes, *, max_depth: int, max_elements: int = MAX_XML_ELEMENTS) -> bytes:
    """The FHIR JSON of the FHIR XML resource ``body``; :class:`BadRequest` when it is not
    UTF-8 or not well-formed, carries a DTD or an entity reference, nests deeper than
    ``max_depth`` (as XML, or as the JSON it becomes), holds more than ``max_elements``
    elements, is not in the FHIR namespace, or names an element its type does not have.

    Pure and CPU-bound (about 1.5 us per element): the edge runs a large body in a thread."""
    body = _utf8(body)
    if _DTD.search(body):
        raise BadRequest("FHIR XML must not carry a DTD or entity declarations", code="security")
    try:
        root = etree.fromstring(body, parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        raise BadRequest("request body is not well-formed XML", code="structure") from exc
    info = root.getroottree().docinfo
    if info.internalDTD is not None or info.doctype:
        raise BadRequest("FHIR XML must not carry a DTD or entity declarations", code="security")
    _count(root, max_elements)
    try:
        out = msgspec.json.encode(_resource(root, max_depth))
    except RecursionError as exc:  # unreachable under the depth limit; never a 500
        raise BadRequest("the request body nests too deeply", code="too-costly") from exc
    try:
        check_depth(out, max_depth)
    except JsonTooDeep as exc:
        raise BadRequest(
            f"the request body nests deeper than {max_depth} levels", code="too-costly"
        ) from exc
    return out


def _utf8(body: bytes) -> bytes:
    """``body`` without a UTF-8 byte order mark; 400 unless it is UTF-8 (FHIR XML is)."""
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM) :]
    declared = _DECLARED.match(body)
    if (
        body.startswith(_OTHER_BOMS)
        or b"\x00" in body
        or (declared is not None and declared.group(1).lower() not in (b"utf-8", b"utf8"))
    ):
        raise BadRequest("FHIR XML must be encoded in UTF-8", code="not-supported")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("FHIR XML must be encoded in UTF-8", code="not-supported") from exc
    return body


def _count(root: Any, max_elements: int) -> None:
    """400 when ``root``'s tree holds more than ``max_elements`` nodes (lxml's own iterator:
    about 70 ns a node, a tenth of converting one)."""
    for count, _ in enumerate(root.iter(), start=1):
        if count > max_elements:
            raise BadRequest(
                f"the request body holds more than {max_elements} elements", code="too-costly"
            )


def _too_deep(room: int) -> None:
    """400 when a node has no ``room`` left under the depth limit."""
    if room < 1:
        raise BadRequest("the request body nests deeper than allowed", code="too-costly")


def _split(tag: Any) -> tuple[str | None, str]:
    """(namespace, local name) of an element's ``tag``; 400 for an entity reference."""
    if not isinstance(tag, str):
        raise BadRequest("FHIR XML must not carry entity references", code="security")
    if tag[:1] == "{":
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return None, tag


def _resource(node: Any, room: int) -> dict[str, Any]:
    """The resource ``node``, which may nest ``room`` levels (itself included)."""
    _too_deep(room)
    namespace, local = _split(node.tag)
    if namespace != FHIR_NS:
        raise BadRequest(
            f"the root element must be in the FHIR namespace {FHIR_NS}", code="structure"
        )
    if not is_resource_type(local):
        raise BadRequest("unknown resource type", code="not-supported")
    out: dict[str, Any] = {"resourceType": local}
    _read(node, local, out, room, resource=True)
    return out


def _read(
    node: Any,
    type_name: str,
    out: dict[str, Any],
    room: int,
    *,
    resource: bool = False,
    primitive: bool = False,
) -> None:
    """Fill ``out`` from the attributes and child elements of ``node`` of ``type_name``
    (of a primitive's element, whose ``value`` attribute is read by the caller)."""
    table = elements(type_name) or {}
    for attr, value in node.attrib.items():
        if (attr == "id" and not resource) or (attr == "url" and type_name == "Extension"):
            out[attr] = value
        elif not (primitive and attr == "value"):
            raise BadRequest(f"unexpected attribute {attr!r} on {type_name}", code="structure")
    if (node.text or "").strip():
        raise BadRequest(f"unexpected text in {type_name}", code="structure")
    values: dict[str, list[Any]] = {}
    extras: dict[str, list[Any]] = {}
    for child in node:
        if (child.tail or "").strip():
            raise BadRequest(f"unexpected text in {type_name}", code="structure")
        if child.tag is etree.Comment or child.tag is etree.ProcessingInstruction:
            continue  # removed by the parser; never data either way
        namespace, local = _split(child.tag)
        element = table.get(local)
        xhtml = element is not None and element.kind == "xhtml"
        if element is None or namespace != (XHTML_NS if xhtml else FHIR_NS):
            raise BadRequest(f"unknown element {local!r} in {type_name}", code="structure")
        value, extra = _child(child, element, room - 1)
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


def _child(node: Any, element: Element, room: int) -> tuple[Any, Any]:
    """(value, primitive extension) of one child element, which may nest ``room`` levels."""
    _too_deep(room)
    if element.kind == "xhtml":
        if _split(node.tag)[1] != "div":
            raise BadRequest("narrative must be an XHTML div", code="structure")
        return etree.tostring(node, encoding="unicode", with_tail=False), None
    if element.kind == "resource":
        inner = [child for child in node if child.tag is not etree.Comment]
        if len(inner) != 1 or (node.text or "").strip() or (inner[0].tail or "").strip():
            raise BadRequest(f"{element.name} must hold exactly one resource", code="structure")
        return _resource(inner[0], room - 1), None
    if element.kind == "complex":
        out: dict[str, Any] = {}
        _read(node, element.type_name or "Element", out, room)
        return out, None
    text = node.get("value")
    extra: dict[str, Any] = {}
    if len(node) or len(node.attrib) > (text is not None):
        _read(node, "Element", extra, room, primitive=True)
    elif (node.text or "").strip():
        raise BadRequest("unexpected text in Element", code="structure")
    return (_primitive(text, element) if text is not None else None), (extra or None)


def _primitive(text: str, element: Element) -> Any:
    if element.kind == "boolean":
        if text not in ("true", "false"):
            raise BadRequest(f"{element.name} must be true or false", code="value")
        return text == "true"
    if element.kind == "number":
        if not _NUMBER.fullmatch(text):
            raise BadRequest(f"{element.name} must be a number", code="value")
        return msgspec.Raw(text.encode())
    return text
