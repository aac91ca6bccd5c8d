"""Reading an ASGI request body whole, under a size cap: what every endpoint that takes a body
does first."""

from __future__ import annotations

from collections.abc import Mapping

from middleware.errors import BadRequest, PayloadTooLarge
from middleware.types import Receive

__all__ = ["read_body"]


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The body as received (no content decoding), refusing more than ``limit`` bytes.

    A declared ``Content-Length`` over the cap is refused before anything is read; a body that
    grows past it while streaming is refused as soon as it does (413). A client that
    disconnects mid-body gets 400.
    """
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("request body exceeds the configured size limit")
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
