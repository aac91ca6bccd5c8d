"""TranslatedDirectory: memberships asked in the upstream's ids, answered in the client's.

The escape it closes: with mapped ids the directory sent a consent's client ids to the
upstream, found nothing and read "not a member". An id that cannot be translated either way
must be unresolved (deny), never an empty answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from middleware.mapping.ids import OpaqueResolver, not_ours
from middleware.mapping.references import ReferenceRewriter
from middleware.pipeline.membership_ids import TranslatedDirectory
from middleware.pipeline.memberships import INACTIVE, Unresolved, Watch

UPSTREAM = "hospital"
#: (type, client id) <-> upstream id
IDS = {("Practitioner", "c-dr"): "dr", ("Organization", "c-org"): "org", ("CareTeam", "c-t"): "t"}


class Resolver:
    def to_client(self, upstream: str, resource_type: str, local_id: str) -> str:
        for (kind, client), local in IDS.items():
            if (kind, local) == (resource_type, local_id):
                return client
        raise not_ours()

    def to_upstream(self, resource_type: str, client_id: str) -> tuple[str, str]:
        local = IDS.get((resource_type, client_id))
        if local is None:
            raise not_ours()
        return UPSTREAM, local


class Upstream:
    """A directory in the upstream's ids, recording what it was asked."""

    def __init__(self, answer: frozenset[str]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def affiliations(self, user: str) -> frozenset[str]:
        self.asked.append(user)
        return self.answer

    async def members(self, party: str) -> frozenset[str]:
        self.asked.append(party)
        return self.answer

    async def parents(self, organization: str) -> frozenset[str]:
        self.asked.append(organization)
        return self.answer

    def now(self) -> tuple[float, float]:
        return 0.0, 0.0

    @contextmanager
    def watch(self) -> Iterator[Watch]:
        yield Watch()


def _directory(answer: frozenset[str]) -> tuple[TranslatedDirectory, Upstream]:
    inner = Upstream(answer)
    return TranslatedDirectory(inner, ReferenceRewriter(Resolver(), UPSTREAM)), inner


async def test_asked_in_upstream_ids_answered_in_client_ids() -> None:
    directory, inner = _directory(frozenset({"Organization/org", INACTIVE}))
    assert await directory.affiliations("Practitioner/c-dr") == {"Organization/c-org", INACTIVE}
    assert await directory.members("CareTeam/c-t") == {"Organization/c-org", INACTIVE}
    assert await directory.parents("Organization/c-org") == {"Organization/c-org", INACTIVE}
    assert inner.asked == ["Practitioner/dr", "CareTeam/t", "Organization/org"]


async def test_an_id_not_issued_is_unresolved_not_empty() -> None:
    directory, inner = _directory(frozenset())
    with pytest.raises(Unresolved):
        await directory.affiliations("Practitioner/dr")  # an upstream id sent as a client's
    with pytest.raises(Unresolved):
        await directory.members("CareTeam/unknown")
    assert inner.asked == []


async def test_an_answer_without_a_client_id_is_unresolved() -> None:
    directory, _ = _directory(frozenset({"Organization/elsewhere"}))
    with pytest.raises(Unresolved):
        await directory.affiliations("Practitioner/c-dr")


async def test_a_patient_user_is_not_looked_up() -> None:
    directory, inner = _directory(frozenset({"Organization/org"}))
    assert await directory.affiliations("Patient/anything") == frozenset()
    assert inner.asked == []


class Refusing(Resolver):
    """A resolver that refuses a type it could never issue with ValueError, as
    :class:`~middleware.mapping.ids.OpaqueResolver` does for ``Practitioner2``."""

    def to_client(self, upstream: str, resource_type: str, local_id: str) -> str:
        if not resource_type.isalpha():
            raise ValueError(f"{resource_type!r} is not a resource type")
        return super().to_client(upstream, resource_type, local_id)

    def to_upstream(self, resource_type: str, client_id: str) -> tuple[str, str]:
        if not resource_type.isalpha():
            raise ValueError(f"{resource_type!r} is not a resource type")
        return super().to_upstream(resource_type, client_id)


async def test_a_member_of_a_type_the_resolver_refuses_is_unresolved_not_a_500() -> None:
    """A CareTeam member ``http://other/fhir/Practitioner2/x`` (``Practitioner2/x`` once
    local) made the resolver raise ValueError, which escaped as a 500 for every caller
    touching a consent naming that team."""
    inner = Upstream(frozenset({"Practitioner2/x"}))
    directory = TranslatedDirectory(inner, ReferenceRewriter(Refusing(), UPSTREAM))
    with pytest.raises(Unresolved):
        await directory.members("CareTeam/c-t")
    with pytest.raises(Unresolved):
        await directory.members("CareTeam2/c-t")  # refused on the way out too
    assert inner.asked == ["CareTeam/t"]


async def test_the_opaque_resolver_refusing_a_member_type_is_unresolved() -> None:
    """The same through the resolver deployments use (the reviewer's probe)."""
    resolver = OpaqueResolver(bytes(32), [UPSTREAM])
    team = resolver.to_client(UPSTREAM, "CareTeam", "t")
    inner = Upstream(frozenset({"Practitioner2/x"}))
    directory = TranslatedDirectory(inner, ReferenceRewriter(resolver, UPSTREAM))
    with pytest.raises(Unresolved):
        await directory.members(f"CareTeam/{team}")
    assert inner.asked == ["CareTeam/t"]
