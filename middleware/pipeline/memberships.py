"""Memberships the token does not carry, looked up where a consent needs them.

A consent's ``provision.actor`` may name an organization, a practitioner role, a care team, a
group or a related person (:data:`PARTIES`). The token says some of what the caller acts for
(:func:`~middleware.consent.principals.principal_of`); what it does not say is asked of the
upstream FHIR server through a :class:`Directory`, and only when a consent of a patient the
exchange touches names a party of those kinds that the caller's principal does not already
hold: a request whose patients' consents name no such party costs one memoised set lookup
per patient and no round trip.

For each named party ``R`` the caller is a member when (FHIR R4):

* ``Organization``, ``PractitionerRole``, ``RelatedPerson``: ``R`` is among the caller's
  affiliations (:meth:`Directory.affiliations`: a Practitioner's PractitionerRoles and their
  organizations, a PractitionerRole's organization, a Person's linked records); for an
  Organization, also when it is an ancestor (``Organization.partOf``, up to
  :data:`MAX_LEVELS` levels: :meth:`Directory.parents`) of one of the caller's
  organizations: a consent denying a hospital reaches the staff of its departments;
* ``CareTeam`` (``participant.member``), ``Group`` (``member.entity``): one of its members is
  the caller or one of its affiliations (:meth:`Directory.members`).

The principal is widened with the named parties found to be members, nothing else, so the
consent decision (pure, :mod:`middleware.consent.decide`) stays as it was.

**Fail closed.** A lookup the directory cannot answer (upstream down, timeout, a malformed or
incomplete answer) raises :class:`Unresolved`. Then, per ``unresolved``: ``deny`` (default)
decides every consent naming a party whose membership is unknown as an unconditional deny
(its id and ledger index kept, so the trace and the audit name it): an unknown membership
never escapes a deny, and cannot gain a permit; whatever that consent would have said, a
deny is no more permissive under either combining rule. ``unavailable`` refuses the exchange
(503). Pure apart from the injected directory: no I/O here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Final, Literal, Protocol

from middleware.consent.model import DENY, CodingSet, Policy, Provision
from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.pipeline.breakglass import BTG
from middleware.pipeline.caller import Caller
from middleware.recent import RecentByIdentity

__all__ = [
    "AFFILIATED",
    "GROUPS",
    "PARTIES",
    "Directory",
    "Memberships",
    "Unresolved",
    "named_parties",
]

#: Parties the caller is a member of when the party is among its affiliations.
AFFILIATED: Final = frozenset({"Organization", "PractitionerRole", "RelatedPerson"})
#: Parties whose member lists name the caller.
GROUPS: Final = frozenset({"CareTeam", "Group"})
PARTIES: Final = AFFILIATED | GROUPS
#: Most ``partOf`` levels walked above the caller's organizations; a hierarchy deeper (or
#: one that loops) is unresolved.
MAX_LEVELS: Final = 8

Unresolvable = Literal["deny", "unavailable"]


class Unresolved(Exception):
    """A membership lookup could not be answered; the message names no record."""


class Directory(Protocol):
    """Where memberships are read (the upstream, cached:
    :mod:`middleware.proxy.membership_reads`)."""

    async def affiliations(self, user: str) -> frozenset[str]:
        """``Type/id`` of the records ``user`` (its ``fhirUser``) acts as or for; raises
        :class:`Unresolved`."""
        ...

    async def members(self, party: str) -> frozenset[str]:
        """``Type/id`` of the members of the CareTeam or Group ``party`` (none when it does
        not exist); raises :class:`Unresolved`."""
        ...

    async def parents(self, organization: str) -> frozenset[str]:
        """The ``partOf`` of ``organization`` (none when it has none or does not exist);
        raises :class:`Unresolved`."""
        ...


def _named(policies: tuple[Policy, ...]) -> frozenset[str]:
    return frozenset(
        ref
        for policy in policies
        for node in _nodes(policy.root)
        for ref in node.actor_refs
        if ref.partition("/")[0] in PARTIES
    )


def _nodes(node: Provision) -> Iterator[Provision]:
    yield node
    for child in node.children:
        yield from _nodes(child)


_NAMED: Final = RecentByIdentity[tuple[Policy, ...], frozenset[str]](_named, 1024)
#: The parties of :data:`PARTIES` an actor of ``policies`` names, memoised by the tuple's
#: identity (the registry hands out one tuple per patient until their consents change).
named_parties: Final = _NAMED.made


class Memberships:
    """Widens a caller's principal with the named parties it is a member of (module
    docstring); ``unresolved`` says what an unknown membership does."""

    def __init__(self, directory: Directory, *, unresolved: Unresolvable = "deny") -> None:
        if unresolved not in ("deny", "unavailable"):
            raise ValueError(f"unresolved must be deny or unavailable, not {unresolved!r}")
        self.directory = directory
        self.unresolved: Unresolvable = unresolved
        self._log = get_logger("consentry.memberships")

    async def widen(
        self, caller: Caller, policies: dict[str, tuple[Policy, ...]]
    ) -> tuple[Caller, dict[str, tuple[Policy, ...]]]:
        """``caller`` with the memberships the consents in ``policies`` (by patient) need,
        and the policies to decide on (those naming a party of unknown membership replaced
        by a deny under ``deny``); both unchanged when no consent names a party the caller
        does not already hold. Raises :class:`ServiceUnavailable` under ``unavailable``."""
        held = caller.principal.references
        wanted: set[str] = set()
        for group in policies.values():
            named = named_parties(group)
            if named and not named <= held:
                wanted |= named - held
        if not wanted:
            return caller, policies
        found, unknown = await self._resolve(caller, wanted)
        if unknown:
            kinds = sorted({ref.partition("/")[0] for ref in unknown})
            # Kinds only: a party's id can tell whose care team it is.
            self._log.warning("memberships unresolved", kinds=kinds, decided_as=self.unresolved)
            if self.unresolved == "unavailable":
                raise ServiceUnavailable("memberships could not be read from the FHIR server")
            policies = {
                patient: _deny_unknown(group, unknown) for patient, group in policies.items()
            }
        if found:
            principal = caller.principal
            widened = dataclasses.replace(principal, memberships=principal.memberships | found)
            caller = dataclasses.replace(caller, principal=widened)
        return caller, policies

    async def _resolve(
        self, caller: Caller, wanted: set[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """The wanted parties the caller is a member of, and those it is unknown of."""
        principal = caller.principal
        found: set[str] = set()
        unknown: set[str] = set()
        mine: frozenset[str] | None = principal.references
        if principal.reference is not None:  # else nobody to look up: the token speaks
            try:
                mine = principal.references | await self.directory.affiliations(principal.reference)
            except Unresolved:
                mine = None
        above = mine
        if mine is not None and any(
            p.startswith("Organization/") and p not in mine for p in wanted
        ):
            try:
                above = mine | await self._ancestors(mine)
            except Unresolved:
                above = None
        for party in sorted(wanted):
            if party.startswith("Organization/") and (mine is None or party not in mine):
                if above is None:
                    unknown.add(party)
                elif party in above:
                    found.add(party)
                continue
            if party.partition("/")[0] in AFFILIATED:
                if mine is None:
                    unknown.add(party)
                elif party in mine:
                    found.add(party)
                continue
            try:
                members = await self.directory.members(party)
            except Unresolved:
                unknown.add(party)
                continue
            if mine is not None:
                if not members.isdisjoint(mine):
                    found.add(party)
            elif not members.isdisjoint(principal.references):
                found.add(party)  # the list names the caller itself
            else:
                unknown.add(party)  # it may name an affiliation we could not read
        return frozenset(found), frozenset(unknown)

    async def _ancestors(self, mine: frozenset[str]) -> frozenset[str]:
        """Every organization above an organization of ``mine`` (``partOf``, transitively)."""
        seen: set[str] = set()
        frontier = {ref for ref in mine if ref.startswith("Organization/")}
        for _ in range(MAX_LEVELS):
            if not frontier:
                return frozenset(seen)
            parents: set[str] = set()
            for organization in sorted(frontier):
                parents |= await self.directory.parents(organization)
            seen |= frontier
            frontier = parents - seen - mine
            seen |= parents
        if frontier:
            raise Unresolved("an organization hierarchy deeper than the levels walked")
        return frozenset(seen)


def _deny_unknown(group: tuple[Policy, ...], unknown: frozenset[str]) -> tuple[Policy, ...]:
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
