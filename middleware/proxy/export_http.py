"""The status and file endpoints of patient-data bulk exports, under the gateway's own URLs.

FHIR Bulk Data Access IG v2: the kick-off (:mod:`middleware.pipeline.export`) answers
``Content-Location: {gateway base}/$export-status/<job>``; this ASGI app serves

==================================================  ==========================================
``GET {base}/$export-status/<job>``                 202 with ``X-Progress`` while the job
                                                    runs; 200 with the manifest
                                                    (``transactionTime``, ``request``,
                                                    ``requiresAccessToken: true``, ``output``
                                                    ``[{type, url, count}]``, ``error: []``);
                                                    a failed job's OperationOutcome (422
                                                    ``too-costly`` past a limit of lines,
                                                    bytes or running time; 503 when the
                                                    ledger failed it; 500 otherwise)
``DELETE {base}/$export-status/<job>``              cancels the job and deletes its files (202)
``GET {base}/$export-file/<job>/<n>``               output file ``n``, NDJSON
==================================================  ==========================================

Job ids are random (128 bits) and a job is served only to the token owner that started it
(:func:`~middleware.pipeline.export_params.owner_of`: issuer, subject, launch patient and the
client the token was issued to); anyone else gets the same 404 as for an unknown id. Status,
manifest and DELETE also need a token granting read and search on every type the job
exports (403 otherwise: a narrower token of the same owner learns nothing of the job).

A download is judged again: the file's resources were judged when the job produced them, but
a consent can change before the file is fetched (architecture invariant 3: a change takes
effect for the very next request), so every line goes through the same judging as a search
result once more, with the consents of now and the downloading token's purposes, and only
the lines still released are sent (a file can shrink; it never grows). A file is read,
judged, recorded and sent in batches (:mod:`middleware.proxy.export_download`): a download
holds one batch, never the whole file. Every request
whose token verifies is recorded on the ledger before it is answered (a download: each batch
with each patient its lines touched, before any of its bytes leave; the ledger refusing the
first batch: 503, nothing released; a later one: the response is left incomplete and the
ASGI server closes the connection, nothing of that batch released). A request without a
valid token is a 401 and costs nothing durable.
"""

from __future__ import annotations

import re
from typing import Final

from middleware.asgi import header_dict
from middleware.audit.bulk import UNAVAILABLE, ExportJob, ExportJobs
from middleware.audit.http import store_failure
from middleware.audit.httptypes import (
    Recorder,
    Reply,
    Seen,
    TokenCheck,
    error_reply,
    json_reply,
    send_reply,
)
from middleware.auth.identity import Identity
from middleware.errors import (
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    UnprocessableEntity,
)
from middleware.fhir import jsoncodec
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.logging import get_logger
from middleware.pipeline.caller import caller_of
from middleware.pipeline.export_params import job_types, owner_of
from middleware.pipeline.judge import Trail
from middleware.pipeline.judging import Judging
from middleware.proxy.export_download import Download, exchange_of
from middleware.proxy.headers import request_id
from middleware.types import Receive, Scope, Send

__all__ = ["ExportEndpoints", "serves"]

_STATUS: Final = "$export-status"
_FILE: Final = "$export-file"
_JOB: Final = re.compile(r"[0-9a-f]{32}")
_FILE_NUMBER: Final = re.compile(r"[0-9]{1,9}")


def serves(path: str, base_path: str) -> bool:
    """True when ``path`` is one of this app's (``{base}/$export-status/...`` or
    ``{base}/$export-file/...``)."""
    return path.startswith((f"{base_path}/{_STATUS}/", f"{base_path}/{_FILE}/"))


class JobFailed(GatewayError):
    """An export job that failed for the gateway's reasons (Bulk Data: the status request
    answers an error)."""

    status = 500
    code = "exception"


class LedgerFailed(ServiceUnavailable):
    """A job failed because the ledger could not record a page: nothing is wrong with the
    request, it is started again later (not ``transient``: polling again does not help)."""

    code = "exception"
    retry_after = 30


class TooCostly(UnprocessableEntity):
    """An export job stopped at the resource limit: the client narrows it (``_since``,
    ``_type``), so a 4xx, FHIR issue type ``too-costly``."""

    code = "too-costly"


class ExportEndpoints:
    """The ASGI app of the module docstring over ``jobs`` (the ``$export`` half's);
    ``verifier`` checks bearer tokens, ``recorder`` puts each request on the ledger,
    ``judging`` (the read half's) judges each download again."""

    def __init__(
        self,
        *,
        jobs: ExportJobs,
        judging: Judging,
        verifier: TokenCheck,
        recorder: Recorder,
        base_path: str,
        gateway_base: str,
    ) -> None:
        self.jobs = jobs
        self._downloads = Download(judging, recorder)
        self._verifier = verifier
        self._recorder = recorder
        self._base = base_path
        self._gateway = gateway_base.rstrip("/")
        self._log = get_logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope.get("headers", []))
        seen = Seen(request_id(headers))
        identity: Identity | None = None
        trail = Trail()
        try:
            segments, seen.request = self._route(scope)
            identity = await self._verifier.verify(headers.get("authorization"))
            if segments[0] == _FILE:
                job = self.jobs.get(segments[1], owner_of(identity))
                batches = job.batches(int(segments[2]))
                await self._downloads.send(scope, send, seen, identity, batches)
                return
            reply = await self._answer(str(scope["method"]), identity, segments)
        except GatewayError as error:
            reply = error_reply(error)
        except Exception as exc:  # noqa: BLE001 - fail closed: no detail in the answer
            self._log.error(
                "export endpoint failed", request_id=seen.rid, error_type=type(exc).__name__
            )
            reply = error_reply(
                ServiceUnavailable("exports unavailable")
                if store_failure(exc)
                else GatewayError("internal error")
            )
        if identity is not None and seen.request is not None:
            try:
                exchange = exchange_of(scope, seen, identity, reply.status, trail)
                await self._recorder.record(exchange, "exchange")
            except Exception as exc:  # noqa: BLE001 - unrecorded: nothing is released
                self._log.error(
                    "export request not recorded",
                    request_id=seen.rid,
                    error_type=type(exc).__name__,
                )
                reply = error_reply(
                    exc if isinstance(exc, ServiceUnavailable) else ServiceUnavailable("unrecorded")
                )
        await send_reply(send, reply, seen.rid)

    def _route(self, scope: Scope) -> tuple[list[str], FhirRequest]:
        """The path's segments below the base and the FHIR request it is (for the audit);
        404 for anything but a job id and a file number, 405 for another method."""
        path: str = scope["path"]
        segments = path[len(self._base) + 1 :].split("/")
        method = str(scope["method"])
        match segments:
            case [operation, job] if operation == _STATUS and _JOB.fullmatch(job):
                allowed: tuple[str, ...] = ("GET", "DELETE")
            case [operation, job, n] if (
                operation == _FILE and _JOB.fullmatch(job) and _FILE_NUMBER.fullmatch(n)
            ):
                allowed = ("GET",)
            case _:
                raise NotFound("no such export job")
        if method not in allowed:
            raise MethodNotAllowed(f"{method} is not allowed here", allowed=allowed)
        request = FhirRequest(
            Interaction.OPERATION,
            method,
            Level.SYSTEM,
            "/".join(segments),
            bytes(scope.get("query_string", b"")),
            operation=segments[0],
        )
        return segments, request

    async def _answer(self, method: str, identity: Identity, segments: list[str]) -> Reply:
        """The status, manifest or cancel of a job the token may see (module docstring)."""
        owner = owner_of(identity)
        job = self.jobs.get(segments[1], owner)
        caller = caller_of(identity)
        for name in job_types(job.request):
            if not (caller.may(name, "r") and caller.may(name, "s")):
                raise Forbidden(f"the token grants no scope with read and search on {name}")
        if method == "DELETE":
            self.jobs.cancel(segments[1], owner)
            return Reply(202, (("cache-control", "no-store"),), b"")
        return self._status(job)

    def _status(self, job: ExportJob) -> Reply:
        if job.state == "running":
            headers = (
                ("x-progress", f"{job.count} resources exported"),
                ("retry-after", "1"),
                ("cache-control", "no-store"),
            )
            return Reply(202, headers, b"")
        if job.state == "failed" and job.too_large:
            raise TooCostly(job.error or "the export is too large; narrow it with _since or _type")
        if job.state == "failed" and job.error == UNAVAILABLE:
            raise LedgerFailed(UNAVAILABLE)
        if job.state == "failed":
            raise JobFailed(job.error or "the export failed; start it again")
        output = [
            {
                "type": _type_of(job, n),
                "url": f"{self._gateway}/{_FILE}/{job.id}/{n}",
                "count": count,
            }
            for n, count in enumerate(job.file_counts())
        ]
        manifest = {
            "transactionTime": job.transaction_time,
            "request": job.request,
            "requiresAccessToken": True,
            "output": output,
            "error": [],
        }
        return json_reply(manifest, media_type="application/json")


def _type_of(job: ExportJob, n: int) -> str:
    """The resource type of output file ``n`` (one type a file: its first line's; only that
    line is read)."""
    document = jsoncodec.decode(job.first_line(n) or b"{}")
    kind = document.get("resourceType") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) else "Resource"
