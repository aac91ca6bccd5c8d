"""Bulk export of the audit trail over HTTP (FHIR Bulk Data Access IG v2, async pattern).

Kick-off ``GET {base}/AuditEvent/$export`` (or ``GET {base}/$export?_type=AuditEvent``) with
``Prefer: respond-async`` answers 202 with ``Content-Location``, the job's status URL. The
export is a snapshot as of the kick-off (``transactionTime``): every entry recorded up to
then (from ``_since``, an instant, when given), oldest first, each entry's rendered BALP
events one per NDJSON line (served as the search serves them: ``id`` ``<index>-<n>`` and
``meta`` naming the ledger entry). Polling the status URL answers 202 with ``X-Progress``
while the job runs, then 200 with the manifest (``transactionTime``, ``request``,
``requiresAccessToken: true``, ``output: [{type, url, count}]``, ``error: []``), or an
OperationOutcome if the job failed (422 ``too-costly`` when it would exceed the export limit:
narrow it with ``_since``); DELETE cancels it (202). Output files need the same
auditor's token. Parameters other than ``_since``, ``_type=AuditEvent`` and
``_outputFormat`` (NDJSON) are refused (400), as Bulk Data allows a server to.

Jobs live in :mod:`middleware.audit.bulk` (shared by the workers of a SQLite store).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from middleware.audit.bulk import ExportJob, ExportJobs
from middleware.audit.httptypes import Reply, json_reply, principal_of
from middleware.audit.paging import pages
from middleware.audit.parts import instant
from middleware.audit.row import AuditQuery
from middleware.audit.searching import Searching
from middleware.auth.identity import Identity
from middleware.consent.fhirtime import bounds
from middleware.errors import BadRequest, Forbidden, GatewayError, NotFound
from middleware.fhir.jsoncodec import encode
from middleware.ledger.leaf import micros, micros_at
from middleware.pipeline.params import encode_params

__all__ = ["NDJSON", "BulkExport"]

NDJSON: Final = "application/fhir+ndjson"
_OUTPUT_FORMATS: Final = frozenset({NDJSON, "application/ndjson", "ndjson"})
_KICK_OFF_PARAMS: Final = frozenset({"_since", "_type", "_outputFormat", "_format"})


class JobFailed(GatewayError):
    """A bulk export job that failed (Bulk Data: the status request answers an error)."""

    status = 500
    code = "exception"


class JobTooLarge(GatewayError):
    """A bulk export job stopped at ``max_events``: the request asked for more than the
    gateway exports at once, which the client fixes by narrowing it (``_since``), so a 4xx
    (FHIR issue type ``too-costly``), not a server error."""

    status = 422
    code = "too-costly"


class BulkExport:
    """The kick-off, status, cancel and file endpoints over ``jobs``; rows and their events
    come from ``searching``; ``page`` rows are read from the index at a time."""

    def __init__(
        self,
        *,
        searching: Searching,
        jobs: ExportJobs,
        wall_clock: Callable[[], float] = time.time,
        page: int = 500,
    ) -> None:
        self.searching = searching
        self.jobs = jobs
        self._wall = wall_clock
        self._page = page

    def kick_off(
        self,
        identity: Identity,
        params: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        *,
        system: bool,
    ) -> Reply:
        """Start a job (module docstring): 202 with its status URL in ``Content-Location``."""
        if "respond-async" not in headers.get("prefer", "").lower():
            raise BadRequest("a bulk export needs the header Prefer: respond-async")
        since = _kick_off(params, system=system)
        now = self._wall()
        until = micros_at(now)  # as the recorder stamps entries
        base = self.searching.base_url
        prefix = f"{base}/$export" if system else f"{base}/AuditEvent/$export"
        request = f"{prefix}?{encode_params(params)}" if params else prefix

        async def produce(job: ExportJob) -> None:
            index = await self.searching.index()
            query = AuditQuery(since_us=since, until_us=until, limit=self._page)
            async for rows in pages(index, query):
                for event in await self.searching.served_many(rows):
                    job.add(encode(event))

        job = self.jobs.start(
            owner=principal_of(identity),
            request=request,
            transaction_time=instant(datetime.fromtimestamp(now, UTC)),
            produce=produce,
        )
        location = f"{base}/AuditEvent/$export-status/{job.id}"
        return Reply(202, (("content-location", location), ("cache-control", "no-store")), b"")

    def status(self, identity: Identity, job_id: str) -> Reply:
        """202 with ``X-Progress`` while the job runs, 200 with the manifest once done, the
        job's error if it failed (422 past ``max_events``, else 500); 404 for an unknown job
        or another caller's."""
        job = self.jobs.get(job_id, principal_of(identity))
        if job.state == "running":
            progress = f"{job.count} events exported"
            headers = (
                ("x-progress", progress),
                ("retry-after", "1"),
                ("cache-control", "no-store"),
            )
            return Reply(202, headers, b"")
        if job.state == "failed" and job.too_large:
            raise JobTooLarge(job.error or "the export is too large; narrow it with _since")
        if job.state == "failed":
            raise JobFailed(job.error or "the export failed")
        base = self.searching.base_url
        manifest = {
            "transactionTime": job.transaction_time,
            "request": job.request,
            "requiresAccessToken": True,
            "output": [
                {
                    "type": "AuditEvent",
                    "url": f"{base}/AuditEvent/$export-file/{job.id}/{n}",
                    "count": count,
                }
                for n, count in enumerate(job.file_counts())
            ],
            "error": [],
        }
        return json_reply(manifest, media_type="application/json")

    def cancel(self, identity: Identity, job_id: str) -> Reply:
        """Cancel and forget the job: 202 (404 as :meth:`status`)."""
        self.jobs.cancel(job_id, principal_of(identity))
        return Reply(202, (("cache-control", "no-store"),), b"")

    def file(self, identity: Identity, job_id: str, n: str) -> Reply:
        """Output file ``n`` of a finished job, as NDJSON (404 otherwise)."""
        job = self.jobs.get(job_id, principal_of(identity))
        if not (n.isascii() and n.isdigit() and len(n) < 10):
            raise NotFound("no such export file")
        body = job.ndjson(int(n))
        return Reply(200, (("content-type", NDJSON), ("cache-control", "no-store")), body)


def _kick_off(params: Sequence[tuple[str, str]], *, system: bool) -> int | None:
    """``_since`` in microseconds (None: from the start); 400 for any other parameter or a bad
    value, 403 for a system-level export of anything but the audit trail."""
    since: int | None = None
    types: list[str] = []
    for name, value in params:
        if name not in _KICK_OFF_PARAMS:
            raise BadRequest(
                "a bulk export of the audit trail takes _since, _type and _outputFormat only",
                code="not-supported",
            )
        if name == "_since":
            interval = bounds(value)
            if interval is None or "T" not in value or since is not None:
                raise BadRequest("_since: expected one FHIR instant (with time and zone)")
            since = micros(interval[0])
        elif name == "_type":
            types += [t.strip() for t in value.split(",")]
        elif name == "_outputFormat" and value not in _OUTPUT_FORMATS:
            raise BadRequest("_outputFormat: only NDJSON (application/fhir+ndjson) is produced")
    if any(t != "AuditEvent" for t in types) or (system and not types):
        raise Forbidden("the gateway exports only its audit trail (_type=AuditEvent)")
    return since
