"""The request body at the ASGI edge: whether one is announced, reading it, its Bundle type.

Read whole under ``max_request_bytes`` (``max_xml_body_bytes`` for FHIR XML, whose conversion
costs far more than reading JSON; both after decoding gzip: no zip bombs) and
``body_timeout`` (:func:`middleware.asgi.read_body`); refused (400) on a method that takes
none, in an unsupported ``Content-Encoding``, or nesting deeper than ``max_json_depth``
(measured before anything decodes it, :mod:`middleware.fhir.limits`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Final

from middleware.asgi import read_body
from middleware.errors import BadRequest, PayloadTooLarge
from middleware.fhir import jsoncodec
from middleware.fhir.limits import depth as json_depth
from middleware.fhir.negotiate import media_type
from middleware.settings import Settings
from middleware.types import Receive

__all__ = ["announces_body", "bundle_type", "read_request_body"]

_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
#: The one body media type that is not JSON (a form-encoded ``POST _search``).
_FORM: Final = "application/x-www-form-urlencoded"
#: Bodies not measured as JSON: the form, and FHIR XML (measured by its own converter,
#: :func:`middleware.fhir.xmlcodec.xml_to_json`, before it becomes JSON).
_XML: Final = frozenset(
    {"application/fhir+xml", "application/xml+fhir", "application/xml", "text/xml"}
)
_NOT_JSON: Final = frozenset({_FORM, *_XML})


def announces_body(headers: Mapping[str, str]) -> bool:
    """Whether the request says a body follows (RFC 9112 §6.3: Transfer-Encoding, or a
    Content-Length other than 0)."""
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or length not in ("", "0")


async def read_request_body(
    receive: Receive, headers: Mapping[str, str], method: str, settings: Settings
) -> bytes:
    """The request body, whole, at most ``max_request_bytes`` after decoding gzip (at most
    ``max_xml_body_bytes`` when its ``Content-Type`` is an XML one)."""
    limit = settings.max_request_bytes
    if media_type(headers.get("content-type", "")) in _XML:
        limit = min(limit, settings.max_xml_body_bytes)
    body = await read_body(receive, headers, limit, within=settings.body_timeout)
    if body and method not in _BODY_METHODS:
        raise BadRequest(f"a {method} request must not have a body")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip" and body:
        body = _gunzip(body, limit)
    elif encoding not in ("identity", "gzip"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}", code="not-supported")
    _check_body_depth(body, headers, settings.max_json_depth)
    return body


def bundle_type(body: bytes) -> str | None:
    """``Bundle.type`` of a request body; ``None`` when it is not a Bundle."""
    try:
        document: Any = jsoncodec.decode(body)
    except jsoncodec.DecodeError as exc:
        raise BadRequest("request body is not valid JSON", code="structure") from exc
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        kind = document.get("type")
        return kind if isinstance(kind, str) else None
    return None


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing more than ``limit`` bytes out (no zip bombs)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest("request body is not valid gzip") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge("request body exceeds the configured size limit")
    return out


def _check_body_depth(body: bytes, headers: Mapping[str, str], limit: int) -> None:
    """Refuse (400) a request body nesting deeper than ``limit``, measured before anything
    decodes it (:mod:`middleware.fhir.limits`). A form-encoded ``POST _search`` body and an
    XML body (measured by its converter) are not JSON and are not measured here: the media
    type, parsed, must be exactly one of those (a parameter naming one,
    ``application/fhir+json; x=x-www-form-urlencoded``, is JSON and measured)."""
    if not body or media_type(headers.get("content-type", "")) in _NOT_JSON:
        return
    if json_depth(body, limit) > limit:
        raise BadRequest(f"the request body nests deeper than {limit} levels", code="too-costly")
