"""The compliance reviewer's operations of the AuditEvent API (routed by :mod:`.http`).

==========================================  ==================================================
request                                     answer
==========================================  ==================================================
``GET {base}/AuditEvent/$overview``         a period at a glance (JSON,
``?date=ge..&date=le..``                    :func:`~middleware.audit.oversight.overview_json`):
                                            accesses per day, per user, after hours,
                                            break-the-glass, awaiting review; the latest
                                            :data:`OVERVIEW_ROWS` accesses of the period
                                            (``truncated`` says so); 30 days by default
``GET {base}/AuditEvent/$review``           the break-the-glass accesses awaiting review and
                                            the latest reviewed (JSON)
``POST {base}/AuditEvent/$review``          form ``entry=<ledger index>&note=<text>``: record
                                            the review as a ledger entry
                                            (:mod:`middleware.audit.reviews`); 201
``GET .../AuditEvent/$date-range``,        the date-range and access reports
``GET .../Patient/<id>/$access-report``     (:mod:`middleware.audit.report_http`)
==========================================  ==================================================

All are for auditors only (:mod:`middleware.audit.access`: the ``audit_role`` role and a
``user/`` or ``system/`` AuditEvent scope), except ``$access-report``, which the patient
itself may read too, as ``$accounting``. Each request is recorded on the ledger by the API
like every other access of the audit trail. The overview, the review queue and the date-range
report answer about many patients and are recorded as an ITI-81 search of the trail is,
naming no patient (the entry keeps who asked, when and the request); a review names the
reviewed access's patient, an access report its patient. The reviewer is the verified
token's ``fhirUser`` (else ``issuer#subject``), never a form field, and never the agent of
the access reviewed (403: separation of duties); two reviews of one access at once record
one (the other 409). Unknown parameters are 400.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from middleware.audit.access import audit_reader
from middleware.audit.httptypes import Reply, Seen, json_reply
from middleware.audit.oversight import (
    ACCESS_KINDS,
    access_lines,
    awaiting_review,
    overview_json,
    summarize,
)
from middleware.audit.paging import pages
from middleware.audit.report_http import (
    ReportStore,
    access_report_reply,
    date_range_reply,
    only,
    period,
)
from middleware.audit.reports import AccessLine, AfterHours
from middleware.audit.reviews import MAX_NOTE, Review, ReviewLog, ReviewSource, review_evidence
from middleware.audit.rfc3339 import format_us as to_rfc3339
from middleware.audit.row import AuditQuery, AuditRow
from middleware.auth.identity import Identity
from middleware.consent.serial import KeyedLocks
from middleware.errors import BadRequest, Conflict, Forbidden, NotFound
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, micros_at

__all__ = ["OVERVIEW_ROWS", "QUEUE_ROWS", "Oversight", "OversightStore"]

#: Most accesses an overview counts (the latest of its period).
OVERVIEW_ROWS: Final = 10_000
#: Most break-the-glass accesses the review queue reads (the latest).
QUEUE_ROWS: Final = 1000
_DAY_US: Final = 86_400_000_000
_PAGE: Final = 1000


class OversightStore(ReviewSource, ReportStore, Protocol):
    """What the operations read of the ledger store (``LogStore``)."""

    async def audit_row(self, index: int) -> AuditRow | None: ...


class Oversight:
    """The operations of the module table over ``store`` (opened on first need);
    ``append`` records a ledger entry durably and returns its index."""

    def __init__(
        self,
        *,
        store: Callable[[], Awaitable[OversightStore]],
        append: Callable[[NewEntry], Awaitable[int]],
        role: str,
        after: AfterHours,
        after_text: str,
        gateway_name: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._append = append
        self._role = role
        self._after = after
        self._after_text = after_text
        self._name = gateway_name
        self._wall = wall_clock
        self._reviews = ReviewLog()
        self._reviewing = KeyedLocks()

    async def answer(
        self,
        identity: Identity,
        seen: Seen,
        operation: str,
        params: list[tuple[str, str]],
        *,
        method: str,
        patient_id: str | None = None,
    ) -> Reply:
        """The answer to ``operation`` (one of the module table's)."""
        now = micros_at(self._wall())
        if operation == "$access-report":
            assert patient_id is not None
            reader = audit_reader(identity, role=self._role, permission="r")
            return await access_report_reply(
                await self._store(),
                reader,
                seen,
                patient_id,
                params,
                now=now,
                gateway_name=self._name,
                after=self._after,
            )
        self._auditor(identity)
        if operation == "$overview":
            return await self._overview(params)
        if operation == "$date-range":
            return await date_range_reply(
                await self._store(), params, now=now, gateway_name=self._name, after=self._after
            )
        if method == "POST":
            return await self._review(identity, seen, params)
        only(params)
        return await self._queue()

    def _auditor(self, identity: Identity) -> None:
        if audit_reader(identity, role=self._role, permission="r").as_ != "auditor":
            raise Forbidden("the compliance operations are for auditors only")

    # -- overview -------------------------------------------------------------------------

    async def _overview(self, params: list[tuple[str, str]]) -> Reply:
        only(params, "date")
        now = micros_at(self._wall())
        since, until = period(params, default_since=now - 30 * _DAY_US, now=now)
        store = await self._store()
        query = AuditQuery(
            since_us=since, until_us=until, kinds=ACCESS_KINDS, sort="-date", limit=_PAGE
        )
        lines, truncated = await _latest_lines(store, query, OVERVIEW_ROWS)
        view = summarize(
            lines, since_us=since, until_us=until, after=self._after, truncated=truncated
        )
        queue = await self._awaiting(store)
        return json_reply(
            overview_json(view, awaiting=len(queue), window=self._after_text),
            media_type="application/json",
        )

    # -- break-the-glass review -----------------------------------------------------------

    async def _awaiting(self, store: OversightStore) -> list[AccessLine]:
        query = AuditQuery(break_glass=True, kinds=ACCESS_KINDS, sort="-date", limit=_PAGE)
        lines, _ = await _latest_lines(store, query, QUEUE_ROWS)
        return awaiting_review(lines, await self._reviews.current(store))

    async def _queue(self) -> Reply:
        store = await self._store()
        reviews = await self._reviews.current(store)
        waiting = await self._awaiting(store)
        latest = sorted(reviews.values(), key=lambda r: r.ledger_index, reverse=True)[:50]
        return json_reply(
            {
                "awaiting": [_line_json(line) for line in waiting],
                "reviewed": [_review_json(review) for review in latest],
            },
            media_type="application/json",
        )

    async def _review(self, identity: Identity, seen: Seen, params: list[tuple[str, str]]) -> Reply:
        only(params, "entry", "note")
        values = dict(params)
        if len(values) != len(params) or "entry" not in values:
            raise BadRequest("a review names one entry (entry=<ledger index>)")
        entry = _index(values["entry"])
        note = values.get("note", "").strip()
        if not note or len(note) > MAX_NOTE or not _printable(note):
            raise BadRequest(f"a review needs a note of 1 to {MAX_NOTE} printable characters")
        store = await self._store()
        row = await store.audit_row(entry)
        lines = [] if row is None else access_lines([row])
        if not lines or not lines[0].break_glass:
            raise NotFound("no break-the-glass access at that ledger index")
        seen.patient = row.patient if row is not None else None
        reviewer = identity.fhir_user or f"{identity.issuer}#{identity.subject}"
        agent = lines[0].agent
        if agent and agent in {reviewer, identity.fhir_user, identity.subject}:
            # Oversight is by someone else: whoever broke the glass may hold the audit role
            # too, but never signs off their own emergency access (separation of duties).
            raise Forbidden("an access is reviewed by someone other than who made it")
        # Check and record under one lock per reviewed entry: two reviews of the same access
        # arriving together would both pass the check otherwise. One process only; replicas
        # sharing a ledger could still both record, and the first recorded stands
        # (:func:`~middleware.audit.reviews.parse_reviews`).
        async with self._reviewing.hold(str(entry)):
            if entry in await self._reviews.current(store):
                raise Conflict("that access was already reviewed")
            recorded = micros_at(self._wall())
            evidence = review_evidence(entry=entry, reviewer=reviewer, note=note)
            new = NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=recorded)
            index = await self._append(new)
        body = {
            "review": index,
            "entry": entry,
            "reviewer": reviewer,
            "recorded": to_rfc3339(recorded),
        }
        return json_reply(body, 201, media_type="application/json")

    # -- reports ----------------------------------------------------------------------------


async def _latest_lines(
    store: OversightStore, query: AuditQuery, most: int
) -> tuple[list[AccessLine], bool]:
    """Up to ``most`` access lines of ``query`` (newest first), and whether more were left."""
    lines: list[AccessLine] = []
    async for page in pages(store, query):
        lines += access_lines(page)
        if len(lines) > most:
            return lines[:most], True
    return lines, False


def _printable(note: str) -> bool:
    """Whether ``note`` is printable text, line breaks and tabs allowed (a textarea's)."""
    return all(c.isprintable() or c in "\r\n\t" for c in note)


def _index(text: str) -> int:
    # at most 18 digits: every such number is a valid SQLite INTEGER (< 2**63)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequest("entry is a ledger index")
    return int(text)


def _line_json(line: AccessLine) -> dict[str, object]:
    return {
        "entry": line.index,
        "recorded": to_rfc3339(line.recorded_us),
        "patient": line.patient,
        "agent": line.agent,
        "organization": line.organization,
        "resource_types": list(line.resource_types),
        "action": line.action,
        "result": line.result,
        "purposes": list(line.purposes),
    }


def _review_json(review: Review) -> dict[str, object]:
    return {
        "entry": review.entry,
        "review": review.ledger_index,
        "recorded": to_rfc3339(review.recorded_us),
        "reviewer": review.reviewer,
        "note": review.note,
    }
