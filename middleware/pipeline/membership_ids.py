"""Memberships where the deployment maps ids: the consents and the token name the client's
ids, the upstream its own. Pure apart from the wrapped directory.

:class:`TranslatedDirectory` wraps the directory (:class:`~middleware.pipeline.memberships.
Directory`) the way :class:`~middleware.pipeline.idmap.IdEdge` wraps the forwarder: each
record asked about goes to the upstream with the upstream's id, and each reference it answers
comes back with the client's, through the same resolver
(:meth:`~middleware.mapping.references.ReferenceRewriter.id`), so an answer compares with the
ids a consent holds. An id the resolver cannot translate either way (not issued by this
gateway for this upstream, absent from an exhaustive id table, a member's type the resolver
refuses such as ``Practitioner2``) is :class:`~middleware.pipeline.memberships.Unresolved`,
never "not a member" and never another error: without it, a client id sent as it is found no
role and read as no membership (fail open), and an odd type in a membership record was a 500.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Final

from middleware.errors import GatewayError
from middleware.mapping.references import ReferenceRewriter
from middleware.pipeline.memberships import INACTIVE, Directory, Unresolved, Watch

__all__ = ["TranslatedDirectory"]

#: The users whose affiliations are read (the others are themselves only: nothing to ask).
_READ: Final = frozenset({"Practitioner", "PractitionerRole", "Person"})


class TranslatedDirectory:
    """``inner`` asked in the upstream's ids, answering in the client's (module docstring)."""

    def __init__(self, inner: Directory, rewriter: ReferenceRewriter) -> None:
        self.inner = inner
        self.rewriter = rewriter

    async def affiliations(self, user: str) -> frozenset[str]:
        if user.partition("/")[0] not in _READ:
            return frozenset()
        return self._back(await self.inner.affiliations(self._out(user)))

    async def members(self, party: str) -> frozenset[str]:
        return self._back(await self.inner.members(self._out(party)))

    async def parents(self, organization: str) -> frozenset[str]:
        return self._back(await self.inner.parents(self._out(organization)))

    def now(self) -> tuple[float, float]:
        return self.inner.now()

    def watch(self) -> AbstractContextManager[Watch]:
        return self.inner.watch()

    def _out(self, reference: str) -> str:
        kind, _, ident = reference.partition("/")
        try:
            return f"{kind}/{self.rewriter.id(kind, ident, 'upstream')}"
        # ValueError: the resolver refuses a type or id it could never have issued.
        except (GatewayError, ValueError) as exc:
            raise Unresolved("a party's id is not one the gateway issued") from exc

    def _back(self, references: frozenset[str]) -> frozenset[str]:
        found: set[str] = set()
        for reference in references:
            if reference == INACTIVE:
                found.add(reference)
                continue
            kind, _, ident = reference.partition("/")
            try:
                found.add(f"{kind}/{self.rewriter.id(kind, ident, 'client')}")
            # ValueError: a type the resolver refuses (a record's data, not the gateway's).
            except (GatewayError, ValueError) as exc:
                raise Unresolved("a member's id has no client id") from exc
        return frozenset(found)
