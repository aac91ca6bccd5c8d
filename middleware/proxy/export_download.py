"""The download of one patient-data bulk export file, judged again and sent batch by batch
(:mod:`middleware.proxy.export_http` routes to it; its module docstring says why a download
is judged again).

A file is read in batches (:meth:`~middleware.audit.bulk_job.ExportJob.batches`: at most
:data:`~middleware.audit.bulk_job.BATCH_LINES` lines, a board chunk at a time), each judged
as the entries of one search page with the consents of now and the downloading token, put on
the ledger with every patient it touched, and only then sent: a download holds one batch,
never the whole file. The answer is streamed (no ``Content-Length``). A first batch the
ledger refuses (or that fails to judge) raises before anything is sent, and the endpoint
answers it (503); after a later one the response is left incomplete (no last body message):
the ASGI server closes the connection ("ASGI callable returned without completing
response", uvicorn; no stack trace is logged), and the client sees a cut download, never a
short file that looks complete.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Final

from middleware.audit.httptypes import Recorder, Seen
from middleware.audit.recorder import Exchange
from middleware.auth.identity import Identity
from middleware.fhir import jsoncodec
from middleware.logging import get_logger
from middleware.pipeline.caller import ACTION_ACCESS, caller_of
from middleware.pipeline.export_params import NDJSON
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.judge import Trail
from middleware.pipeline.judging import Judging
from middleware.types import Scope, Send

__all__ = ["Download", "exchange_of"]

_HEADERS: Final = ((b"content-type", NDJSON.encode()), (b"cache-control", b"no-store"))


class Download:
    """Sends export files (module docstring): ``judging`` (the read half's) judges each
    batch, ``recorder`` puts it on the ledger."""

    def __init__(self, judging: Judging, recorder: Recorder) -> None:
        self._judging = judging
        self._recorder = recorder
        self._log = get_logger()

    async def send(
        self,
        scope: Scope,
        send: Send,
        seen: Seen,
        identity: Identity,
        batches: Iterator[list[bytes]],
    ) -> None:
        """Send the file of ``batches`` to the request of ``scope`` (module docstring);
        raises what the first batch raised; a later batch's failure is logged and the
        response left incomplete."""
        started = False
        for lines in itertools.chain(batches, [[]]):  # [] so that an empty file is recorded
            if started and not lines:
                break
            try:
                trail = Trail()
                body = await self._judged(identity, lines, trail)
                exchange = exchange_of(scope, seen, identity, 200, trail)
                await self._recorder.record(exchange, "exchange")
                if not started:
                    headers = [*_HEADERS, (b"x-request-id", seen.rid.encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except Exception as exc:
                if not started:
                    raise
                self._log.error(
                    "export download cut", request_id=seen.rid, error_type=type(exc).__name__
                )
                return  # never the last body message: the server closes the connection
        await send({"type": "http.response.body", "body": b""})

    async def _judged(self, identity: Identity, lines: list[bytes], trail: Trail) -> bytes:
        """The ``lines`` the caller may still be given, judged as the entries of one search
        page, as NDJSON; ``trail`` records what was decided and released."""
        entries = [{"resource": jsoncodec.decode(line)} for line in lines if line]
        if not entries:
            return b""
        page = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        judge = await self._judging.judge(caller_of(identity), ACTION_ACCESS, page, trail)
        released, _stats = filter_answer(page, judge.allowed)
        kept = released.get("entry") if isinstance(released, dict) else None
        return b"".join(
            jsoncodec.encode(entry["resource"]) + b"\n"
            for entry in (kept if isinstance(kept, list) else ())
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
        )


def exchange_of(
    scope: Scope, seen: Seen, identity: Identity, status: int, trail: Trail
) -> Exchange:
    """The ledger's record of one request to the export endpoints (or one batch of a
    download): ``status`` answered, ``trail`` what was decided and released."""
    assert seen.request is not None
    target = bytes(scope.get("raw_path") or str(scope["path"]).encode("utf-8"))
    query = bytes(scope.get("query_string", b""))
    raw = str(scope["method"]).encode("ascii") + b" " + target
    client = scope.get("client")
    return Exchange(
        request=seen.request,
        identity=identity,
        status=status,
        request_id=seen.rid,
        raw_request=raw + (b"?" + query if query else b""),
        client_address=client[0] if client else None,
        decisions=dict(trail.decisions),
        released=frozenset(trail.released) if status < 400 else frozenset(),
        narrowed=trail.narrowed,
        break_glass=trail.break_glass,
    )
