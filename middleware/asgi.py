"""What every endpoint does first with an ASGI request: its headers as a dict, its body whole
under a size cap and a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from middleware.errors import BadRequest, PayloadTooLarge, RequestTimeout
from middleware.types import Receive

__all__ = ["header_dict", "read_body"]


def header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case header names to values; repeated headers joined with ', ' (RFC 9110 §5.3)."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


async def read_body(
    receive: Receive, headers: Mapping[str, str], limit: int, *, within: float | None = None
) -> bytes:
    """The body as received (no content decoding), refusing more than ``limit`` bytes.

    A declared ``Content-Length`` over the cap is refused before anything is read; a body that
    grows past it while streaming is refused as soon as it does (413). A client that
    disconnects mid-body gets 400. A body not whole within ``within`` seconds (all of it, not
    per chunk: a client dripping a byte at a time is held no longer) is 408.
    """
    declared = headers.get("content-length", "")
    # ASCII digits only: "\xb2".isdigit() is True and int() refuses it. More than 18 digits
    # is over any limit, and int() never sees a number too long to convert (ValueError).
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise PayloadTooLarge("request body exceeds the configured size limit")
    try:
        async with asyncio.timeout(within):
            return await _read(receive, limit)
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {within:g} s") from exc


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("request body exceeds the configured size limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
