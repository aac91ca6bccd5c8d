"""Classify an HTTP request as one FHIR RESTful interaction, or refuse it.

The table is the FHIR R4 RESTful API (http://hl7.org/fhir/R4/http.html), with ``[base]`` the
gateway's FHIR base path::

    GET    [base]/metadata                          capabilities          (system)
    GET    [base]  /  POST [base]/_search            search-system         (system)
    POST   [base]  /  POST [base]/                  batch | transaction   (system; classify_bundle)
    GET    [base]/_history                          history-system        (system)
    GET    [base]/[type]  /  POST [type]/_search    search-type           (type)
    POST   [base]/[type]                            create (conditional with If-None-Exist)
    PUT|PATCH|DELETE [base]/[type]?criteria         conditional update | patch | delete (type)
    GET    [base]/[type]/_history                   history-type          (type)
    GET|PUT|PATCH|DELETE [base]/[type]/[id]         read | update | patch | delete (instance)
    GET    [base]/[type]/[id]/_history              history-instance      (instance)
    GET    [base]/[type]/[id]/_history/[vid]        vread                 (instance)
    GET    [base]/[ctype]/[id]/[type]               search-compartment    (type; POST .../_search)
    GET|POST [base]/$op, [type]/$op, [type]/[id]/$op  operation (graphql for $graphql at
                                                    system and instance level)

Everything else is refused with a :class:`~middleware.errors.GatewayError`; nothing is
normalised but one spelling: ``POST [base]/``, the base with one trailing slash, is
``POST [base]`` (clients such as SEKMET post their transactions there, and FHIR servers accept
it); the body must then be a batch or transaction Bundle like any ``POST [base]``. Other path
tricks (dot and empty segments, trailing slashes, ``;``, ``\\``, ``%``, control
characters, and percent-encoded ``/ \\ . %`` or NUL in the raw path) are
:class:`~middleware.errors.PathRejected`, because a gateway and its upstream that normalise
differently see different resources. Names are case-exact: resource types
(http://hl7.org/fhir/R4/resourcelist.html), ids and version ids (the R4 ``id`` datatype,
``[A-Za-z0-9\\-\\.]{1,64}``, http://hl7.org/fhir/R4/datatypes.html#id), operation names and the
literals ``metadata``, ``_history`` and ``_search``. HTTP methods are case-sensitive (RFC 9110
§9.1); HEAD, OPTIONS and method-override headers are not accepted.

Diagnostics never echo the client's path, ids or headers: they may hold PHI.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from middleware.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PathRejected,
    UnsupportedMediaType,
)
from middleware.fhir.negotiate import media_type
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.fhir.resource_types import COMPARTMENT_TYPES, RESOURCE_TYPES

__all__ = ["classify", "classify_bundle"]

_I = Interaction

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_OPERATION = re.compile(r"\$[A-Za-z][A-Za-z0-9_\-]*")
#: Percent-encodings that change how a path splits or resolves, or hide a second decoding.
_REFUSED_ESCAPE = re.compile(rb"%(?:2[fFeE5]|5[cC]|00)")
#: Characters refused anywhere in the decoded path: matrix parameters, Windows separators,
#: leftovers of double encoding and C0/C1 control characters.
_REFUSED_CHAR = re.compile(r"[;\\%\x00-\x1f\x7f-\x9f]")

_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")

_FORM = "application/x-www-form-urlencoded"
_PATCH_FORMATS: Mapping[str, str] = {
    "application/json-patch+json": "json-patch",
    "application/fhir+json": "fhirpath-patch",
}
#: Query parameters that shape a result but select nothing: a conditional write carrying only
#: these would be unbounded (http://hl7.org/fhir/R4/search.html#return).
_NOT_CRITERIA = frozenset(
    {
        "_format",
        "_pretty",
        "_summary",
        "_elements",
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_total",
        "_contained",
        "_containedType",
    }
)

# What each method means at each path shape; insertion order is the order of ``allowed``.
_AT_BASE: Mapping[str, Interaction] = {"GET": _I.SEARCH_SYSTEM, "POST": _I.BATCH}
_AT_TYPE: Mapping[str, Interaction] = {
    "GET": _I.SEARCH_TYPE,
    "POST": _I.CREATE,
    "PUT": _I.UPDATE,
    "PATCH": _I.PATCH,
    "DELETE": _I.DELETE,
}
_AT_INSTANCE: Mapping[str, Interaction] = {
    "GET": _I.READ,
    "PUT": _I.UPDATE,
    "PATCH": _I.PATCH,
    "DELETE": _I.DELETE,
}
_CONDITIONAL_WRITES = frozenset({_I.UPDATE, _I.PATCH, _I.DELETE})


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """A recognised path: what each allowed method means there and the names the path holds."""

    level: Level
    methods: Mapping[str, Interaction]
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    compartment: tuple[str, str] | None = None
    operation: str | None = None
    via_post: bool = False


def classify(
    method: str,
    path: str,
    raw_path: bytes | None,
    query: bytes,
    headers: Mapping[str, str],
    *,
    base_path: str,
) -> FhirRequest:
    """Return the FHIR interaction of one HTTP request, or raise a ``GatewayError``.

    ``path`` is the ASGI ``scope["path"]`` (percent-decoded) and decides everything;
    ``raw_path`` (``scope["raw_path"]``, may be ``None``) is only searched for encodings we
    refuse. ``query`` is ``scope["query_string"]``, kept unchanged in the result. ``headers``
    maps lower-cased names to values. ``base_path`` is the FHIR base, e.g. ``"/fhir"`` or ``""``
    for the root; it is compared segment by segment.

    ``POST [base]`` is returned as a provisional :attr:`Interaction.BATCH`; once the body is
    read, :func:`classify_bundle` settles batch or transaction.

    Raises ``BadRequest`` (method-override headers, invalid ids or operation names, a
    conditional write without criteria), ``PathRejected`` (path tricks), ``NotFound`` (outside
    the base, unknown resource type or path shape), ``MethodNotAllowed`` (with the methods the
    shape allows) or ``UnsupportedMediaType`` (PATCH and POST ``_search`` bodies).
    """
    if any(name in headers for name in _OVERRIDE_HEADERS):
        raise BadRequest("method-override headers are not accepted", code="not-supported")
    if method == "POST" and path == _with_slash(base_path):
        path = path[:-1] or "/"
    segments = _segments(path, raw_path, base_path)
    shape = _resolve(segments)
    interaction = shape.methods.get(method)
    if interaction is None:
        allowed = tuple(shape.methods)
        raise MethodNotAllowed(
            f"method not allowed here; allowed: {', '.join(allowed)}", allowed=allowed
        )

    if shape.via_post and media_type(headers.get("content-type", "")) != _FORM:
        raise UnsupportedMediaType(f"a search by POST needs a {_FORM} body")
    patch_format = _patch_format(headers) if interaction is _I.PATCH else None
    conditional = False
    if shape.level is Level.TYPE and interaction in _CONDITIONAL_WRITES:
        if not _has_criteria(query):
            raise BadRequest(f"a conditional {interaction} needs search criteria")
        conditional = True
    elif interaction is _I.CREATE:
        conditional = bool(headers.get("if-none-exist", "").strip())

    return FhirRequest(
        interaction=interaction,
        method=method,
        level=shape.level,
        path="/".join(segments),
        query=query,
        resource_type=shape.resource_type,
        resource_id=shape.resource_id,
        version_id=shape.version_id,
        compartment=shape.compartment,
        operation=shape.operation,
        conditional=conditional,
        via_post=shape.via_post,
        patch_format=patch_format,
    )


def classify_bundle(request: FhirRequest, bundle_type: str | None) -> FhirRequest:
    """Settle a ``POST [base]`` as batch or transaction from the body's ``Bundle.type``.

    ``bundle_type`` is ``Bundle.type`` of the body, or ``None`` when the body is not a Bundle.
    Returns a copy with interaction ``BATCH`` for ``"batch"`` and ``TRANSACTION`` for
    ``"transaction"`` (case-exact, http://hl7.org/fhir/R4/http.html#transaction); any other
    body raises ``BadRequest``. Raises ``ValueError`` if ``request`` is not a ``POST [base]``
    from :func:`classify` (a programming error, not a client's).
    """
    if request.interaction not in (_I.BATCH, _I.TRANSACTION):
        raise ValueError("classify_bundle applies only to POST [base]")
    if bundle_type == "batch":
        return dataclasses.replace(request, interaction=_I.BATCH)
    if bundle_type == "transaction":
        return dataclasses.replace(request, interaction=_I.TRANSACTION)
    raise BadRequest("POST to the base needs a Bundle of type batch or transaction")


def _segments(path: str, raw_path: bytes | None, base_path: str) -> list[str]:
    """The validated segments of ``path`` below ``base_path``."""
    # ASGI raw_path excludes the query; split anyway so a server that keeps it cannot trip us.
    if raw_path is not None and _REFUSED_ESCAPE.search(raw_path.split(b"?", 1)[0]):
        raise PathRejected("the path percent-encodes '/', '\\', '.', '%' or NUL")
    if not path.startswith("/"):
        raise PathRejected("the path is not absolute")
    if _REFUSED_CHAR.search(path):
        raise PathRejected("the path contains ';', '\\', '%' or a control character")
    segments = path[1:].split("/") if path != "/" else []
    for index, segment in enumerate(segments):
        if not segment:
            last = index == len(segments) - 1
            raise PathRejected(
                "the path ends with '/'" if last else "the path has an empty segment"
            )
        if segment in (".", ".."):
            raise PathRejected("the path has a '.' or '..' segment")
    base = [segment for segment in base_path.split("/") if segment]
    if segments[: len(base)] != base:
        raise NotFound("the path is not under the FHIR base")
    return segments[len(base) :]


def _with_slash(base_path: str) -> str:
    """``base_path`` spelled with exactly one leading and one trailing slash (``/`` for the
    root)."""
    inner = "/".join(segment for segment in base_path.split("/") if segment)
    return f"/{inner}/" if inner else "/"


def _resolve(segments: Sequence[str]) -> _Shape:
    """The shape of the segments below the base; raises for anything FHIR does not define."""
    count = len(segments)
    if count == 0:
        return _Shape(Level.SYSTEM, _AT_BASE)
    first = segments[0]
    if count == 1:
        if first == "metadata":
            return _Shape(Level.SYSTEM, {"GET": _I.CAPABILITIES})
        if first == "_history":
            return _Shape(Level.SYSTEM, {"GET": _I.HISTORY_SYSTEM})
        if first == "_search":
            return _Shape(Level.SYSTEM, {"POST": _I.SEARCH_SYSTEM}, via_post=True)
        if first.startswith("$"):
            return _operation(first, Level.SYSTEM)
    rtype = _resource_type(first)
    if count == 1:
        return _Shape(Level.TYPE, _AT_TYPE, rtype)
    second = segments[1]
    if count == 2:
        if second == "_history":
            return _Shape(Level.TYPE, {"GET": _I.HISTORY_TYPE}, rtype)
        if second == "_search":
            return _Shape(Level.TYPE, {"POST": _I.SEARCH_TYPE}, rtype, via_post=True)
        if second.startswith("$"):
            return _operation(second, Level.TYPE, rtype)
    rid = _id(second, "resource id")
    if count == 2:
        return _Shape(Level.INSTANCE, _AT_INSTANCE, rtype, rid)
    third = segments[2]
    if third == "_history":
        if count == 3:
            return _Shape(Level.INSTANCE, {"GET": _I.HISTORY_INSTANCE}, rtype, rid)
        if count == 4:
            vid = _id(segments[3], "version id")
            return _Shape(Level.INSTANCE, {"GET": _I.VREAD}, rtype, rid, vid)
    elif third.startswith("$"):
        if count == 3:
            return _operation(third, Level.INSTANCE, rtype, rid)
    elif rtype in COMPARTMENT_TYPES:
        # A compartment search names the searched type; the compartment is carried aside.
        target = _resource_type(third)
        if count == 3:
            return _Shape(
                Level.TYPE, {"GET": _I.SEARCH_COMPARTMENT}, target, compartment=(rtype, rid)
            )
        if count == 4 and segments[3] == "_search":
            return _Shape(
                Level.TYPE,
                {"POST": _I.SEARCH_COMPARTMENT},
                target,
                compartment=(rtype, rid),
                via_post=True,
            )
    raise NotFound("no FHIR interaction has this path")


def _operation(
    segment: str, level: Level, rtype: str | None = None, rid: str | None = None
) -> _Shape:
    if not _OPERATION.fullmatch(segment):
        raise BadRequest("invalid operation name")
    if segment == "$graphql":
        # FHIR defines $graphql at [base] and [base]/[type]/[id] only.
        if level is Level.TYPE:
            raise NotFound("$graphql is defined at system and instance level only")
        interaction = _I.GRAPHQL
    else:
        interaction = _I.OPERATION
    methods = {"GET": interaction, "POST": interaction}
    return _Shape(level, methods, rtype, rid, operation=segment)


def _resource_type(segment: str) -> str:
    if segment not in RESOURCE_TYPES:
        raise NotFound("unknown resource type")
    return segment


def _id(segment: str, what: str) -> str:
    if not _ID.fullmatch(segment):
        raise BadRequest(f"invalid {what}")
    return segment


def _patch_format(headers: Mapping[str, str]) -> str:
    """The patch format of a PATCH body (http://hl7.org/fhir/R4/http.html#patch)."""
    patch_format = _PATCH_FORMATS.get(media_type(headers.get("content-type", "")))
    if patch_format is None:
        raise UnsupportedMediaType(f"a patch needs one of: {', '.join(_PATCH_FORMATS)}")
    return patch_format


def _has_criteria(query: bytes) -> bool:
    """True if the query has a non-empty parameter that selects resources."""
    pairs = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=False)
    return any(name.strip() and name not in _NOT_CRITERIA for name, _ in pairs)
