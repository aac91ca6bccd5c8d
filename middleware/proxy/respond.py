"""Sending an answer from the ASGI edge: a released :class:`Answer`, raw bytes, or an error.

Every answer carries ``X-Request-Id`` and a ``Content-Length``; one of at least
``gzip_min_bytes`` is gzipped when the client accepts it (level :data:`GZIP_LEVEL`). An error
is the one OperationOutcome :func:`middleware.fhir.outcome.render_error` makes of it; when
the request's body was never read the connection is closed (it cannot carry another request
until drained). The status and bytes sent are noted on the exchange's log. When the client
asked for FHIR XML (``xml=True``), a FHIR JSON body, answer or error, is converted just before
it goes out (:func:`middleware.fhir.xmlrender.json_to_xml`, in a worker thread when the answer
is large); a JSON answer costs nothing more. The conversion is total for any string the answer
holds (characters XML 1.0 cannot carry become U+FFFD), so an answer whose disclosure has been
recorded is sent; a Bundle's own links keep ``_format=xml`` so its next page comes in XML too.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Mapping
from typing import Final

from middleware.errors import GatewayError
from middleware.fhir import jsoncodec
from middleware.fhir.negotiate import media_type
from middleware.fhir.outcome import render_error
from middleware.fhir.xmlrender import json_to_xml
from middleware.pipeline.exchange import Answer
from middleware.proxy.exchange_log import ExchangeLog
from middleware.types import Send

__all__ = ["FHIR_JSON", "FHIR_XML", "GZIP_LEVEL", "send_answer", "send_bytes", "send_error"]

FHIR_JSON: Final = b"application/fhir+json; charset=utf-8"
FHIR_XML: Final = b"application/fhir+xml;charset=utf-8"
#: Answer media types that are FHIR JSON (converted for an XML client); others pass as they are.
_JSON_ANSWERS: Final = frozenset(
    {"application/fhir+json", "application/json", "application/json+fhir"}
)

#: The answer's gzip level, by measurement on carebundle answers (docs/performance.md): levels
#: 1-3 are zlib's fast deflate, 3 the best ratio of them; a search of 20 Observations (31.6 KB)
#: 2,092 B in 25 us at 3, 2,027 B in 69 us at 5; a patient's Bundle (62 KB) 6.0 KB in 56 us,
#: 5.0 KB in 154 us. Smaller by a few percent at 5, for three times the CPU of every answer.
GZIP_LEVEL: Final = 3
#: An answer larger than this is rendered as XML in a worker thread, off the event loop.
_INLINE_XML_BYTES: Final = 64 * 1024


async def send_answer(
    send: Send,
    answer: Answer,
    client_headers: Mapping[str, str],
    ex: ExchangeLog,
    *,
    gzip_min_bytes: int,
    xml: bool = False,
) -> None:
    """Send ``answer``: its raw bytes when it has them, else its document encoded; in FHIR
    XML when ``xml`` and it is FHIR JSON."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    body = b""
    if answer.raw is not None or answer.document is not None:
        body = answer.raw if answer.raw is not None else jsoncodec.encode(answer.document)
        if not any(k == b"content-type" for k, _ in headers):
            headers.append((b"content-type", FHIR_JSON))
        if xml and len(body) > _INLINE_XML_BYTES:
            headers, body = await asyncio.to_thread(_as_xml, headers, body, links=True)
        elif xml:
            headers, body = _as_xml(headers, body, links=True)
    await send_bytes(
        send, answer.status, headers, body, client_headers, ex, gzip_min_bytes=gzip_min_bytes
    )


async def send_bytes(  # noqa: PLR0917 - the parts of one answer
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    client_headers: Mapping[str, str],
    ex: ExchangeLog,
    *,
    gzip_min_bytes: int,
) -> None:
    """Send ``status``, ``headers`` and ``body`` (gzipped when worth it and accepted)."""
    out = [*headers, (b"x-request-id", ex.rid.encode())]
    if (
        gzip_min_bytes
        and len(body) >= gzip_min_bytes
        and "gzip" in client_headers.get("accept-encoding", "")
    ):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        out += [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
    out.append((b"content-length", str(len(body)).encode()))
    ex.status = status
    ex.bytes_out = len(body)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def _as_xml(
    headers: list[tuple[bytes, bytes]], body: bytes, *, links: bool = False
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``headers`` and ``body`` in FHIR XML when the body is FHIR JSON; else unchanged. With
    ``links``, a Bundle's own links ask for XML (``_format=xml``)."""
    kind = next((v for k, v in headers if k == b"content-type"), b"")
    if media_type(kind.decode("latin-1")) not in _JSON_ANSWERS:
        return headers, body
    xml = json_to_xml(body, link_format=links)
    kept = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
    return [*kept, (b"content-type", FHIR_XML)], xml


async def send_error(
    send: Send, error: GatewayError, ex: ExchangeLog, *, xml: bool = False
) -> None:
    """Send ``error`` as its OperationOutcome (in FHIR XML when ``xml``)."""
    status, headers, body = render_error(error)
    if xml:
        headers, body = _as_xml(headers, body)
        headers.append((b"content-length", str(len(body)).encode()))
    ex.status = status
    ex.bytes_out = len(body)
    headers.append((b"x-request-id", ex.rid.encode()))
    if ex.body_pending:
        # The body was never read (refused first): the connection cannot carry another
        # request until it is drained, so it is closed rather than drained.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
