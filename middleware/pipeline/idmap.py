"""Resource ids across the upstream edge: the client's ids everywhere in the pipeline, the
upstream's only on the wire to it (issue #6, item 4).

:class:`IdEdge` wraps the exchange's :class:`~middleware.pipeline.exchange.Forwarder`, so
every stage (scopes, the patient compartment, consent, cursors, audit) works with the ids the
client sees, and consents, SMART ``patient`` contexts and audit records name them too:

- on the way out, ids in the target path (``Type/id``, ``Patient/id/Observation``,
  ``Type/id/_history/vid``) and in search parameters become the upstream's
  (:meth:`~middleware.mapping.references.ReferenceRewriter.search`); a search naming only ids
  this upstream never issued is answered with an empty searchset without asking it; bodies are
  rewritten (a create drops the client's ``id``); ``urn:uuid`` references inside a client
  transaction, ``#contained`` ones and canonical URLs are left alone;
- on the way back, the answer and its ``Location``/``Content-Location`` carry client ids.

An id the resolver did not issue for this upstream is the generic 404, like a hidden record.
A redeemed paging cursor (an absolute upstream URL, sealed by the gateway) keeps the upstream's
query as it is; the id in its path, rewritten to the client's with the answer that carried the
link, is the upstream's again (:meth:`IdEdge.redeemed`). Pure: the wrapped forwarder does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from middleware.fhir import jsoncodec
from middleware.mapping.references import ReferenceRewriter
from middleware.pipeline.exchange import Forwarder, Upstreamed
from middleware.pipeline.params import decode_params, encode_params

__all__ = ["IdEdge"]

_LITERAL_SEGMENTS: Final = ("_", "$")
_EMPTY: Final = {"resourceType": "Bundle", "type": "searchset"}


class IdEdge:
    """Maps ids between the client's and the upstream's at ``upstream_base``."""

    def __init__(self, rewriter: ReferenceRewriter, upstream_base: str) -> None:
        self.rewriter = rewriter
        self.upstream_base = upstream_base.rstrip("/")

    def wrap(self, forward: Forwarder) -> Forwarder:
        """``forward`` with ids mapped both ways (module docstring)."""

        async def call(
            method: str,
            target: str,
            *,
            body: bytes = b"",
            headers: Sequence[tuple[str, str]] = (),
            client_headers: bool = True,
        ) -> Upstreamed:
            outgoing = (
                self.redeemed(target)
                if target.startswith(self.upstream_base)
                else self.target(target)
            )
            if outgoing is None:
                raw = jsoncodec.encode(_EMPTY)
                return Upstreamed(
                    200, [("content-type", "application/fhir+json")], dict(_EMPTY), raw
                )
            if body:
                body = self.body(method, target, body)
            up = await forward(
                method, outgoing, body=body, headers=headers, client_headers=client_headers
            )
            return self.answer(up)

        return call

    def target(self, target: str) -> str | None:
        """A relative target with the upstream's ids; None when its search can match nothing."""
        path, _, query = target.partition("?")
        segments = path.split("/") if path else []
        if len(segments) >= 2 and not segments[1].startswith(_LITERAL_SEGMENTS):
            segments[1] = self.rewriter.id(segments[0], segments[1], "upstream")
        if not query:
            return "/".join(segments)
        searched = _searched_type(segments)
        mapped = self.rewriter.search(searched, decode_params(query.encode("ascii")))
        if mapped.matches_nothing:
            return None
        return f"{'/'.join(segments)}?{encode_params(mapped.params)}"

    def redeemed(self, target: str) -> str:
        """A redeemed paging link (absolute, under the upstream's base) with the upstream's id
        in its path: the answer that carried it was rewritten toward the client, its path id
        too (``Patient/<client id>/_history?...``), before the gateway sealed it. Its query is
        the upstream's own, untouched by that rewrite, and passes as it is."""
        rest = target[len(self.upstream_base) :]
        path, sep, query = rest.partition("?")
        segments = path.lstrip("/").split("/")
        if len(segments) < 2 or segments[1].startswith(_LITERAL_SEGMENTS) or not segments[1]:
            return target
        segments[1] = self.rewriter.id(segments[0], segments[1], "upstream")
        return f"{self.upstream_base}/{'/'.join(segments)}{sep}{query}"

    def body(self, method: str, target: str, body: bytes) -> bytes:
        """A request body with the upstream's ids (a create drops the client's ``id``)."""
        document: Any = jsoncodec.decode(body)
        create = method == "POST" and "/" not in target.partition("?")[0] and target != ""
        mapped = self.rewriter.to_upstream(document, create=create)
        return body if mapped is document else jsoncodec.encode(mapped)

    def answer(self, up: Upstreamed) -> Upstreamed:
        """An upstream answer with the client's ids (body and location headers); its document,
        decoded for this answer alone, is rewritten in place."""
        headers = [
            (name, self.rewriter.location(value, "client"))
            if name in ("location", "content-location")
            else (name, value)
            for name, value in up.headers
        ]
        document = up.document
        # Just decoded from the upstream's bytes, held by nobody else: rewritten in place.
        if isinstance(document, dict | list) and self.rewriter.to_client_in_place(document):
            return Upstreamed(up.status, headers, document, jsoncodec.encode(document))
        return Upstreamed(up.status, headers, document, up.raw)


def _searched_type(segments: Sequence[str]) -> str | None:
    """The resource type a search path searches: ``Type``, ``Patient/id/Type``, none at the
    system level; ``Type/id/$op`` and history name their own type."""
    if not segments:
        return None
    if len(segments) == 3 and not segments[2].startswith(_LITERAL_SEGMENTS):
        return segments[2]
    return segments[0]
