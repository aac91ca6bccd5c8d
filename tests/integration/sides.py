"""Ask the gateway and the upstream the same thing, and compare what they answer.

The gateway side carries a backend-service token (``system/*.cruds``) under the opt-out
jurisdiction with no consent on file, so the gateway releases everything and must answer what
the upstream answers, except:

- its own base URL replaces the upstream's in ``Bundle.entry.fullUrl``,
  ``Bundle.entry.response.location`` and the ``Location`` header;
- paging links are its own (enforcement): ``self`` is the client's request URL on the gateway
  (written even where the upstream writes none), ``next``/``previous``/``first``/``last`` are
  gateway URLs carrying an opaque ``_cursor`` (the upstream's paging state never reaches the
  client). :meth:`Sides.same` compares the paging *relations* only, and checks the ``self``
  link of a GET;
- ``Bundle.total`` is removed (a count of unfiltered matches would be an oracle).

:meth:`Sides.same` checks that, and every gateway answer read through :class:`Sides` is also
checked for URLs that point anywhere but the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["Sides", "bundle_urls", "comparable", "entries"]


@dataclass(frozen=True)
class Sides:
    """An httpx client on each side: ``gateway`` (via the gateway, sending the
    ``authorization`` header) and ``direct``."""

    gateway: httpx.Client
    direct: httpx.Client
    gateway_base: str
    upstream_base: str
    authorization: str

    def auth_for(self, base: str) -> str | None:
        """The ``Authorization`` value a client of ``base`` sends (None: the upstream's)."""
        return self.authorization if base == self.gateway_base else None

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
        """Send the same request through the gateway, then directly."""
        via = self.gateway.request(method, self.url(self.gateway_base, path), **kwargs)
        self.check_gateway_answer(via)
        direct = self.direct.request(method, self.url(self.upstream_base, path), **kwargs)
        return via, direct

    def same(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a read-only request both ways; assert equal status and equal JSON up to the
        differences the module docstring lists; return the direct answer's JSON."""
        via, direct = self.both(method, path, **kwargs)
        assert via.status_code == direct.status_code, via.text
        via_json, direct_json = via.json(), direct.json()
        assert comparable(self.normalise(via_json)) == comparable(direct_json)
        if method == "GET":
            own = [link["url"] for link in via_json.get("link", []) if link["relation"] == "self"]
            assert own in ([], [self.url(self.gateway_base, path)]), own
        return direct_json

    def pages(self, client: httpx.Client, url: str) -> Iterator[Any]:
        """Yield every page of a search, following ``next`` links as given."""
        next_url: str | None = url
        while next_url is not None:
            response = client.get(next_url)
            assert response.status_code == 200, response.text
            if client is self.gateway:
                self.check_gateway_answer(response)
            page = response.json()
            yield page
            next_url = next(
                (link["url"] for link in page.get("link", []) if link["relation"] == "next"), None
            )

    def normalise(self, document: Any) -> Any:
        """A copy of a gateway answer with the gateway base put back to the upstream's, in the
        Bundle fields the gateway rebases (nested Bundles included)."""
        copy = json.loads(json.dumps(document))
        for bundle in _bundles(copy):
            for link in bundle.get("link", []):
                link["url"] = self.upstream_url(link["url"])
            for entry in bundle.get("entry", []):
                if "fullUrl" in entry:
                    entry["fullUrl"] = self.upstream_url(entry["fullUrl"])
                if "location" in entry.get("response", {}):
                    entry["response"]["location"] = self.upstream_url(entry["response"]["location"])
        return copy

    def upstream_url(self, url: str) -> str:
        """``url`` with the gateway base replaced by the upstream base."""
        if url.startswith(self.gateway_base):
            return self.upstream_base + url[len(self.gateway_base) :]
        return url

    def check_gateway_answer(self, response: httpx.Response) -> None:
        """Every absolute URL the gateway hands out is on the gateway base, and the body
        never names the upstream's host:port."""
        upstream_netloc = urlsplit(self.upstream_base).netloc
        assert upstream_netloc.encode() not in response.content
        assert upstream_netloc not in str(response.headers)
        urls = [
            response.headers[name]
            for name in ("location", "content-location")
            if name in response.headers
        ]
        if "json" in response.headers.get("content-type", "") and response.content:
            urls += bundle_urls(response.json())
        for url in urls:
            if url.startswith(("http:", "https:")):
                assert url.startswith(self.gateway_base + "/") or url == self.gateway_base, url

    @staticmethod
    def url(base: str, path: str) -> str:
        """``path`` (``Patient/1``, ``""`` for the base, or absolute) resolved on ``base``."""
        if path.startswith(("http:", "https:")):
            return path
        return f"{base}/{path}" if path else base


def bundle_urls(document: Any) -> list[str]:
    """Every ``link.url``, ``entry.fullUrl`` and ``entry.response.location`` in ``document``."""
    urls: list[str] = []
    for bundle in _bundles(document):
        urls += [link["url"] for link in bundle.get("link", [])]
        for entry in bundle.get("entry", []):
            urls += [entry["fullUrl"]] if "fullUrl" in entry else []
            location = entry.get("response", {}).get("location")
            urls += [location] if location else []
    return urls


def comparable(document: Any) -> Any:
    """A copy of ``document`` without what the gateway answers differently by contract (module
    docstring): ``total`` removed from every Bundle, and each ``link`` list reduced to its
    sorted paging relations (``self`` left out: the gateway always writes its own). Apply it
    to both sides."""
    copy = json.loads(json.dumps(document))
    for bundle in _bundles(copy):
        bundle.pop("total", None)
        relations = sorted(
            link["relation"] for link in bundle.pop("link", []) if link["relation"] != "self"
        )
        if relations:
            bundle["link"] = relations
    return copy


def entries(bundle: Any, mode: str | None = None) -> list[Any]:
    """The resources of a Bundle's entries (only those with ``search.mode == mode``)."""
    return [
        entry["resource"]
        for entry in bundle.get("entry", [])
        if mode is None or entry.get("search", {}).get("mode") == mode
    ]


def _bundles(node: Any) -> Iterator[dict[str, Any]]:
    """Every Bundle in ``node`` (itself, and Bundles nested in entries or responses)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if current.get("resourceType") == "Bundle":
                yield current
            stack.extend(v for v in current.values() if isinstance(v, dict | list))
        elif isinstance(current, list):
            stack.extend(v for v in current if isinstance(v, dict | list))
