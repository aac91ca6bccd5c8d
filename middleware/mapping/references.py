"""Rewrite resource ids wherever they hide, toward the client or back toward one upstream.

Found on structure, never by replacing text (as :mod:`middleware.proxy.rewrite` does for bases).
An id is rewritten, through an :class:`~middleware.mapping.ids.IdResolver`, in:

- a resource's own ``id`` (every resource: top level, Bundle entries, nested Bundles,
  ``Parameters.parameter.resource``), except contained resources (their ``id`` is a local
  anchor, R4 references.html#contained) and transaction/batch Bundles and their responses
  (a message envelope, not a stored resource);
- every ``reference`` element (the Reference datatype, R4 references.html#literal): relative
  ``Type/id``, ``Type/id/_history/vid``, and absolute ``<base>/Type/id[/_history/vid]`` under
  one of the given ``bases``;
- every ``valueUri`` or ``valueUrl`` (an extension's, R4 extensibility.html value[x], and
  any other: a QuestionnaireResponse answer, a Task or Parameters value) and every
  Attachment's ``url`` (``_ATTACHMENTS``; ``DocumentReference.content.attachment.url`` =
  ``Binary/<id>``) that names a resource of this upstream: absolute under one of the
  ``bases``, or relative ``Type/id`` of an R4 resource type (an upstream may point at its own
  records so as well as by Reference). Toward the upstream such a uri naming an id the
  gateway did not issue is left as written: it is not a reference, and may be any URI;
- ``Bundle.entry.fullUrl``, ``Bundle.link.url`` and ``Bundle.entry.link.url`` (the path's id
  only: query strings are the pipeline's, which replaces a searchset's paging links with
  cursors and ``self`` with the client's URL), ``Bundle.entry.response.location``,
  ``Bundle.entry.request.url`` (and the reference values of a search or conditional URL in
  it, and of ``request.ifNoneExist``); every other element of an entry, a link, a request or
  a response (``search``, ``extension``, ``modifierExtension``...) is walked like any
  element, so no part of an entry keeps an upstream id;
- ``Location`` and ``Content-Location`` header values (:meth:`ReferenceRewriter.location`);
- search parameters toward the upstream (:meth:`ReferenceRewriter.search`).

Never touched: ``urn:uuid:``/``urn:oid:`` references (a client transaction's own placeholders,
R4 bundle.html#references), ``#id`` contained references, absolute URLs of other servers,
version ids, and canonical URLs (``Extension.url``, ``valueCanonical``, ``meta.profile``,
``instantiates*``, ``ConceptMap``/``ValueSet`` ``url``s): they are not ``reference`` elements
(nor an extension's uri), so the walk never reads them. Conditional references in bodies
(``Patient?identifier=...``) have their reference parameter values rewritten like a search;
one that can match nothing is a 422, while an ``ifNoneExist`` that can match nothing is
dropped (none exist, so the create proceeds).

Toward the client every id is the upstream's and must translate, or the answer is refused
(:class:`~middleware.mapping.ids.UntranslatableId`, 422): an upstream id never reaches a client.
Toward the upstream, an id the resolver did not issue, or issued for another upstream, is
"not found" (404) in a resource ``id``, a request URL or a header, and a 422 in a reference a
client wrote. A create's ``id`` is dropped (R4 http.html#create: the server ignores it). Bodies
are copied only on the way to a change (decimals, :class:`msgspec.Raw`, pass through).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote, urlencode

from middleware.errors import BadRequest, NotFound, UnprocessableEntity, UpstreamError
from middleware.fhir.compartment_data import (
    PATIENT_COMPARTMENT,
    PATIENT_ONLY_PARAMS,
    SEARCH_ALIASES,
)
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.mapping.ids import RESOURCE_TYPE, IdResolver, not_ours
from middleware.mapping.references_owned import to_client_in_place
from middleware.mapping.tokens import split

__all__ = ["ReferenceRewriter", "ReferenceWalk", "SearchReferences", "Toward"]

Toward = Literal["client", "upstream"]

_ENVELOPES: Final = frozenset({"transaction", "batch", "transaction-response", "batch-response"})
#: The elements of a ``Bundle.entry`` whose URLs :meth:`ReferenceWalk.entry` rewrites itself.
_ENTRY_PARTS: Final = frozenset({"fullUrl", "request", "response", "resource"})
#: Extension values that may be a URL naming a resource (R4 extensibility.html: value[x]).
_URI_VALUES: Final = frozenset({"valueUri", "valueUrl"})
#: The keys whose string value may name a resource in an element that is not a resource.
_NAMED: Final = _URI_VALUES | {"reference"}
#: Elements of type Attachment (R4 datatypes.html#Attachment), besides every choice or
#: ``defaultValue``/``fixed``/``pattern`` element whose name ends in ``Attachment``
#: (``valueAttachment``, ``contentAttachment``, ``sourceAttachment``...): ``Patient.photo``,
#: ``DocumentReference.content.attachment``, ``Media.content``, ``Library.content``,
#: ``DiagnosticReport.presentedForm``, ``RelatedArtifact.document``, ``ClaimResponse.form``,
#: ``ProdCharacteristic.image``. Their ``url`` (R4: "where the data can be accessed") is
#: rewritten as a ``valueUri`` is; any other dict under these names has no string ``url``
#: naming a resource of this upstream, or keeps it (:meth:`ReferenceWalk.uri` only rewrites those).
_ATTACHMENTS: Final = frozenset(
    {"attachment", "content", "photo", "presentedForm", "document", "form", "image"}
)
_MAX_DEPTH: Final = 256  # dict and list levels; FHIR data is far shallower
_SAFE: Final = ",|:/$"  # as middleware.pipeline.params: FHIR search syntax stays readable
#: Search parameters known to be references (those of the Patient compartment, R4): a bare id
#: in them is resolved by whichever type issued it.
_REFERENCE_PARAMS: Final = {
    kind: frozenset({param for param, _ in rows} | set(SEARCH_ALIASES.get(kind, ())))
    for kind, rows in PATIENT_COMPARTMENT.items()
}


@dataclass(frozen=True, slots=True)
class SearchReferences:
    """Search parameters with their ids rewritten toward the upstream.

    ``matches_nothing``: some parameter was left with no value this upstream can match (every
    id it named was not issued for this upstream); answer an empty searchset without asking.
    """

    params: tuple[tuple[str, str], ...]
    matches_nothing: bool = False


class ReferenceRewriter:
    """Rewrites ids for one upstream (see the module docstring).

    ``bases`` are the absolute FHIR bases under which a URL names a resource of this upstream:
    the upstream's own, and the gateway's as clients see it (whichever the body holds at the
    point of the pipeline where this runs). Only the id in such a URL changes; the base stays.
    """

    def __init__(self, resolver: IdResolver, upstream: str, *, bases: Sequence[str] = ()) -> None:
        self.resolver = resolver
        self.upstream = upstream
        self.bases = tuple(base.rstrip("/") + "/" for base in bases)

    # -- public surface ------------------------------------------------------------------------

    def to_client(self, document: Any) -> Any:
        """``document`` (a resource or Bundle, decoded JSON) with the client's ids."""
        return ReferenceWalk(self, "client").node(document, 0)

    def to_client_in_place(self, document: Any) -> bool:
        """``document`` with the client's ids, edited in place; True when anything changed.
        Only for a tree the caller owns and nobody else reads (one just decoded):
        :mod:`middleware.mapping.references_owned`."""
        return to_client_in_place(self, document)

    def to_upstream(self, document: Any, *, create: bool = False) -> Any:
        """``document`` a client sent, with the upstream's ids; ``create``: drop its ``id``."""
        if create and isinstance(document, dict) and "id" in document:
            document = {k: v for k, v in document.items() if k != "id"}
        return ReferenceWalk(self, "upstream").node(document, 0)

    def id(self, resource_type: str, value: str, toward: Toward) -> str:
        """One id: the client's for an upstream id, or the upstream's for a client id (404 when
        the resolver did not issue it for this upstream)."""
        if toward == "client":
            return self.resolver.to_client(self.upstream, resource_type, value)
        upstream, local = self.resolver.to_upstream(resource_type, value)
        if upstream != self.upstream:
            raise not_ours()
        return local

    def location(self, value: str, toward: Toward) -> str:
        """A ``Location`` or ``Content-Location`` header value (absolute under a base, or
        relative ``Type/id[/_history/vid]``)."""
        return ReferenceWalk(self, toward).url(value, query=False)

    def search(
        self, resource_type: str | None, params: Sequence[tuple[str, str]]
    ) -> SearchReferences:
        """The ids in a client's search parameters, toward the upstream.

        Rewritten: ``_id`` (ids of ``resource_type``), ``_list`` (List ids), and reference
        values: ``Type/id`` in any parameter (``Type`` an R4 resource type; absolute ones under
        a base), a bare id with a ``:Type`` modifier or in a parameter that targets only
        Patient, and a bare id in another reference parameter of the Patient compartment
        (resolved by whichever type issued it; 400 if several did). Chained
        (``subject.name``), reverse-chained (``_has``) and modified (``:identifier``,
        ``:missing``...) parameters carry no ids and pass. An OR-value this upstream cannot
        match (not issued, or for another upstream) is dropped; a parameter left with none sets
        ``matches_nothing`` (a ``:not`` one is omitted: it excludes nothing).

        Not resolved: a bare id in a reference parameter outside the compartment's list
        (``encounter=<id>``) cannot be told from a string or token value, and is forwarded as
        written; clients write ``Type/id`` (``encounter=Encounter/<id>``). An opaque client id
        matches no upstream data that way; an upstream's own id might, and what it finds is
        judged and rewritten like any other answer.
        """
        walk = ReferenceWalk(self, "upstream")
        out: list[tuple[str, str]] = []
        nothing = False
        for name, value in params:
            rewritten = walk.search_value(resource_type, name, value)
            if rewritten is not None:
                out.append((name, rewritten))
            elif not name.endswith(":not"):  # excluding only what cannot exist excludes nothing
                nothing = True
                out.append((name, value))
        return SearchReferences(tuple(out), nothing)


class ReferenceWalk:
    """One pass in one direction, with a memo (a Bundle repeats the same few references)."""

    def __init__(self, owner: ReferenceRewriter, toward: Toward) -> None:
        self.owner = owner
        self.toward = toward
        self.memo: dict[tuple[str, str], str] = {}
        #: Whether a ``Type`` of a ``Type/id`` is a resource type's name (a few per answer).
        self.kinds: dict[str, bool] = {}

    def convert(self, resource_type: str, value: str) -> str:
        key = (resource_type, value)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self.owner.id(resource_type, value, self.toward)
        return found

    # -- bodies --------------------------------------------------------------------------------

    def node(self, node: Any, depth: int, *, contained: bool = False) -> Any:
        """Copy-on-write walk of every dict and list below ``node``.

        Hot path (every element of every answer): types are tested with ``is``; a dict that is
        not a resource takes the short loop (only a ``reference`` can change in it), and a leaf
        in a list is not visited (it cannot change; only its depth is checked).
        """
        if depth > _MAX_DEPTH:
            raise self.too_deep()
        kind = type(node)
        if kind is list:
            if node and depth + 1 > _MAX_DEPTH:  # as visiting the first item would find
                raise self.too_deep()
            items: list[Any] | None = None
            for i, item in enumerate(node):
                if type(item) is dict or type(item) is list:
                    new = self.node(item, depth + 1, contained=contained)
                    if new is not item:
                        items = items if items is not None else list(node)
                        items[i] = new
            return node if items is None else items
        if kind is not dict:
            return node
        declared = node.get("resourceType")
        if type(declared) is str:
            return self.resource(node, declared, depth, contained=contained)
        changed: dict[str, Any] | None = None
        named = _NAMED  # a local: one set lookup per value, as the one compare was
        for key, value in node.items():
            if type(value) is dict or type(value) is list:
                new = self.node(value, depth + 1)
                if key in _ATTACHMENTS or key.endswith("Attachment"):
                    new = self.attached(new)
            elif key not in named or type(value) is not str:
                continue
            elif key == "reference":
                new = self.reference(value)
            else:
                new = self.uri(value)
            if new is not value:
                changed = changed if changed is not None else {}
                changed[key] = new
        return node if changed is None else {**node, **changed}

    def too_deep(self) -> BadRequest | UpstreamError:
        """The refusal of a tree deeper than the walk goes: the client's fault toward the
        upstream, the upstream's toward the client."""
        error = BadRequest if self.toward == "upstream" else UpstreamError
        return error("the resource is nested too deeply")

    def resource(self, node: dict[str, Any], kind: str, depth: int, *, contained: bool) -> Any:
        """:meth:`node` for a dict with a ``resourceType``: its ``id`` too (not a contained
        resource's: a local anchor), a Bundle's entries and links, its contained resources."""
        changed: dict[str, Any] = {}
        new: Any
        for key, value in node.items():
            if key == "reference" and type(value) is str:
                new = self.reference(value)
            elif key in _URI_VALUES and type(value) is str:
                new = self.uri(value)
            elif key == "id" and not contained and type(value) is str:
                envelope = kind == "Bundle" and node.get("type") in _ENVELOPES
                new = value if envelope else self.convert(kind, value)
            elif key in ("entry", "link") and kind == "Bundle" and type(value) is list:
                new = self.bundle_part(key, value, depth + 1)
            elif type(value) is dict or type(value) is list:
                new = self.node(value, depth + 1, contained=key == "contained")
                if key in _ATTACHMENTS or key.endswith("Attachment"):
                    new = self.attached(new)
            else:
                continue
            if new is not value:
                changed[key] = new
        return {**node, **changed} if changed else node

    def bundle_part(self, key: str, items: list[Any], depth: int) -> list[Any]:
        """``Bundle.entry`` or a ``link`` list (``depth``: the list's); an item that is a list
        (no FHIR, but an upstream may send it) is walked as any other data."""
        out = [
            (self.link(item, depth + 1) if key == "link" else self.entry(item, depth + 1))
            if type(item) is dict
            else self.node(item, depth + 1)
            if type(item) is list
            else item
            for item in items
        ]
        return out if any(a is not b for a, b in zip(out, items, strict=True)) else items

    def link(self, link: dict[str, Any], depth: int) -> Any:
        """A ``Bundle.link`` or ``Bundle.entry.link`` (R4: the same element): its ``url``,
        then its extensions and anything else below it, like any element."""
        return self.node(_changed(link, "url", lambda url: self.url(url, query=False)), depth)

    def entry(self, entry: dict[str, Any], depth: int) -> dict[str, Any]:
        """One ``Bundle.entry``: its ``fullUrl``, ``request`` (``url``, ``ifNoneExist``),
        ``response`` (``location``) and ``resource``, then every other element of it
        (``link``, ``search``, extensions and modifier extensions, anything else) like any
        element: an id in none of them is left as it was."""
        out = _changed(entry, "fullUrl", lambda url: self.url(url, query=False))
        request, resource = out.get("request"), out.get("resource")
        if type(request) is dict:
            kind = resource.get("resourceType") if type(resource) is dict else None
            request = _changed(request, "url", lambda url: self.url(url, query=True))
            exists = request.get("ifNoneExist")
            if self.toward == "upstream" and type(kind) is str and type(exists) is str:
                found = self.query(kind, exists)
                if found is None:  # criteria that match nothing: "none exist" holds, so create
                    request = {k: v for k, v in request.items() if k != "ifNoneExist"}
                elif found != exists:
                    request = {**request, "ifNoneExist": found}
            posted = request.get("method") == "POST" and self.toward == "upstream"
            if posted and type(resource) is dict and "id" in resource:
                resource = {k: v for k, v in resource.items() if k != "id"}  # http.html#create
            out = _put(out, "request", self.node(request, depth + 1))
        response = out.get("response")
        if type(response) is dict:
            response = _changed(response, "location", lambda url: self.url(url, query=False))
            out = _put(out, "response", self.node(response, depth + 1))
        if resource is not None:
            out = _put(out, "resource", self.node(resource, depth + 1))
        rest: dict[str, Any] = {}
        new: Any
        for key, value in out.items():
            if key in _ENTRY_PARTS:
                continue
            if key == "link" and type(value) is list:
                new = self.bundle_part("link", value, depth + 1)
            elif type(value) is dict or type(value) is list:
                new = self.node(value, depth + 1)
                if key in _ATTACHMENTS or key.endswith("Attachment"):
                    new = self.attached(new)
            elif type(value) is not str:
                continue
            elif key == "reference":
                new = self.reference(value)
            elif key in _URI_VALUES:
                new = self.uri(value)
            else:
                continue
            if new is not value:
                rest[key] = new
        return {**out, **rest} if rest else out

    def attached(self, value: Any) -> Any:
        """An Attachment (or a list of them) with its ``url`` rewritten by :meth:`uri`."""
        if type(value) is dict:
            return _changed(value, "url", self.uri)
        if type(value) is not list:
            return value
        out = [_changed(item, "url", self.uri) if type(item) is dict else item for item in value]
        return out if any(a is not b for a, b in zip(out, value, strict=True)) else value

    def uri(self, value: str) -> str:
        """A ``valueUri``, ``valueUrl`` or Attachment ``url``: rewritten as a ``reference`` is
        when it names a resource of this upstream (absolute under a base, or relative
        ``Type/id`` of an R4 resource type); another server's URL, a URN or a relative path of
        no resource type is left as written (a uri is not always a location). Toward the
        upstream, one naming an id the gateway did not issue is left as written too: a uri
        is not a reference (``Questionnaire/phq9`` may be a name), so it is not refused."""
        relative = ":" not in value.partition("?")[0]
        if relative and value.partition("/")[0] not in RESOURCE_TYPES:
            return value
        if not relative and not value.startswith(self.owner.bases):
            return value
        try:
            return self.url(value, query=False)
        except NotFound as exc:
            if self.toward == "upstream":
                return value
            raise UnprocessableEntity(
                "a reference in the request does not name a resource of this server"
            ) from exc

    def reference(self, value: str) -> str:
        try:
            return self.url(value, query=True)
        except NotFound as exc:  # a client's reference to nothing we issued: its body is wrong
            raise UnprocessableEntity(
                "a reference in the request does not name a resource of this server"
            ) from exc

    # -- URLs ----------------------------------------------------------------------------------

    def url(self, value: str, *, query: bool) -> str:
        """A relative or absolute URL naming a resource of this upstream, id rewritten (the
        same string object when nothing changed)."""
        if value.startswith(("#", "urn:")):
            return value
        if ":" in value.partition("?")[0]:  # absolute (ids, types and paths hold no ':')
            for base in self.owner.bases:
                if value.startswith(base):
                    tail = value[len(base) :]
                    new = self.path(tail, query=query)
                    return value if new is tail else base + new
            return value
        return self.path(value, query=query)

    def path(self, value: str, *, query: bool) -> str:
        """``Type/id[/...][?query]`` with the id rewritten (and, with ``query``, toward the
        upstream, the reference values of a type-level search or conditional URL)."""
        kind, slash, local = value.partition("/")
        if slash and local and "/" not in local and "?" not in value and local[0] not in "$_":
            # ``Type/id``, what nearly every reference is: the general case below, shortened
            typed = self.kinds.get(kind)
            if typed is None:
                typed = self.kinds[kind] = RESOURCE_TYPE.fullmatch(kind) is not None
            if not typed:
                return value
            new = f"{kind}/{self.convert(kind, local)}"
            return value if new == value else new
        head, mark, rest = value.partition("?")
        segments = head.split("/")
        if not RESOURCE_TYPE.fullmatch(segments[0]):
            return value
        if len(segments) >= 2 and segments[1] and segments[1][0] not in "$_":
            segments[1] = self.convert(segments[0], segments[1])
        elif mark and query and self.toward == "upstream" and segments[1:] in ([], ["_search"]):
            found = self.query(segments[0], rest)
            if found is None:  # a conditional reference or a batch search that cannot match
                raise UnprocessableEntity(
                    "a conditional or search URL in the request names a resource this server "
                    "did not issue"
                )
            rest = found
        new = "/".join(segments) + mark + rest
        return value if new == value else new

    def query(self, resource_type: str, text: str) -> str | None:
        """A query string with its reference values rewritten (the same text if none were);
        ``None`` when it can match nothing on this upstream."""
        params = parse_qsl(text, keep_blank_values=True)
        rewritten = self.owner.search(resource_type, params)
        if rewritten.matches_nothing:
            return None
        if list(rewritten.params) == params:
            return text
        return urlencode(list(rewritten.params), quote_via=quote, safe=_SAFE)

    # -- search --------------------------------------------------------------------------------

    def search_value(self, resource_type: str | None, name: str, value: str) -> str | None:
        """The rewritten value (``value`` itself when it holds no id); ``None`` when none of
        its OR-values names anything on this upstream."""
        head, _, modifier = name.partition(":")
        if "." in head or "." in modifier or head.startswith("_has") or modifier == "missing":
            return value
        convert: Callable[[str], str | None]
        if head in ("_id", "_list"):
            kind = resource_type if head == "_id" else "List"
            if kind is None:
                return None
            convert = partial(self.bare, kind)
        elif modifier == "not":  # R5 allows it on references: the ids still have to resolve
            convert = self.typed_reference
        elif head.startswith("_") or (modifier and not RESOURCE_TYPE.fullmatch(modifier)):
            return value
        elif modifier or (resource_type, head) in PATIENT_ONLY_PARAMS:
            convert = partial(self.search_reference, modifier or "Patient")
        elif head in _REFERENCE_PARAMS.get(resource_type or "", ()):
            convert = partial(self.search_reference, None)
        else:
            convert = self.typed_reference
        items = split(value, ",")
        kept = [new for new in map(convert, items) if new is not None]
        if not kept:
            return None
        return value if kept == items else ",".join(kept)

    def bare(self, resource_type: str, item: str) -> str | None:
        if resource_type == "List" and item.startswith("$"):  # a functional list ($current-...)
            return item
        try:
            return self.convert(resource_type, item)
        except NotFound:
            return None

    def search_reference(self, resource_type: str | None, item: str) -> str | None:
        """One OR-value of a reference parameter: ``Type/id``, or a bare id of
        ``resource_type`` (``None``: of whichever type issued it)."""
        if "/" in item or ":" in item:
            return self.typed_reference(item)
        if resource_type is not None:
            return self.bare(resource_type, item)
        found = set()
        for kind in sorted(RESOURCE_TYPES):
            try:
                found.add(self.convert(kind, item))
            except NotFound:
                continue
        if len(found) > 1:
            raise BadRequest(
                "a bare id in a reference search parameter names several resources; "
                "write it as Type/id",
                code="not-supported",
            )
        return found.pop() if found else None

    def typed_reference(self, item: str) -> str | None:
        """``Type/id`` (or absolute under a base) in any parameter; other values unchanged."""
        if "/" not in item:
            return item
        relative = next((item[len(b) :] for b in self.owner.bases if item.startswith(b)), item)
        if "?" in relative or relative.split("/", 1)[0] not in RESOURCE_TYPES:
            return item  # another server's URL, a URN, or not a reference at all
        try:
            return self.url(item, query=False)
        except NotFound:
            return None


def _changed(holder: dict[str, Any], key: str, change: Callable[[str], str]) -> dict[str, Any]:
    """``holder`` with ``change`` applied to its string ``key`` (``holder`` if unchanged)."""
    value = holder.get(key)
    if type(value) is not str:
        return holder
    new = change(value)
    return holder if new == value else {**holder, key: new}


def _put(holder: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return holder if holder.get(key) is value else {**holder, key: value}
