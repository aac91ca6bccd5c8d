"""Base-URL rewriting, done on structure, never by replacing text in a body.

The upstream writes its own absolute base into answers; clients must see the gateway's. Only
these places are rewritten (FHIR R4 http.html §3.1.0.1.8 and bundle.html):

- ``Bundle.link[].url`` and ``Bundle.entry[].fullUrl``;
- ``Bundle.entry[].response.location`` (a Location header inside a batch/transaction answer);
- every ``reference`` element (the Reference datatype) whose value is an absolute URL on the
  upstream base, in any resource, nested Bundle or contained resource;
- the ``Location`` and ``Content-Location`` response headers.

- an Attachment's ``url`` (``DocumentReference.content.attachment``, ``presentedForm``,
  ``photo``, any ``...Attachment`` element) on the upstream base: it locates a ``Binary`` of
  this server, which clients reach through the gateway (the id mapping gives its path the
  client's id; a URL keeping the upstream's base would name the upstream to the client).

Canonical URLs (``url`` of conformance resources, ``Extension.url``), other URIs and narrative
text are left alone: they are identifiers or content, not locations of this server.
A URL is on the upstream base when it equals the base or continues it with ``/`` or ``?``.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["Rebaser"]

#: Elements of type Attachment (FHIR R4), by name; any element ending in ``Attachment``
#: (``valueAttachment``, ``contentAttachment``) too. As the id mapping's own list
#: (``mapping.references``): the base and the id of one URL are rewritten in the same places.
_ATTACHMENTS: Final = frozenset(
    {"attachment", "content", "photo", "presentedForm", "document", "form", "image"}
)


class Rebaser:
    """Rewrites URLs under ``upstream_base`` to the same path under ``gateway_base``."""

    def __init__(self, upstream_base: str, gateway_base: str) -> None:
        self.upstream_base = upstream_base.rstrip("/")
        self.gateway_base = gateway_base.rstrip("/")
        self._needle = self.upstream_base.encode()
        # JSON may escape '/' as '\/' (RFC 8259 §7); a body using that form must be caught too.
        self._escaped_needle = self.upstream_base.replace("/", "\\/").encode()

    def url(self, value: str) -> str:
        """``value`` rebased when it lies on the upstream base, else unchanged."""
        base = self.upstream_base
        if value.startswith(base) and (len(value) == len(base) or value[len(base)] in "/?"):
            return self.gateway_base + value[len(base) :]
        return value

    def occurrences(self, body: bytes) -> int:
        """How often the upstream base appears in the raw ``body`` (0: nothing to rewrite)."""
        return body.count(self._needle) + body.count(self._escaped_needle)

    def rewrite(self, document: Any, occurrences: int) -> None:
        """Rewrite ``document`` (decoded JSON, changed in place).

        ``occurrences`` is :meth:`occurrences` of the raw body. Bundle-level fields are
        rewritten first; when they account for every occurrence, the resources cannot hold
        any and are not walked (the common searchset case, which saves a full tree walk).
        """
        remaining = occurrences - self._rewrite_bundle_fields(document)
        if remaining > 0:
            self._walk(document)

    def _rewrite_bundle_fields(self, document: Any) -> int:
        if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
            return 0
        count = 0
        for link in _dicts(document.get("link")):
            count += self._rewrite_key(link, "url")
        for entry in _dicts(document.get("entry")):
            count += self._rewrite_key(entry, "fullUrl")
            response = entry.get("response")
            if isinstance(response, dict):
                count += self._rewrite_key(response, "location")
        return count

    def _rewrite_key(self, holder: dict[str, Any], key: str) -> int:
        value = holder.get(key)
        if not isinstance(value, str):
            return 0
        found = value.count(self.upstream_base)
        if found:
            holder[key] = self.url(value)
        return found

    def _walk(self, node: Any) -> None:
        # Iterative: a hostile upstream body must not exhaust the Python stack.
        stack = [node]
        while stack:
            current = stack.pop()
            if isinstance(current, dict):
                if current.get("resourceType") == "Bundle":
                    self._rewrite_bundle_fields(current)
                for key, value in current.items():
                    if key == "reference" and isinstance(value, str):
                        current[key] = self.url(value)
                    elif isinstance(value, dict | list):
                        if key in _ATTACHMENTS or key.endswith("Attachment"):
                            self._rebase_attached(value)
                        stack.append(value)
            elif isinstance(current, list):
                stack.extend(item for item in current if isinstance(item, dict | list))

    def _rebase_attached(self, value: dict[str, Any] | list[Any]) -> None:
        for item in [value] if isinstance(value, dict) else value:
            if isinstance(item, dict) and isinstance(item.get("url"), str):
                item["url"] = self.url(item["url"])


def _dicts(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []
