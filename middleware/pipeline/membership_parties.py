"""The parties a consent can name that a caller may act for, and a consent decided as a
deny when one of them cannot be resolved (:mod:`middleware.pipeline.memberships`). Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Final

from middleware.consent.model import DENY, CodingSet, Policy, Provision
from middleware.pipeline.breakglass import BTG
from middleware.recent import RecentByIdentity

__all__ = [
    "ACTS_AS",
    "AFFILIATED",
    "GROUPS",
    "PARTIES",
    "deny_unknown",
    "named_others",
    "named_parties",
]

#: Parties the caller is a member of when the party is among its affiliations.
AFFILIATED: Final = frozenset({"Organization", "Practitioner", "PractitionerRole", "RelatedPerson"})
#: Parties whose member lists name the caller.
GROUPS: Final = frozenset({"CareTeam", "Group"})
PARTIES: Final = AFFILIATED | GROUPS


def _named(policies: tuple[Policy, ...], kinds: frozenset[str] = PARTIES) -> frozenset[str]:
    return frozenset(
        ref
        for policy in policies
        for node in _nodes(policy.root)
        for ref in node.actor_refs
        if ref.partition("/")[0] in kinds
    )


_OTHERS: Final = PARTIES - {"Practitioner"}
#: Callers that act as a practitioner other than their reference.
ACTS_AS: Final = ("PractitionerRole/", "Person/")


def _nodes(node: Provision) -> Iterator[Provision]:
    yield node
    for child in node.children:
        yield from _nodes(child)


_NAMED: Final = RecentByIdentity[tuple[Policy, ...], frozenset[str]](_named, 1024)
#: The parties of :data:`PARTIES` an actor of ``policies`` names, memoised by the tuple's
#: identity (the registry hands out one tuple per patient until their consents change).
named_parties: Final = _NAMED.made
#: The same without ``Practitioner``: all a caller that is not a role or Person can be.
named_others: Final = RecentByIdentity[tuple[Policy, ...], frozenset[str]](
    lambda policies: _named(policies, _OTHERS), 1024
).made


def deny_unknown(group: tuple[Policy, ...], unknown: frozenset[str]) -> tuple[Policy, ...]:
    """``group`` with each consent naming a party of ``unknown`` deciding deny (the group
    itself when none does)."""
    if named_parties(group).isdisjoint(unknown):
        return group
    return tuple(
        _denying(policy) if not _named((policy,)).isdisjoint(unknown) else policy
        for policy in group
    )


def _denying(policy: Policy) -> Policy:
    """``policy`` deciding deny whatever it is asked (its id, index, status, period kept).

    A consent that refuses break-the-glass (a deny naming the purpose BTG anywhere in its
    tree, :func:`~middleware.pipeline.breakglass.forbids_break_glass`) keeps one such deny,
    or an emergency request could override the deny this one stands for."""
    path = f"{policy.root.path} (membership unresolved)"
    refuses = _denies_btg(policy.root)
    keep = (Provision(path=f"{path}.btg", effect=DENY, purposes=_BTG),) if refuses else ()
    return dataclasses.replace(policy, root=Provision(path=path, effect=DENY, children=keep))


def _denies_btg(node: Provision) -> bool:
    return (node.effect == DENY and node.purposes.matches(BTG)) or any(
        _denies_btg(child) for child in node.children
    )


_BTG: Final = CodingSet.of([BTG])
