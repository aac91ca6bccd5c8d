"""ITI-81 search and read of the audit trail: index rows in, served BALP events out.

A search (:meth:`Searching.search`) parses its parameters (:func:`~middleware.audit.search.
parse_search`, 400 on anything it does not know), pins a patient reader to its own record
(asking for another patient is 403, decided from the request alone, so it never says whether
that patient has events), redeems the cursor of a page request, asks the audit index for one
row more than the page (to know whether a next page exists: no count is ever computed) and
renders each row's entry (:data:`~middleware.audit.httptypes.EventsOf`), keeping the events
that themselves meet the event-level criteria (``type``, ``subtype``, ``action``,
``outcome``: an entry matched by its RESTful event also renders its AuthZconsent decision
event, which is not returned for ``type=rest``). The ``next`` link
carries a sealed cursor (:class:`~middleware.pipeline.cursor.CursorCodec`) holding the last
row's keyset place ``(recorded_us, index)`` (and its sort value under a ``_sort`` other than
date, :mod:`~middleware.audit.sort_keys`) and the search's snapshot, the time and the
ledger size of its first page (later entries, its own audit entries among them, are left to a
new search, so paging ends), bound to the caller, its purposes of use and the
search's parameters: the cursor cannot be read, changed or used by anyone else, or for
another search. Rows of crypto-shredded patients are never returned (their evidence is gone).

A patient reader is served each event :func:`~middleware.audit.render.for_patient`: without
the raw request (``entity[query]``, which names the other patients of a multi-patient search)
and the agents' network addresses; an auditor is served the full event.

A read (:meth:`Searching.read`) of ``AuditEvent/<index>-<n>`` answers the same 404 for an id
that is malformed, names no entry, an entry without that event, a shredded one, or (to a
patient) an entry about another patient.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Final

from middleware.audit.access import AuditReader
from middleware.audit.httptypes import (
    AuditIndex,
    EventsOf,
    EventsOfMany,
    Json,
    Reply,
    Seen,
    json_reply,
    principal_of,
)
from middleware.audit.paging import pages
from middleware.audit.render import for_patient
from middleware.audit.row import AuditQuery, AuditRow
from middleware.audit.search import parse_search
from middleware.audit.searchset import parse_event_id, searchset, served_event
from middleware.audit.sort_keys import sort_column, sort_value
from middleware.auth.identity import Identity
from middleware.errors import BadRequest, Forbidden, NotFound
from middleware.ledger.leaf import micros_at
from middleware.pipeline.cursor import CURSOR_PARAM, CursorCodec, query_digest, split_cursor
from middleware.pipeline.params import encode_params

__all__ = ["Searching"]

_PLACE_REFUSED: Final = "invalid or expired cursor"
_RESTFUL: Final = "http://hl7.org/fhir/restful-interaction"


class Searching:
    """Search and read over ``index`` (opened on first need) and ``events``.

    ``base_url``: the public FHIR base; ``gateway_root``: the public URL of the gateway without
    the FHIR base path (the ``/ledger`` API's root); ``default_count`` and ``max_count``: page
    sizes; ``wall_clock``: seconds since the epoch (cursor expiry)."""

    def __init__(
        self,
        *,
        index: Callable[[], Awaitable[AuditIndex]],
        events: EventsOf,
        cursors: CursorCodec,
        base_url: str,
        gateway_root: str,
        default_count: int,
        max_count: int,
        wall_clock: Callable[[], float] = time.time,
        events_many: EventsOfMany | None = None,
    ) -> None:
        self.index = index
        self.events = events
        self.events_many = events_many
        self._cursors = cursors
        self.base_url = base_url
        self._root = gateway_root
        self._default = default_count
        self._max = max_count
        self._wall = wall_clock

    async def served(self, row: AuditRow) -> list[Json]:
        """The served events of ``row``'s entry (none when it has none to show)."""
        events = await self.events(row.index)
        return [
            served_event(
                event,
                index=row.index,
                n=n,
                gateway_root=self._root,
                break_glass=row.break_glass,
            )
            for n, event in enumerate(events or ())
        ]

    async def served_many(self, rows: Sequence[AuditRow]) -> list[Json]:
        """The served events of ``rows``' entries, in order: :meth:`served` of each, the
        entries read together when ``events_many`` was given (a page of a bulk export or a
        search; ``EvidenceReader.events_many``), else one by one."""
        if self.events_many is None:
            return [event for row in rows for event in await self.served(row)]
        found = await self.events_many([row.index for row in rows])
        return [
            served_event(
                event,
                index=row.index,
                n=n,
                gateway_root=self._root,
                break_glass=row.break_glass,
            )
            for row, events in zip(rows, found, strict=True)
            for n, event in enumerate(events or ())
        ]

    async def search(
        self, identity: Identity, reader: AuditReader, seen: Seen, params: list[tuple[str, str]]
    ) -> Reply:
        """A searchset page (module docstring); 400 for bad parameters or a bad cursor, 403
        for a patient asking about another patient."""
        token, rest = split_cursor(params)
        search = parse_search(rest, default_count=self._default, max_count=self._max)
        query = search.query
        if reader.patient is not None:
            if query.patient not in (None, reader.patient):
                raise Forbidden("a patient may search only the events about its own record")
            query = replace(query, patient=reader.patient)
        # The search's own audit entry names the patient it asked about, on that patient's
        # chain, whether it was named by ``patient`` or by ``entity=Patient/<id>`` (which
        # the index matches the same way): "who looked at my record" covers an auditor
        # looking at the record's trail either way.
        seen.patient = query.patient or _patient_entity(query.entity)
        principal = principal_of(identity)
        purpose = tuple(f"{s}|{c}" for s, c in identity.purpose_of_use)
        digest = query_digest("AuditEvent", search.params)
        now = self._wall()
        index = await self.index()
        # A search is a snapshot as of its first page, its time (as the recorder stamps
        # entries: float seconds through datetime, then ledger.leaf) and the ledger's size:
        # what is recorded later (this search's own audit entries among it) is left to a new
        # search, so paging always ends, even for entries stamped in the same microsecond.
        snapshot = (micros_at(now), await index.size())
        if token is not None:
            place = self._cursors.redeem(
                token, principal=principal, purpose=purpose, query_digest=digest, now=now
            )
            recorded, entry, snapshot_us, snapshot_size, value = _place(place)
            snapshot = (snapshot_us, snapshot_size)
            query = replace(query, after=(recorded, entry), after_value=value)
        until = snapshot[0] if query.until_us is None else min(query.until_us, snapshot[0])
        rows = await _rows(index, replace(query, until_us=until), size=snapshot[1])
        page = rows[: query.limit]
        events = [event for event in await self.served_many(page) if _matches(event, query)]
        if reader.patient is not None:
            events = [for_patient(event) for event in events]
        next_url = None
        if len(rows) > query.limit:
            last = page[-1]
            # Under a sort other than date the place is (value, index): the value rides
            # along in hex (it may hold dots), sealed like the rest.
            value = "" if sort_column(query.sort) is None else sort_value(last, query.sort)
            cursor = self._cursors.issue(
                f"{last.recorded_us}.{last.index}.{snapshot[0]}.{snapshot[1]}"
                f".{value.encode().hex()}",
                principal=principal,
                purpose=purpose,
                query_digest=digest,
                now=now,
            )
            next_url = self._url([*search.params, (CURSOR_PARAM, cursor)])
        self_url = self._url(params)
        return json_reply(
            searchset(events, base_url=self.base_url, self_url=self_url, next_url=next_url)
        )

    async def read(self, reader: AuditReader, seen: Seen, event_id: str) -> Reply:
        """One served event, or the same 404 for every reason there is none to serve."""
        parsed = parse_event_id(event_id)
        if parsed is None:
            raise NotFound("no such AuditEvent")
        index, n = parsed
        row = await (await self.index()).audit_row(index)
        if row is None or row.shredded or reader.patient not in (None, row.patient):
            raise NotFound("no such AuditEvent")
        seen.patient = row.patient
        events = await self.served(row)
        if n >= len(events):
            raise NotFound("no such AuditEvent")
        return json_reply(events[n] if reader.patient is None else for_patient(events[n]))

    def _url(self, params: Sequence[tuple[str, str]]) -> str:
        base = f"{self.base_url}/AuditEvent"
        return f"{base}?{encode_params(params)}" if params else base


def _patient_entity(entity: str | None) -> str | None:
    """``entity`` when it names a patient (``Patient/<id>``), else None."""
    if entity is None:
        return None
    kind, _, rid = entity.partition("/")
    return entity if kind == "Patient" and rid and "/" not in rid else None


def _matches(event: Json, query: AuditQuery) -> bool:
    """Whether ``event`` itself meets the query's event-level criteria (type, subtype, action,
    outcome): the index matched the entry by its RESTful event, and an entry also renders
    events of other kinds (the AuthZconsent decision), which a search for ``type=rest`` must
    not return."""
    if query.event_type is not None:
        coding = event.get("type") or {}
        if f"{coding.get('system')}|{coding.get('code')}" != query.event_type:
            return False
    if query.subtype is not None:
        codes = {c.get("code") for c in event.get("subtype") or () if c.get("system") == _RESTFUL}
        if query.subtype not in codes:
            return False
    if query.action is not None and event.get("action") != query.action:
        return False
    return query.outcome is None or event.get("outcome") == query.outcome


async def _rows(index: AuditIndex, query: AuditQuery, *, size: int) -> list[AuditRow]:
    """Up to ``query.limit + 1`` rows of ``query`` from entries below ledger index ``size``
    (the snapshot), in order; shredded rows are never asked for (AuditQuery's default)."""
    wanted = query.limit + 1
    kept: list[AuditRow] = []
    async with aclosing(pages(index, replace(query, limit=wanted))) as each:
        async for rows in each:
            kept += [row for row in rows if row.index < size and not row.shredded]
            if len(kept) >= wanted:
                break
    return kept[:wanted]


def _place(text: str) -> tuple[int, int, int, int, str]:
    """What a cursor holds (issued by us): the keyset place of the last row served and the
    search's snapshot, ``<recorded_us>.<index>.<snapshot_us>.<snapshot_size>.<value hex>``
    (the value is the last row's sort value, empty when sorted by date)."""
    try:
        *numbers, value = text.split(".")
        recorded, index, snapshot, size = (int(part) for part in numbers)
        return recorded, index, snapshot, size, bytes.fromhex(value).decode()
    except ValueError:  # sealed by us: unreachable short of a bug (UnicodeError included)
        raise BadRequest(_PLACE_REFUSED) from None
