"""Content negotiation the gateway can honour: FHIR JSON only.

The gateway must read every answer it releases (to rebase, later to filter), and it reads
JSON. A client asking for XML or Turtle (``Accept`` or ``_format``, FHIR R4 http.html
§3.1.0.1.9) gets 406 rather than an answer the gateway could not inspect. Bodies it is sent
must be FHIR JSON, JSON Patch, or a form-encoded ``_search``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl

from middleware.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from middleware.fhir.request import FhirRequest, Interaction

__all__ = ["check_accept", "check_json_body", "check_request_negotiation", "media_type"]

_JSON_TYPES = frozenset(
    {"*/*", "application/*", "application/fhir+json", "application/json", "application/json+fhir"}
)
_FORMAT_JSON = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)
_BODY_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
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


def check_json_body(headers: Mapping[str, str]) -> None:
    """415 unless the body's ``Content-Type`` is FHIR JSON."""
    if media_type(headers.get("content-type", "")) not in _BODY_TYPES:
        raise UnsupportedMediaType("request bodies must be FHIR JSON (application/fhir+json)")


def check_request_negotiation(
    request: FhirRequest, headers: Mapping[str, str], body: bytes
) -> None:
    """Raise 400/406/415 unless the request can be answered in JSON and its body is JSON."""
    if not _QUERY.fullmatch(request.query):
        raise BadRequest("the query string contains characters that must be percent-encoded")
    params = (
        parse_qsl(request.query.decode("ascii"), keep_blank_values=True)
        if b"_format" in request.query
        else ()
    )
    check_accept(headers, params)
    # A form-encoded _search and patches had their media types checked by classify().
    if body and not request.via_post and request.interaction is not Interaction.PATCH:
        check_json_body(headers)
