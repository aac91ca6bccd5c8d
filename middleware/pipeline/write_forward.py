"""A checked write sent on, in the order architecture invariant 1 requires.

:class:`WriteForward` takes a write :class:`~middleware.pipeline.writes.Writes` has judged
and, in this order:

1. records the decision on the ledger (``record(ask, status, "decision")``);
2. keeps the audit intent with a *probe* of the write (JSON: the method, the target or the
   create's idempotency tag, the pinned version and a digest of what was sent,
   :func:`content_digest`), by which a gateway killed before recording the outcome learns
   from the upstream at its next start whether the write happened (``proxy.reconcile``);
3. forwards it (pinned by the caller with ``If-Match``, FHIR R4 http.html#concurrency);
4. releases the upstream's answer like a read (``Prefer: return=representation`` bodies are
   filtered; a body the caller may not read is left out), its outcome recorded by the caller
   of the pipeline.

A create retried with the same ``Idempotency-Key`` is answered the record stored the first
time only when that record carries the same request tag (:func:`same_request`,
:mod:`~middleware.pipeline.idempotency`); otherwise 422.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from middleware.errors import GatewayError, NotFound, UnprocessableEntity, UpstreamError
from middleware.fhir import jsoncodec
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, upstream_failure
from middleware.pipeline.idempotency import IDEMPOTENCY_REQUEST_TAG, IDEMPOTENCY_TAG, own_tags
from middleware.pipeline.pages import is_match
from middleware.pipeline.params import encode_params
from middleware.pipeline.release import Release
from middleware.pipeline.targets import json_accept

__all__ = ["Intend", "Recorder", "WriteForward", "content_digest", "same_request"]

#: Records one phase of an exchange on the ledger; raises ServiceUnavailable when it cannot.
Recorder = Callable[[Ask, int, Literal["exchange", "decision", "outcome"]], Awaitable[None]]
#: Keeps a write's audit intent before it is forwarded: ``(ask, probe, created)``.
Intend = Callable[[Ask, str, bool], Awaitable[None]]

_WRITE_HEADERS: Final = frozenset(
    {"content-type", "etag", "last-modified", "location", "content-location"}
)


class WriteForward:
    """Sends checked writes on (module docstring): ``record`` and ``intend`` (None: no
    intent kept) keep the exchange's audit; answers are released by the read half's
    ``releasing``."""

    def __init__(self, record: Recorder, intend: Intend | None, releasing: Release) -> None:
        self.record = record
        self.intend = intend
        self.releasing = releasing

    async def forward(
        self,
        ask: Ask,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        *,
        probe: dict[str, Any] | None = None,
        replay: tuple[str, str] | None = None,
    ) -> Answer:
        """Record the decision, keep the intent (``probe``: how the upstream tells whether
        the write happened; by default the target's version before and a digest of ``body``),
        forward the write (``body``: the client's unless given), release its answer. With
        ``replay`` (the key and request codes of a conditional create on its idempotency tag)
        a 200, the record an earlier create stored, must carry the request code (422)."""
        await self.record(ask, 200, "decision")
        if self.intend is not None:
            if probe is None:
                probe = {"method": method, "target": target, "version": _pinned(headers)}
                if body is not None:
                    probe["sent"] = content_digest(jsoncodec.decode(body))
            await self.intend(ask, jsoncodec.encode(probe).decode(), method == "POST")
        up = await ask.forward(
            method, target, body=ask.body if body is None else body, headers=headers
        )
        if up.status >= 400:
            outcome = upstream_failure(up, ask.request)
            if isinstance(outcome, GatewayError):
                raise outcome
            return outcome
        if replay is not None and up.status == 200:
            await same_request(ask, target, up, *replay)
        passed = [(k, v) for k, v in up.headers if k in _WRITE_HEADERS]
        if isinstance(up.document, dict) and up.document.get("resourceType") not in (
            None,
            "OperationOutcome",
        ):
            try:
                answer = await self.releasing.release(ask, up)
            except NotFound:
                # Written, but not readable by this caller (a create-only scope, a consent
                # that allows collecting but not access): the outcome without the body.
                pass
            else:
                answer.headers = passed
                return answer
        return Answer(up.status, [(k, v) for k, v in passed if k != "content-type"])


async def same_request(ask: Ask, rtype: str, up: Upstreamed, code: str, sent: str) -> None:
    """Raise 422 unless the record the upstream matched on the key's tag ``code`` (its
    answer, or found by the tag when the answer carries none) was created by this same
    request (its request tag is ``sent``): a key reused with another body must not be
    answered with the first body's record while the second is silently dropped."""
    found = up.document
    if not (isinstance(found, dict) and found.get("resourceType") == rtype):
        target = f"{rtype}?{encode_params([('_tag', f'{IDEMPOTENCY_TAG}|{code}')])}"
        search = await ask.forward("GET", target, headers=json_accept(), client_headers=False)
        bundle = search.document
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        matches = [
            entry["resource"]
            for entry in (entries if isinstance(entries, list) else ())
            if is_match(entry) and isinstance(entry.get("resource"), dict)
        ]
        if search.status != 200 or len(matches) != 1:
            raise UpstreamError("the upstream server named no record for the condition")
        found = matches[0]
    if not any(
        hmac.compare_digest(have.encode(), sent.encode())  # str: ASCII only, bytes any
        for system, have in own_tags(found)
        if system == IDEMPOTENCY_REQUEST_TAG
    ):
        raise UnprocessableEntity("this Idempotency-Key was used for a different request")


def content_digest(resource: Any) -> str:
    """SHA-256 of ``resource`` without ``meta`` (the server's version and time), canonical:
    what an update sent and what the upstream holds afterwards compare equal."""
    if isinstance(resource, dict):
        resource = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(jsoncodec.encode_canonical(resource)).hexdigest()


def _pinned(headers: list[tuple[str, str]]) -> str | None:
    """The version an ``If-Match`` in ``headers`` pins (``W/"3"`` -> ``3``)."""
    for name, value in headers:
        if name == "if-match":
            return value.removeprefix("W/").strip('"')
    return None
