"""The memberships directory on the upstream FHIR server, read by the gateway as itself.

:class:`UpstreamDirectory` answers :class:`~middleware.pipeline.memberships.Directory` with
reads the gateway makes with its own upstream client and its own headers (``accept`` and the
configured ``upstream_headers``: never a client's token), each bounded by ``timeout``:

* ``affiliations(Practitioner/x)``: ``GET PractitionerRole?practitioner=Practitioner/x``,
  each active role and its ``organization``;
* ``affiliations(PractitionerRole/x)``: ``GET PractitionerRole/x``, its ``organization``
  and its ``practitioner`` (the caller acts in that one role, as that practitioner),
  nothing when inactive;
* ``affiliations(Person/x)``: ``GET Person/x``, its ``link.target`` records;
* ``parents(Organization/x)``: ``GET Organization/x``, its ``partOf``;
* ``members(CareTeam/x)``: ``GET CareTeam/x``, each ``participant.member`` and
  ``participant.onBehalfOf``; ``members(Group/x)``: ``GET Group/x``, each
  ``member.entity`` not marked ``inactive``. 404 and 410 mean no members. A CareTeam whose
  ``status`` is inactive or entered-in-error, a Group with ``active`` false, also answers
  :data:`~middleware.pipeline.memberships.INACTIVE`.

A role's ``period`` (PractitionerRole.period), a participant's (CareTeam.participant.period)
and a member's (Group.member.period) bound when it counts: outside it, on the injected
wall clock at the time of the question (not of the read), it does not; a period the gateway
cannot read is unresolved.

Answers are cached per record for ``ttl`` seconds (a membership ended upstream takes effect
within that time), at most ``size`` of them, least recently used out first, and read again
on expiry. Concurrent misses of one record share one read; a failure is remembered for
:data:`FAILURE_SECONDS` (answered as the same failure). Anything unexpected (a transport
error or timeout, another status, JSON that is not the resource asked for, a ``status``,
``active`` or ``inactive`` that is not a code or boolean, a search answer with a ``next``
page: an incomplete list could hide the one role that matters) raises
:class:`~middleware.pipeline.memberships.Unresolved`, and the pipeline fails closed; so does
any other error reading or parsing a record (never a 500), remembered like the others.
References are compared as ``Type/id`` whatever their base (as the consent matcher does);
a member or organization given only by identifier or display, contained or as a ``urn:``
could be anyone, and is unresolved too.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final
from urllib.parse import quote

from middleware.consent.fhirtime import bounds
from middleware.consent.model import normalize_reference
from middleware.errors import GatewayError
from middleware.fhir import jsoncodec
from middleware.pipeline.memberships import INACTIVE, Unresolved, Watch
from middleware.proxy.upstream import Upstream, UpstreamRequest

__all__ = ["UpstreamDirectory"]

#: Roles asked for in one page; more than one page is unresolved (module docstring).
_PAGE: Final = 200
_MAX_BYTES: Final = 4 * 1024 * 1024
_MAX_DEPTH: Final = 64
_GONE: Final = frozenset({404, 410})
#: Seconds a failed read is answered from memory (as the same failure): a party nobody can
#: read costs the upstream one read per this time, not one per request.
FAILURE_SECONDS: Final = 5.0
#: FHIR R4 CareTeam.status values of a team that is not active.
_ENDED: Final = frozenset({"inactive", "entered-in-error"})

#: A reference and the seconds since the epoch it counts from (inclusive) and until
#: (exclusive); None: unbounded.
Timed = tuple[str, float | None, float | None]
Parse = Callable[[Any, str], Iterator[tuple[str, object]]]
#: The watch of the lookup in progress in this task (and the tasks it gathers).
_WATCHING: ContextVar[Watch | None] = ContextVar("membership_watch", default=None)


class UpstreamDirectory:
    """Memberships read from the upstream (module docstring). ``upstream`` gives the
    gateway's client (called per read: it is created lazily, in the event loop); ``clock``
    is a monotonic clock in seconds (cache ages), ``wall_clock`` seconds since the epoch
    (periods)."""

    def __init__(
        self,
        upstream: Callable[[], Upstream],
        *,
        base: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        ttl: float = 300.0,
        size: int = 10_000,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if size < 1 or ttl < 0 or timeout <= 0:
            raise ValueError("size must be positive, ttl not negative, timeout positive")
        self._upstream = upstream
        self.base = base.rstrip("/")
        self._headers = [("accept", "application/fhir+json")] + [
            (name.lower(), value) for name, value in (headers or {}).items()
        ]
        self.timeout = timeout
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._wall = wall_clock
        self._cache: OrderedDict[str, tuple[float, frozenset[Timed]]] = OrderedDict()
        self._failed: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._reading: dict[str, asyncio.Future[tuple[float, frozenset[Timed]]]] = {}

    async def affiliations(self, user: str) -> frozenset[str]:
        kind, _, ident = user.partition("/")
        if kind == "Practitioner":
            target = f"PractitionerRole?practitioner={quote(user, safe='/')}&_count={_PAGE}"
            return await self._cached(target, _roles_of)
        if kind == "PractitionerRole":
            return await self._cached(f"PractitionerRole/{quote(ident)}", _role_of)
        if kind == "Person":
            return await self._cached(f"Person/{quote(ident)}", _links_of)
        return frozenset()  # a Patient or RelatedPerson user is itself; nothing to read

    async def parents(self, organization: str) -> frozenset[str]:
        kind, _, ident = organization.partition("/")
        if kind != "Organization":
            return frozenset()
        return await self._cached(f"Organization/{quote(ident)}", _part_of)

    async def members(self, party: str) -> frozenset[str]:
        kind, _, ident = party.partition("/")
        if kind == "CareTeam":
            return await self._cached(f"CareTeam/{quote(ident)}", _care_team_members)
        if kind == "Group":
            return await self._cached(f"Group/{quote(ident)}", _group_members)
        return frozenset()

    def now(self) -> tuple[float, float]:
        return self._clock(), self._wall()

    @contextmanager
    def watch(self) -> Iterator[Watch]:
        watch = Watch()
        token = _WATCHING.set(watch)
        try:
            yield watch
        finally:
            _WATCHING.reset(token)

    async def _cached(self, target: str, parse: Parse) -> frozenset[str]:
        """The references of ``target`` that count now (cached, see the module docstring);
        a :meth:`watch` in progress learns when this answer may change (its cache entry
        expires, or a period in it starts or ends)."""
        expires, found = await self._timed(target, parse)
        wall = self._wall()
        watch = _WATCHING.get()
        if watch is not None:
            watch.until = min(watch.until, expires)
            watch.wall_since = max(watch.wall_since, wall)
            for _, start, end in found:
                for moment in (start, end):
                    if moment is not None and wall < moment < watch.wall_until:
                        watch.wall_until = moment
        return frozenset(
            ref
            for ref, start, end in found
            if (start is None or start <= wall) and (end is None or wall < end)
        )

    async def _timed(self, target: str, parse: Parse) -> tuple[float, frozenset[Timed]]:
        """``target``'s answer: cached, a failure remembered :data:`FAILURE_SECONDS`, or
        one read shared by every concurrent miss (each waiter may give up on its own
        deadline without cancelling the read the others wait for)."""
        now = self._clock()
        hit = self._cache.get(target)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(target)
            return hit
        failed = self._failed.get(target)
        if failed is not None and failed[0] > now:
            raise Unresolved(failed[1])
        reading = self._reading.get(target)
        if reading is None:
            reading = asyncio.ensure_future(self._fill(target, parse, now))
            self._reading[target] = reading
            reading.add_done_callback(lambda done: self._done(target, done))
        return await asyncio.shield(reading)

    def _done(self, target: str, done: asyncio.Future[tuple[float, frozenset[Timed]]]) -> None:
        if self._reading.get(target) is done:
            del self._reading[target]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have left

    async def _fill(self, target: str, parse: Parse, now: float) -> tuple[float, frozenset[Timed]]:
        try:
            found = await self._read(target, parse)
        except Exception as exc:
            # Unresolved, or a record shaped as no parser foresaw: the same deny (or 503, per
            # membership_unresolved), never a 500. The message names no record's data.
            known = isinstance(exc, Unresolved)
            reason = str(exc) if known else "a membership record could not be read"
            self._failed[target] = (now + FAILURE_SECONDS, reason)
            self._failed.move_to_end(target)
            while len(self._failed) > self.size:
                self._failed.popitem(last=False)
            if known:
                raise
            raise Unresolved(reason) from exc
        self._failed.pop(target, None)
        entry = self._cache[target] = (now + self.ttl, found)
        self._cache.move_to_end(target)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return entry

    async def _read(self, target: str, parse: Parse) -> frozenset[Timed]:
        request = UpstreamRequest("GET", f"{self.base}/{target}", list(self._headers))
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._upstream().send(request)
                try:
                    raw = await response.read(_MAX_BYTES)
                finally:
                    await response.aclose()
        except (GatewayError, TimeoutError) as exc:
            raise Unresolved("the FHIR server did not answer a membership read") from exc
        if response.status in _GONE:
            return frozenset()
        if response.status != 200:
            raise Unresolved(f"a membership read was answered {response.status}")
        try:
            document = jsoncodec.decode(raw, max_depth=_MAX_DEPTH)
        except (jsoncodec.DecodeError, ValueError) as exc:
            raise Unresolved("a membership read was answered with invalid JSON") from exc
        kind = target.partition("/")[0].partition("?")[0]
        found: set[Timed] = set()
        for ref, period in parse(document, kind):
            if ref == INACTIVE:
                found.add((ref, None, None))
                continue
            local = _local(ref)
            if not local:
                raise Unresolved(f"a {kind} names a member by no readable reference")
            found.add((local, *_span(period)))
        return frozenset(found)


def _resource(document: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(document, Mapping) or document.get("resourceType") != kind:
        raise Unresolved(f"a membership read did not answer a {kind}")
    return document


def _roles_of(document: Any, kind: str) -> Iterator[tuple[str, object]]:
    bundle = _resource(document, "Bundle")
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, Mapping) and link.get("relation") == "next":
            raise Unresolved("a practitioner's roles span more than one page")
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        role = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(role, Mapping) or role.get("resourceType") != "PractitionerRole":
            continue  # an OperationOutcome or an _include: not a role
        if _false(role.get("active")) or not isinstance(role.get("id"), str):
            continue
        period = role.get("period")
        yield f"PractitionerRole/{role['id']}", period
        yield from _refs(role.get("organization"), period)


def _role_of(document: Any, kind: str) -> Iterator[tuple[str, object]]:
    role = _resource(document, kind)
    if not _false(role.get("active")):
        yield from _refs(role.get("organization"), role.get("period"))
        # The caller acts as the role's practitioner: a consent naming it applies.
        yield from _refs(role.get("practitioner"), role.get("period"))


def _part_of(document: Any, kind: str) -> Iterator[tuple[str, object]]:
    organization = _resource(document, kind)
    yield from _refs(organization.get("partOf"), None)


def _links_of(document: Any, kind: str) -> Iterator[tuple[str, object]]:
    person = _resource(document, kind)
    for link in _list(person.get("link")):
        yield from _refs(link.get("target"), None)


def _care_team_members(document: Any, kind: str) -> Iterator[tuple[str, object]]:
    team = _resource(document, kind)
    status = team.get("status")
    if status is not None and not isinstance(status, str):
        raise Unresolved("a CareTeam's status is not a code")
    if status in _ENDED:
        yield INACTIVE, None
    for participant in _list(team.get("participant")):
        period = participant.get("period")
        yield from _refs(participant.get("member"), period)
        yield from _refs(participant.get("onBehalfOf"), period)


def _group_members(document: Any, kind: str) -> Iterator[tuple[str, object]]:
    group = _resource(document, kind)
    if _false(group.get("active")):
        yield INACTIVE, None
    for member in _list(group.get("member")):
        if not _true(member.get("inactive")):
            yield from _refs(member.get("entity"), member.get("period"))


def _false(flag: object) -> bool:
    """A FHIR boolean that is false; absent is not; anything but a boolean could mean
    either (a string "false" read as true would keep an ended role): :class:`Unresolved`."""
    if flag is not None and not isinstance(flag, bool):
        raise Unresolved("a membership record's flag is not a boolean")
    return flag is False


def _true(flag: object) -> bool:
    """As :func:`_false`, for a flag that is true."""
    return not _false(flag) and flag is True


def _list(value: object) -> Iterator[Mapping[str, Any]]:
    for item in value if isinstance(value, list) else ():
        if isinstance(item, Mapping):
            yield item


def _refs(value: object, period: object) -> Iterator[tuple[str, object]]:
    """The reference of a Reference ``value``; one given only by identifier or display
    (or not a Reference) could be anyone: :class:`Unresolved`, never "not a member"."""
    if value is None:
        return
    if not isinstance(value, Mapping) or not isinstance(value.get("reference"), str):
        raise Unresolved("a membership record names a party by no literal reference")
    yield value["reference"], period


def _span(period: object) -> tuple[float | None, float | None]:
    """A FHIR Period as seconds since the epoch: from the start's lower bound, until the
    end's upper bound (an end at day precision includes that day); raises
    :class:`Unresolved` for one that is not a Period of FHIR dateTimes."""
    if period is None:
        return None, None
    if not isinstance(period, Mapping):
        raise Unresolved("a membership period is not a Period")
    found: list[float | None] = []
    for key, side in (("start", 0), ("end", 1)):
        value = period.get(key)
        if value is None:
            found.append(None)
            continue
        span = bounds(value) if isinstance(value, str) else None
        if span is None:
            raise Unresolved(f"a membership period's {key} is not a FHIR dateTime")
        found.append(span[side].timestamp())
    return found[0], found[1]


def _local(reference: str) -> str:
    """``Type/id`` of a literal reference, relative or absolute on any base (as the
    consent matcher compares them: :func:`~middleware.consent.model.normalize_reference`),
    a version dropped; ``""`` for anything else (contained, ``urn:``)."""
    local = normalize_reference(reference)
    kind, _, ident = local.partition("/")
    if not kind[:1].isupper() or not ident or "/" in ident or ":" in kind:
        return ""
    return local
