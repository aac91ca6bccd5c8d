"""FHIR JSON -> FHIR XML for answers, at the edge, numbers kept as written and lists in their
order (R4 xml.html); the request direction and the reasons for converting by hand rather than
with the ``fhir.resources`` models are in :mod:`middleware.fhir.xmlcodec`. lxml writes the
XML; :mod:`middleware.fhir.xml_schema` gives element order, repetition and primitive kinds.

Rendering is total: a character XML 1.0 cannot carry (§2.2 ``Char``: C0 controls but tab,
newline and carriage return; lone surrogates; U+FFFE, U+FFFF), legal in a JSON string, is
written as U+FFFD, so an answer already recorded as disclosed is always sent. What cannot be
said in XML at all (not a JSON resource, a narrative that is not XHTML, a name that is not an
XML name) is :class:`NotAcceptable` (406), never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from lxml import etree

from middleware.errors import NotAcceptable
from middleware.fhir.limits import HARD_MAX_JSON_DEPTH, JsonTooDeep, check_depth
from middleware.fhir.xml_schema import Element, elements
from middleware.fhir.xmlcodec import FHIR_NS, safe_parser

__all__ = ["json_to_xml"]

_F: Final = "{" + FHIR_NS + "}"
#: What XML 1.0 §2.2 ``Char`` excludes.
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Number(str):
    """A JSON number's text, as written."""

    __slots__ = ()


def json_to_xml(body: bytes, *, link_format: bool = False) -> bytes:
    """The FHIR XML of the FHIR JSON resource ``body`` (UTF-8, with an XML declaration).

    :class:`NotAcceptable` when ``body`` is not a JSON resource (it cannot be said in XML);
    any string is rendered (characters XML 1.0 cannot carry become U+FFFD). Elements the
    models do not know are written after the known ones, in JSON order. With
    ``link_format``, a Bundle's own links (``self``, paging) get ``_format=xml`` so that the
    next page is asked in XML too (the gateway answers ``_format`` itself)."""
    try:
        check_depth(body, HARD_MAX_JSON_DEPTH)
        document = json.loads(body, parse_float=_Number, parse_int=_Number)
    except (JsonTooDeep, ValueError) as exc:
        raise NotAcceptable("this answer cannot be rendered as FHIR XML") from exc
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise NotAcceptable("this answer cannot be rendered as FHIR XML")
    if link_format and document["resourceType"] == "Bundle":
        _format_links(document)
    try:
        root = _write_resource(document)
        return etree.tostring(root, xml_declaration=True, encoding="utf-8")  # type: ignore[no-any-return]
    except (ValueError, TypeError, RecursionError) as exc:  # never a 500 (module docstring)
        raise NotAcceptable("this answer cannot be rendered as FHIR XML") from exc


def _format_links(bundle: dict[str, Any]) -> None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        url = link.get("url") if isinstance(link, dict) else None
        if isinstance(url, str) and "_format=" not in url:
            link["url"] = url + ("&" if "?" in url else "?") + "_format=xml"


def _text(value: Any) -> str:
    """``value`` as XML 1.0 text: characters it cannot carry (§2.2 Char) become U+FFFD."""
    text = value if isinstance(value, str) else str(value)
    return _NOT_XML_CHAR.sub("\ufffd", text)


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
            node.set(name, _text(value))  # XML attributes (R4 xml.html §2.6.3)
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
            div = etree.fromstring(_text(value).encode(), parser=safe_parser())
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
        child.set("value", _text(value))
    if isinstance(extra, dict):
        _write(child, extra, "Element")
