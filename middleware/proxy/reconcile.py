"""Reconciliation of interrupted writes: did the upstream apply a write whose gateway died
before recording its outcome?

Before each write is forwarded, its decision is on the ledger and its *intent* in the audit
outbox (:mod:`middleware.audit.outbox`): the outcome entries of each way it can end and a
probe (:mod:`middleware.pipeline.writes`). At start-up and at each ``/readyz`` check the open
intents are decided here by asking the upstream, then their outcome goes to the ledger:

=========  ==========================================  =========================================
write      ``applied``                                 ``absent``
=========  ==========================================  =========================================
create     a resource of the type carries the          no resource carries it
           create's gateway tag (``_tag`` search)
update     the target, less ``meta``, is what was      the target is still at the version the
           sent                                        write was pinned to (or, unpinned, gone)
delete     the target is gone (404/410)                the target is there
=========  ==========================================  =========================================

Anything else is ``unknown`` (recorded as such: an outcome the gateway could not establish,
status 502); an upstream that does not answer (or cannot: no ``_tag`` search, a 403) leaves
the intent open (``/readyz`` unavailable) until it does, or until the recorder gives up on it
(``max_attempts`` undecided checks or ``give_up_after`` seconds) and records ``unknown``. Only
intents whose owning process is gone are decided here: another replica's write in flight is
left alone (:class:`~middleware.audit.recorder.AuditRecorder`, leases). "Applied" says the
upstream's state agrees with the write: a delete another client made in between reads the
same.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from middleware.audit.recorder import AuditRecorder
from middleware.errors import UpstreamError
from middleware.fhir import jsoncodec
from middleware.pipeline.idempotency import IDEMPOTENCY_TAG
from middleware.pipeline.write_forward import content_digest
from middleware.proxy.forwarder import UpstreamForwarder
from middleware.proxy.upstream import UpstreamRequest

__all__ = ["decide", "reconcile"]

_MISSING: Final = (404, 410)


async def reconcile(recorder: AuditRecorder, forwarder: UpstreamForwarder) -> int:
    """Decide every open intent of ``recorder`` by asking the upstream through
    ``forwarder``'s client, and replay the outbox; return how many rows or intents still wait
    (see :meth:`~middleware.audit.recorder.AuditRecorder.reconcile`)."""

    async def decide_one(probe: str) -> str | None:
        return await decide(forwarder, probe)

    return await recorder.reconcile(decide_one)


async def decide(forwarder: UpstreamForwarder, probe_text: str) -> str | None:
    """``applied``, ``absent`` or ``unknown`` for one probe (module docstring); None when
    the upstream cannot tell now."""
    probe = jsoncodec.decode(probe_text.encode())
    if not isinstance(probe, dict):
        return "unknown"
    method = probe.get("method")
    if method == "POST":
        tag, rtype = probe.get("tag"), probe.get("type")
        if not isinstance(tag, str) or not isinstance(rtype, str):
            return "unknown"  # a conditional update that created: no tag to find it by
        status, found = await _get(forwarder, f"{rtype}?_tag={quote(f'{IDEMPOTENCY_TAG}|{tag}')}")
        if status != 200 or not isinstance(found, dict) or found.get("resourceType") != "Bundle":
            return None
        entries = found.get("entry")
        return "applied" if isinstance(entries, list) and entries else "absent"
    target = probe.get("target")
    if not isinstance(target, str):
        return "unknown"
    status, current = await _get(forwarder, target)
    if method == "DELETE":
        return "applied" if status in _MISSING else "absent" if status == 200 else None
    pinned = probe.get("version")
    if status in _MISSING:
        return "absent" if pinned is None else "unknown"
    if status != 200 or not isinstance(current, dict):
        return None
    meta = current.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if pinned is not None and version == pinned:
        return "absent"
    return "applied" if probe.get("sent") == content_digest(current) else "unknown"


async def _get(forwarder: UpstreamForwarder, target: str) -> tuple[int, Any]:
    """GET ``target`` from the upstream as the gateway (its ``upstream_headers``); the status
    and the decoded JSON answer (None if there is none). Raises GatewayError when the upstream
    cannot be reached or read."""
    settings = forwarder.settings
    headers = [("accept", "application/fhir+json"), *settings.upstream_headers.items()]
    url = f"{settings.upstream.rstrip('/')}/{target}"
    response = await forwarder.upstream.send(UpstreamRequest("GET", url, headers))
    try:
        raw = await response.read(settings.max_response_bytes)
    finally:
        await response.aclose()
    try:
        document = jsoncodec.decode(raw, max_depth=settings.max_json_depth) if raw else None
    except jsoncodec.DecodeError as exc:
        raise UpstreamError("the upstream sent invalid JSON") from exc
    return response.status, document
