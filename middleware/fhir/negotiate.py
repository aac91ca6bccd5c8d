"""Content negotiation the gateway can honour: FHIR JSON, and FHIR XML on the proxied API.

The gateway must read every answer it releases (to rebase, to filter), and it reads JSON. On
the FHIR API it proxies, a client may speak FHIR XML (``Accept`` or ``_format``, FHIR R4
http.html §3.1.0.1.9): its XML body is converted to JSON before anything judges it and its
answer to XML after everything else (:mod:`middleware.fhir.xmlcodec`), so the pipeline only
ever sees JSON. ``_format`` wins over ``Accept``; an ``Accept`` naming FHIR JSON (or only
wildcards) is answered in JSON, one naming only an XML type in XML (``q`` values are not
weighed). Turtle, or anything else, gets 406. The gateway's own endpoints (Consent API,
AuditEvent search) answer JSON only (:func:`check_accept`, :func:`check_json_body`). Bodies
must be FHIR JSON, FHIR XML (proxied API), JSON Patch, or a form-encoded ``_search``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote_to_bytes

from middleware.errors import BadRequest, GatewayError, NotAcceptable, UnsupportedMediaType
from middleware.fhir.request import FhirRequest, Interaction

__all__ = [
    "answer_in_xml",
    "check_accept",
    "check_json_body",
    "check_request_negotiation",
    "is_xml_body",
    "media_type",
    "prefers_xml",
    "strip_xml_format",
]

_JSON_TYPES = frozenset(
    {"*/*", "application/*", "application/fhir+json", "application/json", "application/json+fhir"}
)
_FORMAT_JSON = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)
_BODY_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
#: FHIR XML's media type, its R3-era spelling and the generic XML ones (R4 http.html §3.1.0.1.9).
_XML_TYPES = frozenset(
    {"application/fhir+xml", "application/xml+fhir", "application/xml", "text/xml"}
)
_FORMAT_XML = frozenset({"xml", *_XML_TYPES})
#: Accept values that name FHIR JSON itself rather than any type.
_JSON_NAMED = _JSON_TYPES - {"*/*", "application/*"}
#: Printable ASCII but '#': a query the client did not percent-encode where it must (spaces,
#: control characters, non-ASCII bytes) is refused, never re-encoded on its behalf.
_QUERY = re.compile(rb"[\x21\x22\x24-\x7e]*")


def media_type(value: str) -> str:
    """A media type without parameters, lower-cased (media types are case-insensitive)."""
    return value.split(";", 1)[0].strip().lower()


def check_accept(headers: Mapping[str, str], params: Iterable[tuple[str, str]]) -> None:
    """406 unless ``Accept`` and every ``_format`` in ``params`` allow FHIR JSON."""
    accept = headers.get("accept")
    if accept and not any(media_type(part) in _JSON_TYPES for part in accept.split(",")):
        raise NotAcceptable("this gateway answers in FHIR JSON only (application/fhir+json)")
    for name, value in params:
        if name == "_format" and media_type(value) not in _FORMAT_JSON:
            raise NotAcceptable("this gateway answers in FHIR JSON only (_format=json)")


def answer_in_xml(headers: Mapping[str, str], params: Iterable[tuple[str, str]]) -> bool:
    """Whether the proxied API answers in XML (True) or JSON (False); 406 for anything else.

    The last ``_format`` decides when there is one; else ``Accept``: JSON when it names FHIR
    JSON or a wildcard (or is absent), XML when it names only XML types."""
    formats = [media_type(value) for name, value in params if name == "_format"]
    for fmt in formats:
        if fmt not in _FORMAT_JSON and fmt not in _FORMAT_XML:
            raise NotAcceptable("this gateway answers in FHIR JSON or FHIR XML (_format)")
    if formats:
        return formats[-1] in _FORMAT_XML
    accept = headers.get("accept")
    if not accept:
        return False
    kinds = {media_type(part) for part in accept.split(",")}
    if kinds & _JSON_NAMED:
        return False
    if kinds & _XML_TYPES:
        return True
    if kinds & _JSON_TYPES:
        return False
    raise NotAcceptable("this gateway answers in FHIR JSON or FHIR XML (application/fhir+xml)")


def prefers_xml(headers: Mapping[str, str], query: bytes) -> bool:
    """Whether an error should be rendered in XML; never raises (JSON when unsure). Costs a
    substring test unless the request mentions XML."""
    if b"xml" not in query.lower() and "xml" not in headers.get("accept", "").lower():
        return False
    try:
        params = parse_qsl(query.decode("ascii"), keep_blank_values=True)
        return answer_in_xml(headers, params)
    except (GatewayError, UnicodeDecodeError, ValueError):
        return False


def strip_xml_format(query: bytes) -> bytes | None:
    """``query`` without its ``_format`` parameters when they ask for XML (the upstream is
    always asked for JSON); ``None`` when they do not (the query goes on as it is)."""
    parts = query.split(b"&")
    formats = [p for p in parts if p.split(b"=", 1)[0] == b"_format"]
    if not formats:
        return None
    last = unquote_to_bytes(formats[-1].partition(b"=")[2].replace(b"+", b" "))
    if media_type(last.decode("latin-1")) not in _FORMAT_XML:
        return None
    return b"&".join(p for p in parts if p.split(b"=", 1)[0] != b"_format")


def is_xml_body(headers: Mapping[str, str]) -> bool:
    """Whether the request body is FHIR XML by its ``Content-Type``."""
    return media_type(headers.get("content-type", "")) in _XML_TYPES


def check_json_body(headers: Mapping[str, str]) -> None:
    """415 unless the body's ``Content-Type`` is FHIR JSON."""
    if media_type(headers.get("content-type", "")) not in _BODY_TYPES:
        raise UnsupportedMediaType("request bodies must be FHIR JSON (application/fhir+json)")


def check_request_negotiation(
    request: FhirRequest, headers: Mapping[str, str], body: bytes
) -> bool:
    """Raise 400/406/415 unless the request can be answered in JSON or XML and its body is
    FHIR JSON (an XML body is converted before this sees it); True when the answer is XML."""
    if not _QUERY.fullmatch(request.query):
        raise BadRequest("the query string contains characters that must be percent-encoded")
    params = (
        parse_qsl(request.query.decode("ascii"), keep_blank_values=True)
        if b"_format" in request.query
        else ()
    )
    xml = answer_in_xml(headers, params)
    # A form-encoded _search and patches had their media types checked by classify().
    if body and not request.via_post and request.interaction is not Interaction.PATCH:
        check_json_body(headers)
    return xml
