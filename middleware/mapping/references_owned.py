"""The client's ids in an answer the caller owns, edited in place (one walk, no copies).

:meth:`ReferenceRewriter.to_client <middleware.mapping.references.ReferenceRewriter.to_client>`
copies every dict on the way to a change, so that a shared tree is never changed under
another holder. An upstream answer the gateway has just decoded from the upstream's bytes is
held by nobody else: :func:`to_client_in_place` rewrites the same ids in the same places
(:mod:`middleware.mapping.references` says which) by assigning into that tree, and gives the
same result as ``to_client`` on it (a property test holds them equal on random trees).

Contract for the caller: ``document`` is owned (no other holder reads it afterwards expecting
the upstream's ids) and no dict or list is reachable twice in it (true of anything a JSON
decoder produced: each would be rewritten twice otherwise). On an error the tree may be half
rewritten; the answer is refused then (422/502), so it is never used.

Why it is faster than the copy-on-write walk on a 1,000-entry searchset: no dict is rebuilt
(``{**node, **changed}`` per entry, resource and changed element), and the rewritten URLs are
remembered by their text, so the ``Patient/p-1`` a searchset repeats in every entry is parsed
once. Which elements are looked at cannot be narrowed by resource type: a reference may sit
in an extension of any element (``Element.extension``, ``Extension.valueReference``), so
every dict is visited, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from middleware.mapping.references import ReferenceRewriter

__all__ = ["to_client_in_place"]

_ENVELOPES: Final = frozenset({"transaction", "batch", "transaction-response", "batch-response"})
_BUNDLE_PARTS: Final = frozenset({"entry", "link"})
#: As ``references._ENTRY_PARTS`` and ``references._URI_VALUES``.
_ENTRY_PARTS: Final = frozenset({"fullUrl", "request", "response", "resource"})
_URI_VALUES: Final = frozenset({"valueUri", "valueUrl"})
_NAMED: Final = _URI_VALUES | {"reference"}
#: As ``references._ATTACHMENTS``: elements of type Attachment, whose ``url`` is a uri.
_ATTACHMENTS: Final = frozenset(
    {"attachment", "content", "photo", "presentedForm", "document", "form", "image"}
)
_MAX_DEPTH: Final = 256  # as middleware.mapping.references: the same refusals at the same depth


def to_client_in_place(rewriter: ReferenceRewriter, document: Any) -> bool:
    """Rewrite ``document`` (owned; see the module docstring) toward the client in place;
    True when anything changed. Raises what ``rewriter.to_client`` raises on the same tree."""
    walk = _InPlace(rewriter)
    if type(document) is dict or type(document) is list:
        walk.node(document, 0, False)
    return walk.changed


class _InPlace:
    """One pass: the copy-on-write walk's URL logic (``references.ReferenceWalk``) behind a memo by
    text, and in-place assignment."""

    __slots__ = ("changed", "urls", "walk")

    def __init__(self, rewriter: ReferenceRewriter) -> None:
        from middleware.mapping.references import ReferenceWalk  # noqa: PLC0415 - the module imports us

        self.walk = ReferenceWalk(rewriter, "client")
        #: URL text -> its rewritten text (toward the client, ``query`` changes nothing).
        self.urls: dict[str, str] = {}
        self.changed = False

    def url(self, value: str, *, reference: bool = False) -> str:
        """``value`` rewritten; a ``reference`` element's failure is the 422
        ``ReferenceWalk`` gives."""
        found = self.urls.get(value)
        if found is None:
            walk = self.walk
            found = walk.reference(value) if reference else walk.url(value, query=False)
            self.urls[value] = found
        if found != value:
            self.changed = True
        return found

    def node(self, node: Any, depth: int, contained: bool) -> None:
        """``node`` (a dict or a list) and everything below it; as ``ReferenceWalk.node``."""
        if depth > _MAX_DEPTH:
            raise self.walk.too_deep()
        if type(node) is list:
            if node and depth + 1 > _MAX_DEPTH:
                raise self.walk.too_deep()
            for item in node:
                if type(item) is dict or type(item) is list:
                    self.node(item, depth + 1, contained)
            return
        if type(node) is not dict:  # an entry's non-object resource: only its depth counts
            return
        declared = node.get("resourceType")
        if type(declared) is str:
            self.resource(node, declared, depth, contained)
            return
        below = depth + 1
        named = _NAMED  # a local: one set lookup per string value, as the one compare was
        for key, value in node.items():
            kind = type(value)
            if kind is str:  # most values: one test, then the key only if it is a string
                if key in named:
                    if key == "reference":
                        new = self.url(value, reference=True)
                        if new is not value:
                            node[key] = new  # an existing key: safe while iterating
                    else:
                        self.uri(node, key, value)
            elif kind is dict or kind is list:
                self.node(value, below, False)
                if key in _ATTACHMENTS or key.endswith("Attachment"):
                    self.attached(value)

    def resource(self, node: dict[str, Any], kind: str, depth: int, contained: bool) -> None:
        """As ``ReferenceWalk.resource``: its ``id`` (not a contained resource's, nor an
        envelope's), a Bundle's entries and links, everything else below it."""
        below = depth + 1
        bundle = kind == "Bundle"
        for key, value in node.items():
            vkind = type(value)
            if key == "reference" and vkind is str:
                new = self.url(value, reference=True)
                if new is not value:
                    node[key] = new
            elif key in _URI_VALUES and vkind is str:
                self.uri(node, key, value)
            elif key == "id" and not contained and vkind is str:
                if bundle and node.get("type") in _ENVELOPES:
                    continue
                new = self.walk.convert(kind, value)
                if new != value:
                    self.changed = True
                    node[key] = new
            elif bundle and vkind is list and key in _BUNDLE_PARTS:
                self.bundle_part(key, value, below)
            elif vkind is dict or vkind is list:
                self.node(value, below, key == "contained")
                if key in _ATTACHMENTS or key.endswith("Attachment"):
                    self.attached(value)

    def bundle_part(self, key: str, items: list[Any], depth: int) -> None:
        """As ``ReferenceWalk.bundle_part``: ``Bundle.entry`` or a ``link`` list at ``depth``."""
        for item in items:
            if type(item) is dict:
                if key == "link":
                    self.put(item, "url")
                    self.node(item, depth + 1, False)
                else:
                    self.entry(item, depth + 1)
            elif type(item) is list:
                self.node(item, depth + 1, False)

    def entry(self, entry: dict[str, Any], depth: int) -> None:
        """As ``ReferenceWalk.entry`` toward the client: ``fullUrl``, ``request.url``,
        ``response.location``, the request, response and resource below, then every other
        element of the entry (links, search, extensions) in the same order."""
        self.put(entry, "fullUrl")
        below = depth + 1
        request = entry.get("request")
        if type(request) is dict:
            self.put(request, "url")
            self.node(request, below, False)
        response = entry.get("response")
        if type(response) is dict:
            self.put(response, "location")
            self.node(response, below, False)
        resource = entry.get("resource")
        if resource is not None:
            self.node(resource, below, False)
        for key, value in entry.items():
            vkind = type(value)
            if key in _ENTRY_PARTS:
                continue
            if key == "link" and vkind is list:
                self.bundle_part(key, value, below)
            elif vkind is dict or vkind is list:
                self.node(value, below, False)
                if key in _ATTACHMENTS or key.endswith("Attachment"):
                    self.attached(value)
            elif vkind is str:
                if key == "reference":
                    new = self.url(value, reference=True)
                    if new is not value:
                        entry[key] = new
                elif key in _URI_VALUES:
                    self.uri(entry, key, value)

    def attached(self, value: Any) -> None:
        """An Attachment (or a list of them): its ``url``, as ``ReferenceWalk.attached``."""
        for item in value if type(value) is list else (value,):
            if type(item) is dict and type(item.get("url")) is str:
                self.uri(item, "url", item["url"])

    def uri(self, holder: dict[str, Any], key: str, value: str) -> None:
        """A ``valueUri``/``valueUrl`` or Attachment ``url`` (``holder[key]``), as
        ``ReferenceWalk.uri``."""
        new = self.walk.uri(value)
        if new != value:
            self.changed = True
            holder[key] = new

    def put(self, holder: dict[str, Any], key: str) -> None:
        """Rewrite the URL at ``holder[key]``, if it is a string."""
        value = holder.get(key)
        if type(value) is str:
            new = self.url(value)
            if new != value:
                holder[key] = new
