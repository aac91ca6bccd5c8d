"""Content negotiation the gateway can honour: FHIR JSON, and FHIR XML on the proxied API.

The gateway must read every answer it releases (to rebase, to filter), and it reads JSON. On
the FHIR API it proxies, a client may speak FHIR XML (``Accept`` or ``_format``, FHIR R4
http.html §3.1.0.1.9): its XML body is converted to JSON before anything judges it and its
answer to XML after everything else (:mod:`middleware.fhir.xmlcodec`,
:mod:`middleware.fhir.xmlrender`), so the pipeline only ever sees JSON. Every ``_format`` (by
its decoded name, in the query or a form-encoded ``_search`` body) is answered at the edge and
taken out of what goes on (:func:`split_format`); the upstream is always asked for
``application/fhir+json``.

``_format`` wins over ``Accept``; two ``_format`` values naming different formats are 400.
``Accept`` is weighed by its ``q`` values (RFC 9110 §12.5.1; ``q=0`` means "not this"): XML
when the client names FHIR XML (``application/fhir+xml``) above every FHIR JSON type it names
and at least as high as any wildcard; else JSON when any JSON type or wildcard is acceptable
(a browser's ``application/xml;q=0.9, */*;q=0.8`` gets JSON); else XML when a generic XML type
(``application/xml``, ``text/xml``) is; else 406 (Turtle, or anything else). No ``Accept`` is
JSON. The gateway's own endpoints (Consent API, AuditEvent search) answer JSON only
(:func:`check_accept`, :func:`check_json_body`). Bodies must be FHIR JSON, FHIR XML (proxied
API), JSON Patch, or a form-encoded ``_search``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
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
    "split_format",
]

_WILDCARDS = frozenset({"*/*", "application/*"})
#: Accept values that name FHIR JSON itself rather than any type.
_JSON_NAMED = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
_JSON_TYPES = _JSON_NAMED | _WILDCARDS
_FORMAT_JSON = frozenset({"json", *_JSON_NAMED})
_BODY_TYPES = _JSON_NAMED
#: FHIR XML's media type and its R3-era spelling (R4 http.html §3.1.0.1.9).
_FHIR_XML = frozenset({"application/fhir+xml", "application/xml+fhir"})
#: The generic XML types, taken as FHIR XML when nothing JSON is acceptable.
_GENERIC_XML = frozenset({"application/xml", "text/xml"})
_XML_TYPES = _FHIR_XML | _GENERIC_XML
_FORMAT_XML = frozenset({"xml", *_XML_TYPES})
#: Printable ASCII but '#': a query the client did not percent-encode where it must (spaces,
#: control characters, non-ASCII bytes) is refused, never re-encoded on its behalf.
_QUERY = re.compile(rb"[\x21\x22\x24-\x7e]*")
_Q = re.compile(r"\s*q\s*=\s*([0-9.]+)\s*", re.IGNORECASE)


def media_type(value: str) -> str:
    """A media type without parameters, lower-cased (media types are case-insensitive)."""
    return value.split(";", 1)[0].strip().lower()


def _weights(accept: str) -> dict[str, float]:
    """The highest ``q`` of each media type ``accept`` names (1 when unstated or unreadable)."""
    out: dict[str, float] = {}
    for part in accept.split(","):
        kind, _, params = part.partition(";")
        weight = 1.0
        for param in params.split(";"):
            found = _Q.fullmatch(param)
            if found:
                try:
                    weight = min(float(found.group(1)), 1.0)
                except ValueError:
                    weight = 1.0
        name = kind.strip().lower()
        out[name] = max(out.get(name, 0.0), weight)
    return out


def _best(weights: Mapping[str, float], kinds: Iterable[str]) -> float:
    return max((weights.get(kind, 0.0) for kind in kinds), default=0.0)


def check_accept(headers: Mapping[str, str], params: Iterable[tuple[str, str]]) -> None:
    """406 unless ``Accept`` and every ``_format`` in ``params`` allow FHIR JSON."""
    accept = headers.get("accept")
    if accept and not _json_acceptable(accept):
        raise NotAcceptable("this gateway answers in FHIR JSON only (application/fhir+json)")
    for name, value in params:
        if name == "_format" and media_type(value) not in _FORMAT_JSON:
            raise NotAcceptable("this gateway answers in FHIR JSON only (_format=json)")


def answer_in_xml(headers: Mapping[str, str], formats: Iterable[str]) -> bool:
    """Whether the proxied API answers in XML (True) or JSON (False), by the request's
    ``_format`` values (all of them, decoded) or else its ``Accept`` (module docstring); 406
    for a format the gateway cannot answer in, 400 for ``_format`` values that disagree."""
    kinds = set()
    for value in formats:
        # An unencoded '+' in the query reads as a space ("application/fhir xml"); a media
        # type has no spaces, so it is taken back as the '+' the client meant.
        fmt = media_type(value).replace(" ", "+")
        if fmt in _FORMAT_JSON:
            kinds.add("json")
        elif fmt in _FORMAT_XML:
            kinds.add("xml")
        else:
            raise NotAcceptable("this gateway answers in FHIR JSON or FHIR XML (_format)")
    if len(kinds) > 1:
        raise BadRequest("the _format parameters name different formats", code="value")
    if kinds:
        return kinds == {"xml"}
    accept = headers.get("accept", "")
    if not accept:
        return False
    xml = _by_accept(accept)
    if xml is None:
        raise NotAcceptable("this gateway answers in FHIR JSON or FHIR XML (application/fhir+xml)")
    return xml


@lru_cache(maxsize=256)
def _json_acceptable(accept: str) -> bool:
    """Whether ``Accept`` allows FHIR JSON (cached like :func:`_by_accept`)."""
    return _best(_weights(accept), _JSON_TYPES) > 0


@lru_cache(maxsize=256)
def _by_accept(accept: str) -> bool | None:
    """:func:`answer_in_xml` by ``Accept`` alone: True (XML), False (JSON), None (neither).
    Cached: weighing the header cost ~15 us on every JSON request, and clients send a handful
    of distinct headers (bounded: a client varying it only evicts entries)."""
    weights = _weights(accept.strip())
    named, wildcard = _best(weights, _JSON_NAMED), _best(weights, _WILDCARDS)
    fhir_xml = _best(weights, _FHIR_XML)
    if fhir_xml > 0 and fhir_xml > named and fhir_xml >= wildcard:
        return True
    if named > 0 or wildcard > 0:
        return False
    if _best(weights, _GENERIC_XML) > 0:
        return True
    return None


def prefers_xml(headers: Mapping[str, str], query: bytes) -> bool:
    """Whether an error should be rendered in XML; never raises (JSON when unsure). Costs a
    substring test unless the request mentions XML."""
    if b"xml" not in query.lower() and "xml" not in headers.get("accept", "").lower():
        return False
    try:
        params = parse_qsl(query.decode("ascii"), keep_blank_values=True)
        return answer_in_xml(headers, [v for n, v in params if n == "_format"])
    except (GatewayError, UnicodeDecodeError, ValueError):
        return False


def split_format(encoded: bytes) -> tuple[bytes, list[str]]:
    """``encoded`` (a query string or a form-encoded body) without its ``_format`` parameters,
    found by their decoded name (``%5Fformat`` is ``_format``), and their decoded values. The
    edge answers ``_format`` itself: it is never sent on."""
    if b"format" not in encoded.lower() and b"%" not in encoded:  # the cheap common case
        return encoded, []
    kept: list[bytes] = []
    formats: list[str] = []
    for part in encoded.split(b"&"):
        name, _, value = part.partition(b"=")
        if _decoded(name) == b"_format":
            formats.append(_decoded(value).decode("latin-1"))
        else:
            kept.append(part)
    return b"&".join(kept), formats


def _decoded(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def is_xml_body(headers: Mapping[str, str]) -> bool:
    """Whether the request body is FHIR XML by its ``Content-Type``."""
    return media_type(headers.get("content-type", "")) in _XML_TYPES


def check_json_body(headers: Mapping[str, str]) -> None:
    """415 unless the body's ``Content-Type`` is FHIR JSON."""
    if media_type(headers.get("content-type", "")) not in _BODY_TYPES:
        raise UnsupportedMediaType("request bodies must be FHIR JSON (application/fhir+json)")


def check_request_negotiation(
    request: FhirRequest, headers: Mapping[str, str], body: bytes, formats: Iterable[str] = ()
) -> bool:
    """Raise 400/406/415 unless the request can be answered in JSON or XML (by ``formats``,
    its ``_format`` values taken out by :func:`split_format`, and ``Accept``) and its body is
    FHIR JSON (an XML body is converted before this sees it); True when the answer is XML."""
    if not _QUERY.fullmatch(request.query):
        raise BadRequest("the query string contains characters that must be percent-encoded")
    xml = answer_in_xml(headers, formats)
    # A form-encoded _search and patches had their media types checked by classify().
    if body and not request.via_post and request.interaction is not Interaction.PATCH:
        check_json_body(headers)
    return xml
