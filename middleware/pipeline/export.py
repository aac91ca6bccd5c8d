"""Bulk Data ``$export`` of patient data: the kick-off, and the job that produces the files.

FHIR Bulk Data Access IG v2 ("Asynchronous request pattern"). The upstream has no ``$export``
of its own, so the gateway produces the export itself: it pages through upstream type
searches (:mod:`~middleware.pipeline.export_params`) and judges every page exactly as a
search result is judged (:class:`~middleware.pipeline.judging.Judging`: consent, purposes,
break-the-glass sessions already open, redaction obligations; the filter of
:func:`~middleware.pipeline.filter.filter_answer`; the id and code mapping when a profile is
on); only the matches released become NDJSON lines, one resource type a file.

Who may export (kick-off, :meth:`Exports.kick_off`; answered 202 with ``Content-Location``,
the job's status URL under the gateway, :mod:`middleware.proxy.export_http`):

- ``Prefer: respond-async`` is required (400 otherwise), the kick-off is a GET;
- a patient-context caller is refused (403): an export is a population read, and a patient's
  own record is served by ``Patient/[id]/$everything``;
- system level (``[base]/$export``) needs a system token; patient level (``Patient/$export``,
  every patient's compartment) and group level (``Group/[id]/$export``) a user or system one;
- the token must grant read and search on every exported type (403 otherwise);
- group level: the Group is read upstream and judged first, as a read is (a Group the caller
  may not see, one naming a member whose consent refuses the caller included, is the generic
  404, and the kick-off's ledger entry names the refusing member); only its ``Patient``
  members' compartments are exported (other members are skipped), at most ``max_members``
  (422 beyond).

Audit: the kick-off's decision (with the Group's, at group level) is recorded on the ledger
*before* its job starts, so a kick-off the ledger refuses (503) leaves no job running. Each
judged page is recorded on the ledger (through the same recorder as an exchange,
under the kick-off's request id) with every patient it touched, released or withheld,
*before* its lines are added to the job's files (architecture invariant 1: a file never holds
a line whose patient is not on the ledger). Each download of a file is recorded again by
:mod:`middleware.proxy.export_http`. A page the ledger cannot take fails the job (reported as
the ledger being unavailable: start again later).

Jobs run on :class:`~middleware.audit.bulk.ExportJobs` (limits of lines, bytes, running time
and running jobs per owner; a board shared by worker processes, sweeper, cancel): a job is
served only to the token owner that started it
(:func:`~middleware.pipeline.export_params.owner_of`: the principal and its client).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from middleware.audit.bulk import ExportJob, ExportJobs
from middleware.audit.parts import instant
from middleware.errors import BadRequest, Forbidden, UnprocessableEntity, UpstreamError
from middleware.fhir import jsoncodec
from middleware.fhir.request import Level
from middleware.pipeline.caller import ACTION_ACCESS
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found
from middleware.pipeline.export_params import export_request, owner_of, searches
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.flow import Flow
from middleware.pipeline.judge import Trail
from middleware.pipeline.pages import is_match, next_link
from middleware.pipeline.params import decode_params
from middleware.pipeline.release import bundle_page, read_failure
from middleware.pipeline.write_forward import Recorder

__all__ = ["EXPORT_OPERATIONS", "Exports"]

#: The operation this half serves (a system-level ``$export`` of AuditEvent is the audit API's).
EXPORT_OPERATIONS: Final = frozenset({"$export"})
_ACCEPT: Final = (("accept", "application/fhir+json"),)
_PATIENT_REF: Final = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})")


class Exports:
    """The ``$export`` half of the pipeline (module docstring): judges and releases through
    ``flow``, records each page through ``record`` (the exchange audit's), runs jobs on
    ``jobs``; ``page_count`` is the ``_count`` asked of the upstream, ``max_members`` the
    largest Group exported."""

    def __init__(
        self,
        flow: Flow,
        record: Recorder,
        jobs: ExportJobs,
        *,
        page_count: int = 100,
        max_members: int = 1000,
    ) -> None:
        self.flow = flow
        self.record = record
        self.jobs = jobs
        self.page_count = page_count
        self.max_members = max_members

    async def kick_off(self, ask: Ask) -> Answer:
        """Start an export job for ``ask`` (module docstring): 202 with its status URL;
        raises :class:`~middleware.errors.GatewayError` for every refusal."""
        request, caller = ask.request, ask.caller
        level, rtype = request.level, request.resource_type
        if request.operation not in EXPORT_OPERATIONS or not (
            level is Level.SYSTEM
            or (level is Level.TYPE and rtype == "Patient")
            or (level is Level.INSTANCE and rtype == "Group")
        ):
            raise Forbidden("this operation is not allowed through the gateway")
        if caller.patient is not None:
            raise Forbidden("a bulk export is not available in a patient context")
        if level is Level.SYSTEM and caller.context != "system":
            raise Forbidden("a system-level bulk export needs a system token")
        if request.method != "GET":
            raise BadRequest("a bulk export is started with GET", code="not-supported")
        if "respond-async" not in ask.headers.get("prefer", "").lower():
            raise BadRequest("a bulk export needs the header Prefer: respond-async")
        asked = export_request(decode_params(request.query), compartment=level is not Level.SYSTEM)
        for name in asked.types:
            if not (caller.may(name, "r") and caller.may(name, "s")):
                raise Forbidden(
                    f"the token grants no {caller.context}/ scope with read and search on {name}"
                )
        members = await self._members(ask) if level is Level.INSTANCE else None
        plan = searches(
            asked, count=self.page_count, members=members, base_urls=self.flow.base_urls
        )
        now = datetime.fromtimestamp(self.flow.wall_clock(), UTC)

        async def produce(job: ExportJob) -> None:
            await self._produce(ask, plan, job)

        # The kick-off on the ledger before its job starts: a kick-off answered 503 (the
        # ledger refusing) must leave no job running and holding a slot.
        await self.record(ask, 202, "decision")
        job = self.jobs.start(
            owner=owner_of(caller.identity),
            request=ask.self_url,
            transaction_time=instant(now),
            produce=produce,
        )
        location = f"{self.flow.gateway_base}/$export-status/{job.id}"
        return Answer(202, [("content-location", location), ("cache-control", "no-store")])

    async def _members(self, ask: Ask) -> list[str]:
        """The ids of the Group's Patient members, the Group read and judged as a read is (a
        scratch trail: the Group is not released to the client; its decisions are the
        kick-off's, recorded with it, released or refused)."""
        group = ask.request.resource_id
        up = await ask.forward("GET", f"Group/{group}", client_headers=False, headers=_ACCEPT)
        if up.status >= 400:
            raise read_failure(up, ask)
        scratch = replace(ask, trail=Trail())
        try:
            answer = await self.flow.releasing.release(scratch, up, status=200)
        finally:
            for judged, decision in scratch.trail.decisions.items():
                ask.trail.decided(judged, decision)
            for judged in scratch.trail.overridden:
                ask.trail.override(judged)
        document = answer.document
        if document is None and answer.raw is not None:
            document = jsoncodec.decode(answer.raw)
        if not isinstance(document, dict) or document.get("resourceType") != "Group":
            raise not_found()
        found: list[str] = []
        for member in document.get("member") or ():
            entity = member.get("entity") if isinstance(member, dict) else None
            ref = entity.get("reference") if isinstance(entity, dict) else None
            patient = self._patient_id(ref) if isinstance(ref, str) else None
            if patient is not None and patient not in found:
                found.append(patient)
        if len(found) > self.max_members:
            raise UnprocessableEntity(
                f"the Group has more than {self.max_members} patients; export it in parts"
            )
        return found

    def _patient_id(self, reference: str) -> str | None:
        """The id of a ``Patient/<id>`` reference, relative or under a known base."""
        for base in self.flow.base_urls:
            if reference.startswith(base + "/"):
                reference = reference[len(base) + 1 :]
                break
        matched = _PATIENT_REF.fullmatch(reference)
        return None if matched is None else matched[1]

    async def _produce(self, ask: Ask, plan: Sequence[tuple[str, str]], job: ExportJob) -> None:
        """Page through every search of ``plan``, judging, recording, then adding the
        released matches (module docstring); a new output file for each type."""
        current: str | None = None
        for rtype, target in plan:
            if rtype != current:
                job.start_file()
                current = rtype
            link: str | None = target
            while link is not None:
                up, document = await bundle_page(ask, link)
                following = next_link(document)  # before rebasing rewrites it
                page = replace(ask, trail=Trail())
                entries = await self._judged(page, up, document)
                if page.trail.decisions or page.trail.released:
                    await self.record(page, 200, "exchange")  # before any line is kept
                for entry in entries:
                    resource = entry.get("resource") if is_match(entry) else None
                    if isinstance(resource, dict) and resource.get("resourceType") == rtype:
                        job.add(jsoncodec.encode(resource))
                link = self._on_upstream(following)

    async def _judged(self, page: Ask, up: Upstreamed, document: dict[str, Any]) -> list[Any]:
        """One upstream page judged as a search page is (release.Release): its released
        entries, mapped when a profile is on."""
        releasing = self.flow.releasing
        occurrences = releasing.rebaser.occurrences(up.raw)
        if occurrences:
            releasing.rebaser.rewrite(document, occurrences)
        judge = await releasing.judging.judge(
            page.caller, ACTION_ACCESS, document, page.trail, up.raw
        )
        released, _stats = filter_answer(document, judge.allowed)
        entries = released.get("entry") if isinstance(released, dict) else None
        if not isinstance(entries, list):
            return []
        if releasing.mapper is not None:
            entries = releasing.mapper.entries(entries, owned=True)
            page.trail.mapped(releasing.mapper.label)
        return entries

    def _on_upstream(self, link: str | None) -> str | None:
        """An upstream ``next`` link to follow; one off the upstream base fails the job."""
        if link is None:
            return None
        base = self.flow.upstream_base.rstrip("/")
        if not link.startswith((base + "/", base + "?")):
            raise UpstreamError("the upstream server sent a next link off its base")
        return link
