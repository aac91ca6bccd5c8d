"""The reports of the AuditEvent API beside ``$accounting`` (routed by :mod:`.http` through
:mod:`.oversight_http`): the renderings are the CLI's (:mod:`.reports`, :mod:`.report_csv`,
:mod:`.report_pdf`), the rows come from the audit index a page at a time.

==========================================  ==================================================
request                                     answer
==========================================  ==================================================
``GET {base}/AuditEvent/$date-range``       the date-range report (``reports.date_range``),
``?date=..&_sort=[-]<column>&_format=``     sorted on any column (ONC 170.315(d)(3)):
                                            ``csv`` (default), ``ndjson`` or ``pdf`` (at
                                            most :data:`MAX_PDF_ROWS`); auditors only
``GET {base}/Patient/<id>/$access-report``  the patient access report (``reports.
``?date=..&_format=``                       access_report``): ``csv`` (default), ``pdf``,
                                            ``ndjson`` (its audit rows); the auditor or the
                                            patient itself, as ``$accounting``
==========================================  ==================================================

Either report holds at most :data:`MAX_REPORT_ROWS` index rows (counted first: 422
``too-costly`` beyond, as the bulk export's limit; the CLI has none). ``date`` takes the
ITI-81 search's syntax (``date=ge2026-01-01&date=le2026-01-31``). Unknown parameters are 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, Protocol

from middleware.audit.access import AuditReader
from middleware.audit.httptypes import Reply, Seen
from middleware.audit.paging import all_rows
from middleware.audit.parts import FHIR_ID
from middleware.audit.report_csv import access_csv, date_range_csv, date_range_ndjson
from middleware.audit.report_pdf import access_pdf, date_range_pdf
from middleware.audit.reports import DATE_RANGE_COLUMNS, AfterHours
from middleware.audit.reports import access_report as make_access_report
from middleware.audit.reports import date_range as make_date_range
from middleware.audit.row import AuditQuery, AuditRow
from middleware.audit.search import parse_search
from middleware.errors import BadRequest, Forbidden, NotFound, UnprocessableEntity

__all__ = [
    "MAX_PDF_ROWS",
    "MAX_REPORT_ROWS",
    "ReportStore",
    "TooCostly",
    "access_report_reply",
    "date_range_reply",
    "only",
    "period",
    "single",
]

#: Most rows a date-range or access report carries over HTTP (the CLI has no limit).
MAX_REPORT_ROWS: Final = 100_000
#: A PDF lays out every line (reportlab, in a worker thread): a longer period is the CSV's.
MAX_PDF_ROWS: Final = 10_000
_PAGE: Final = 1000
_NO_STORE: Final = ("cache-control", "no-store")


class ReportStore(Protocol):
    """What the reports read of the audit index (``LogStore``)."""

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]: ...

    async def audit_count(self, query: AuditQuery) -> int: ...


class TooCostly(UnprocessableEntity):
    """A report over more rows than :data:`MAX_REPORT_ROWS` (FHIR issue type ``too-costly``,
    as the bulk export's limit): narrow the period."""

    code = "too-costly"


async def date_range_reply(
    store: ReportStore,
    params: list[tuple[str, str]],
    *,
    now: int,
    gateway_name: str = "Consentry",
    after: AfterHours | None = None,
) -> Reply:
    """``$date-range`` (module table) as of ``now`` (microseconds since the epoch)."""
    only(params, "date", "_sort", "_format")
    values = single(params, "_sort", "_format")
    wanted = values.get("_format", "csv")
    if wanted not in ("csv", "ndjson", "pdf"):
        raise BadRequest("$date-range is served as csv, ndjson or pdf", code="not-supported")
    sort = values.get("_sort", "recorded_us")
    column = sort.removeprefix("-")
    if column not in DATE_RANGE_COLUMNS:
        raise BadRequest("_sort names no column of the report")
    since, until = period(params, default_since=0, now=now)
    query = AuditQuery(since_us=since, until_us=until, limit=_PAGE)
    cap = MAX_PDF_ROWS if wanted == "pdf" else MAX_REPORT_ROWS
    if await store.audit_count(query) > cap:
        raise TooCostly(f"the period holds more than {cap} rows: narrow it")
    rows = await all_rows(store, query)
    chosen = make_date_range(
        rows, since_us=since, until_us=until, sort=column, descending=sort.startswith("-")
    )
    if wanted == "pdf":
        pdf = await asyncio.to_thread(
            date_range_pdf,
            chosen,
            since_us=since,
            until_us=until,
            gateway_name=gateway_name,
            after=after,
        )
        return _file(pdf, "application/pdf")
    if wanted == "ndjson":
        return _file(date_range_ndjson(chosen).encode(), "application/x-ndjson")
    return _file(date_range_csv(chosen).encode(), "text/csv; charset=utf-8")


async def access_report_reply(
    store: ReportStore,
    reader: AuditReader,
    seen: Seen,
    patient_id: str,
    params: list[tuple[str, str]],
    *,
    now: int,
    gateway_name: str,
    after: AfterHours,
) -> Reply:
    """``Patient/<patient_id>/$access-report`` (module table) for ``reader``, as of ``now``."""
    if not FHIR_ID.fullmatch(patient_id) or not patient_id.strip("."):
        raise NotFound("not a valid Patient id")
    patient = f"Patient/{patient_id}"
    if reader.patient not in (None, patient):
        raise Forbidden("a patient may read only its own access report")
    only(params, "date", "_format")
    wanted = single(params, "_format").get("_format", "csv")
    if wanted not in ("csv", "pdf", "ndjson"):
        raise BadRequest("$access-report is served as csv, pdf or ndjson", code="not-supported")
    seen.patient = patient
    # Without a lower bound the report's own look-back applies (reports.access_report).
    bounds = parse_search([p for p in params if p[0] == "date"], default_count=1, max_count=1)
    since = bounds.query.since_us
    until = now if bounds.query.until_us is None else bounds.query.until_us
    query = AuditQuery(patient=patient, since_us=since, until_us=until, limit=_PAGE)
    if await store.audit_count(query) > MAX_REPORT_ROWS:
        raise TooCostly(f"the period holds more than {MAX_REPORT_ROWS} rows: narrow it")
    rows = await all_rows(store, query)
    report = make_access_report(rows, patient=patient, as_of_us=now, since_us=since, until_us=until)
    if wanted == "pdf":
        pdf = await asyncio.to_thread(access_pdf, report, gateway_name=gateway_name, after=after)
        return _file(pdf, "application/pdf")
    if wanted == "ndjson":
        shown = {line.index for line in report.lines}
        body = date_range_ndjson(r for r in rows if r.index in shown)
        return _file(body.encode(), "application/x-ndjson")
    return _file(access_csv(report).encode(), "text/csv; charset=utf-8")


def period(
    params: Sequence[tuple[str, str]], *, default_since: int | None, now: int
) -> tuple[int, int]:
    """The inclusive bounds the ``date`` parameters give (the ITI-81 search's syntax), the
    defaults filling what they leave open; 400 when they are malformed."""
    dates = [(name, value) for name, value in params if name == "date"]
    query = parse_search(dates, default_count=1, max_count=1).query
    since = query.since_us if query.since_us is not None else default_since
    until = query.until_us if query.until_us is not None else now
    return (0 if since is None else since), until


def only(params: Sequence[tuple[str, str]], *names: str) -> None:
    for name, _ in params:
        if name not in names:
            raise BadRequest(f"unknown parameter {name!r}"[:80], code="not-supported")


def single(params: Sequence[tuple[str, str]], *names: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in params:
        if name in names:
            if name in found:
                raise BadRequest(f"{name} may be given once")
            found[name] = value
    return found


def _file(body: bytes, media_type: str) -> Reply:
    return Reply(200, (("content-type", media_type), _NO_STORE), body)
