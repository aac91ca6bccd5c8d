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

* ``Practitioner`` (asked only for a PractitionerRole or Person caller): the role's
  practitioner, a Person's linked practitioners (whose roles count as the caller's too).

A CareTeam or Group nested one level in the named one is read too (deeper: unknown). A
member of an inactive CareTeam/Group is denied by every consent naming it: no permit
through an inactive team, and its denies still hold. When the deployment maps ids, the
directory is asked in the upstream's ids and answers in the client's
(:mod:`middleware.pipeline.membership_ids`).

The principal is widened with the named parties found to be members, nothing else, so the
consent decision (pure, :mod:`middleware.consent.decide`) stays as it was.

**Bounded.** One request reads at most :data:`MAX_PARTIES` CareTeams/Groups, at most
:data:`CONCURRENCY` at a time, all within one ``deadline``; what is left is unknown. A
lookup with nothing unknown is remembered (per fhirUser, token references and parties
asked) while every answer it used holds (:class:`Watch`).

**Fail closed.** A lookup the directory cannot answer (upstream down, timeout, a malformed or
incomplete answer) raises :class:`Unresolved`. Then, per ``unresolved``: ``deny`` (default)
decides every consent naming a party whose membership is unknown as an unconditional deny
(its id and ledger index kept, so the trace and the audit name it): an unknown membership
never escapes a deny, and cannot gain a permit; whatever that consent would have said, a
deny is no more permissive under either combining rule. ``unavailable`` refuses the exchange
(503). Pure apart from the injected directory: no I/O here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from contextlib import AbstractContextManager
from typing import Final, Literal, Protocol

from middleware.consent.model import Policy
from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.pipeline.caller import Caller
from middleware.pipeline.membership_parties import (
    ACTS_AS,
    AFFILIATED,
    GROUPS,
    PARTIES,
    deny_unknown,
    named_others,
    named_parties,
)

__all__ = [
    "AFFILIATED",
    "GROUPS",
    "INACTIVE",
    "PARTIES",
    "Directory",
    "Memberships",
    "Unresolved",
    "Watch",
    "named_parties",
]

#: Most ``partOf`` levels walked above the caller's organizations; a hierarchy deeper (or
#: one that loops) is unresolved.
MAX_LEVELS: Final = 8

#: Most CareTeam/Group reads (nested ones included) and organizations per level one
#: request makes; the parties beyond are unknown. A consent naming thousands of care teams
#: costs each request at most this many reads.
MAX_PARTIES: Final = 32
#: Reads of one request in flight at once.
CONCURRENCY: Final = 4
#: Most practitioners a caller acts as (a Person's links) whose roles are read.
MAX_LINKED: Final = 4
#: In :meth:`Directory.members`: the CareTeam or Group is not active (FHIR R4
#: ``CareTeam.status`` inactive or entered-in-error, ``Group.active`` false). Not a reference.
INACTIVE: Final = "#inactive"

#: Most widen results remembered (:class:`Memberships`), the oldest out first.
MEMO_SIZE: Final = 4096

Unresolvable = Literal["deny", "unavailable"]


class Unresolved(Exception):
    """A membership lookup could not be answered; the message names no record."""


@dataclasses.dataclass(slots=True)
class Watch:
    """When an answer read under the watch may change: ``until`` (monotonic seconds) a
    cached read expires, ``wall_until`` (seconds since the epoch) a period in it starts or
    ends, or the wall clock goes back before ``wall_since`` (the periods were judged then);
    both clocks as :meth:`Directory.now` gives them."""

    until: float = math.inf
    wall_until: float = math.inf
    wall_since: float = -math.inf

    def holds(self, now: tuple[float, float]) -> bool:
        return now[0] < self.until and self.wall_since <= now[1] < self.wall_until


class Directory(Protocol):
    """Where memberships are read (the upstream, cached:
    :mod:`middleware.proxy.membership_reads`)."""

    async def affiliations(self, user: str) -> frozenset[str]:
        """``Type/id`` of the records ``user`` (its ``fhirUser``) acts as or for; raises
        :class:`Unresolved`."""
        ...

    async def members(self, party: str) -> frozenset[str]:
        """``Type/id`` of the members of the CareTeam or Group ``party`` (none when it does
        not exist), with :data:`INACTIVE` when it is not active; raises
        :class:`Unresolved`."""
        ...

    async def parents(self, organization: str) -> frozenset[str]:
        """The ``partOf`` of ``organization`` (none when it has none or does not exist);
        raises :class:`Unresolved`."""
        ...

    def now(self) -> tuple[float, float]:
        """Monotonic seconds and seconds since the epoch, as :class:`Watch` counts them."""
        ...

    def watch(self) -> AbstractContextManager[Watch]:
        """A :class:`Watch` of the answers given inside it (in this task and the tasks it
        starts there)."""
        ...


class Memberships:
    """Widens a caller's principal with the named parties it is a member of (module
    docstring); ``unresolved`` says what an unknown membership does; ``deadline`` (seconds)
    bounds the whole lookup of one request."""

    def __init__(
        self,
        directory: Directory,
        *,
        unresolved: Unresolvable = "deny",
        deadline: float = 5.0,
    ) -> None:
        if unresolved not in ("deny", "unavailable"):
            raise ValueError(f"unresolved must be deny or unavailable, not {unresolved!r}")
        if deadline <= 0:
            raise ValueError("deadline must be positive")
        self.directory = directory
        self.unresolved: Unresolvable = unresolved
        self.deadline = deadline
        # (fhirUser, token references, wanted) -> (until, found, inactive): a lookup with
        # nothing unknown, until the earliest answer it used may change (Watch).
        self._memo: dict[
            tuple[str | None, frozenset[str], frozenset[str]],
            tuple[Watch, frozenset[str], frozenset[str]],
        ] = {}
        self._log = get_logger("consentry.memberships")

    async def widen(
        self, caller: Caller, policies: dict[str, tuple[Policy, ...]]
    ) -> tuple[Caller, dict[str, tuple[Policy, ...]]]:
        """``caller`` with the memberships the consents in ``policies`` (by patient) need,
        and the policies to decide on (those naming a party of unknown membership replaced
        by a deny under ``deny``); both unchanged when no consent names a party the caller
        does not already hold. Raises :class:`ServiceUnavailable` under ``unavailable``."""
        held = caller.principal.references
        # Only a role or a Person acts as a practitioner other than its reference.
        user = caller.principal.reference
        acts_as = user is not None and user.startswith(ACTS_AS)
        named_of = named_parties if acts_as else named_others
        wanted: set[str] = set()
        for group in policies.values():
            named = named_of(group)
            if named and not named <= held:
                wanted |= named - held
        if not wanted:
            return caller, policies
        found, unknown, inactive = await self._remembered(caller, frozenset(wanted))
        if inactive:
            # A member of an inactive team: no permit through it, and its denies hold.
            policies = {
                patient: deny_unknown(group, inactive) for patient, group in policies.items()
            }
        if unknown:
            kinds = sorted({ref.partition("/")[0] for ref in unknown})
            # Kinds only: a party's id can tell whose care team it is.
            self._log.warning("memberships unresolved", kinds=kinds, decided_as=self.unresolved)
            if self.unresolved == "unavailable":
                raise ServiceUnavailable("memberships could not be read from the FHIR server")
            policies = {
                patient: deny_unknown(group, unknown) for patient, group in policies.items()
            }
        if found:
            principal = caller.principal
            widened = dataclasses.replace(principal, memberships=principal.memberships | found)
            caller = dataclasses.replace(caller, principal=widened)
        return caller, policies

    async def _remembered(
        self, caller: Caller, wanted: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """:meth:`_resolve`, remembered while every answer it used holds."""
        key = (caller.principal.reference, caller.principal.references, wanted)
        memo = self._memo.get(key)
        if memo is not None and memo[0].holds(self.directory.now()):
            return memo[1], frozenset(), memo[2]
        with self.directory.watch() as watch:
            found, unknown, inactive = await self._resolve(caller, wanted)
        if not unknown:
            self._memo.pop(key, None)
            self._memo[key] = (watch, found, inactive)
            if len(self._memo) > MEMO_SIZE:
                del self._memo[next(iter(self._memo))]
        return found, unknown, inactive

    async def _resolve(
        self, caller: Caller, wanted: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """The wanted parties the caller is a member of, those it is unknown of, and the
        inactive CareTeams/Groups it is a member of; all within one :attr:`deadline`: what
        is not decided by then is unknown."""
        step = _Step(self.directory, MAX_PARTIES, asyncio.Semaphore(CONCURRENCY))
        try:
            async with asyncio.timeout(self.deadline):
                await self._decide(caller, wanted, step)
        except TimeoutError:
            step.unknown |= wanted - step.found - step.inactive
        return frozenset(step.found), frozenset(step.unknown), frozenset(step.inactive)

    async def _decide(self, caller: Caller, wanted: frozenset[str], step: _Step) -> None:
        principal = caller.principal
        mine = await self._mine(principal.reference, principal.references)
        above = mine
        if mine is not None and any(
            p.startswith("Organization/") and p not in mine for p in wanted
        ):
            try:
                above = mine | await self._ancestors(mine)
            except Unresolved:
                above = None
        groups: list[str] = []
        for party in sorted(wanted):
            if party.startswith("Organization/") and (mine is None or party not in mine):
                if above is None:
                    step.unknown.add(party)
                elif party in above:
                    step.found.add(party)
            elif party.partition("/")[0] in AFFILIATED:
                if mine is None:
                    step.unknown.add(party)
                elif party in mine:
                    step.found.add(party)
            else:
                groups.append(party)
        # Beyond the budget no read is made: unknown without starting a task for each.
        step.unknown.update(groups[MAX_PARTIES:])
        reads = groups[:MAX_PARTIES]
        await asyncio.gather(*(step.group(party, mine, principal.references) for party in reads))

    async def _mine(self, user: str | None, held: frozenset[str]) -> frozenset[str] | None:
        """``held`` with the caller's affiliations, and those of the practitioners it acts
        as (a PractitionerRole's practitioner, a Person's linked practitioners): None when
        they cannot be read."""
        if user is None:  # nobody to look up: the token speaks
            return held
        try:
            mine = held | await self.directory.affiliations(user)
            linked = sorted(r for r in mine if r.startswith("Practitioner/") and r != user)
            if len(linked) > MAX_LINKED:
                return None
            for practitioner in linked:
                mine |= await self.directory.affiliations(practitioner)
        except Unresolved:
            return None
        return mine

    async def _ancestors(self, mine: frozenset[str]) -> frozenset[str]:
        """Every organization above an organization of ``mine`` (``partOf``, transitively)."""
        seen: set[str] = set()
        frontier = {ref for ref in mine if ref.startswith("Organization/")}
        for _ in range(MAX_LEVELS):
            if not frontier:
                return frozenset(seen)
            if len(frontier) > MAX_PARTIES:
                raise Unresolved("more organizations than one request reads")
            parents: set[str] = set()
            for organization in sorted(frontier):
                parents |= await self.directory.parents(organization)
            seen |= frontier
            frontier = parents - seen - mine
            seen |= parents
        if frontier:
            raise Unresolved("an organization hierarchy deeper than the levels walked")
        return frozenset(seen)


class _Step:
    """One request's CareTeam/Group reads: at most ``budget`` of them (beyond: unknown), at
    most ``limit`` at a time, and what they decided."""

    def __init__(self, directory: Directory, budget: int, limit: asyncio.Semaphore) -> None:
        self.directory = directory
        self.budget = budget
        self.limit = limit
        self.found: set[str] = set()
        self.unknown: set[str] = set()
        self.inactive: set[str] = set()

    async def members(self, party: str) -> frozenset[str]:
        if self.budget <= 0:
            raise Unresolved("more parties than one request reads")
        self.budget -= 1
        async with self.limit:
            return await self.directory.members(party)

    async def group(self, party: str, mine: frozenset[str] | None, own: frozenset[str]) -> None:
        """Decides ``party``: a member when its list (or the list of a CareTeam or Group
        it names, one level down) names the caller or one of its affiliations; unknown
        when a list cannot be read, nests deeper, or when the affiliations could not be
        read and the list does not name the caller itself."""
        known = own if mine is None else mine
        try:
            members = await self.members(party)
            active = INACTIVE not in members
            member = not members.isdisjoint(known)
            deeper = False
            for nested in sorted(m for m in members if m.partition("/")[0] in GROUPS):
                if member:
                    break
                if nested in known or nested == party:
                    continue
                inner = await self.members(nested)
                member = not inner.isdisjoint(known)
                active = active and INACTIVE not in inner
                deeper = deeper or any(m.partition("/")[0] in GROUPS for m in inner)
        except Unresolved:
            self.unknown.add(party)
            return
        if member:
            (self.found if active else self.inactive).add(party)
        elif mine is None or deeper:
            self.unknown.add(party)  # it may name an affiliation or a team we did not read
