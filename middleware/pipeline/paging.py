"""Paging through the gateway: where a page comes from, and the cursors that name the next.

:class:`Pager` binds :class:`~middleware.pipeline.cursor.CursorCodec` to one gateway: a
:class:`Paging` is what one exchange's cursors are bound to (the search path and the client's
own query, cursor excluded), a :class:`Page` what a page was fetched from. A cursor names
either an upstream paging link or, for a first page cut short by the refill
(:mod:`.pages`), the relative target the gateway itself sent; both are sealed by the gateway,
so a redeemed one is trusted as far as it names the upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from middleware.errors import BadRequest
from middleware.pipeline.caller import Caller
from middleware.pipeline.cursor import CURSOR_PARAM, CursorCodec, query_digest
from middleware.pipeline.pages import split_skip
from middleware.pipeline.params import encode_params

__all__ = ["Page", "Pager", "Paging", "cursor_of"]

_REFUSED = "invalid or expired cursor"


@dataclass(frozen=True, slots=True)
class Page:
    """Where a page of results comes from: what was fetched (a target relative to the
    upstream base as the pipeline sent it, or an upstream paging link), and how many of its
    matches earlier pages already released."""

    sent: str
    skip: int = 0


@dataclass(frozen=True, slots=True)
class Paging:
    """How one exchange issues cursors: the search path and the client's query (cursor
    excluded) they are bound to."""

    path: str
    params: tuple[tuple[str, str], ...]
    digest: bytes


class Pager:
    """Issues and redeems the cursors of one gateway (public ``gateway_base``, upstream at
    ``upstream_base``); ``wall_clock`` gives seconds since the epoch."""

    def __init__(
        self,
        cursors: CursorCodec,
        *,
        gateway_base: str,
        upstream_base: str,
        wall_clock: Callable[[], float],
    ) -> None:
        self.cursors = cursors
        self.gateway_base = gateway_base.rstrip("/")
        self.upstream_base = upstream_base.rstrip("/")
        self.wall_clock = wall_clock

    def paging(self, path: str, params: Sequence[tuple[str, str]]) -> Paging:
        """What cursors of a search on ``path`` with the client's ``params`` are bound to."""
        client = tuple(params)
        return Paging(path, client, query_digest(path, client))

    def url(self, caller: Caller, paging: Paging, link: str) -> str:
        """The gateway URL of the page ``link`` names: the client's query and a cursor."""
        token = self.cursors.issue(
            link,
            principal=caller.binding,
            purpose=caller.purpose_key,
            query_digest=paging.digest,
            now=self.wall_clock(),
        )
        query = encode_params([*paging.params, (CURSOR_PARAM, token)])
        return f"{self.gateway_base}/{paging.path}?{query}"

    def redeem(self, caller: Caller, token: str, paging: Paging) -> Page:
        """The page a cursor names; 400 for anything but one of ours, issued to this caller
        for this query, unexpired, naming the upstream."""
        sealed = self.cursors.redeem(
            token,
            principal=caller.binding,
            purpose=caller.purpose_key,
            query_digest=paging.digest,
            now=self.wall_clock(),
        )
        link, skip = split_skip(sealed)
        if link.startswith(("http://", "https://")) and not self.on_upstream(link):
            raise BadRequest(_REFUSED)
        return Page(link, skip)

    def on_upstream(self, link: str) -> bool:
        """True when ``link`` lies on the upstream base."""
        base = self.upstream_base
        return link.startswith(base) and len(link) > len(base) and link[len(base)] in "/?"


def cursor_of(params: Sequence[tuple[str, str]]) -> str | None:
    """The cursor a request carries (400 when it carries several)."""
    tokens = [v for n, v in params if n == CURSOR_PARAM]
    if len(tokens) > 1:
        raise BadRequest(_REFUSED)
    return tokens[0] if tokens else None
