"""The witness's HTTP service (starlette): ``POST /add-checkpoint`` and ``GET /healthz``.

The body is read up to :data:`~middleware.witness.protocol.MAX_BODY_BYTES` and no further
(413 beyond, before it is parsed), within :data:`BODY_TIMEOUT` seconds (408 after);
everything else is the ``Witness``'s (:mod:`middleware.witness.service`). Other paths are 404,
other methods 405, as starlette routes them; nothing a client sends produces a 500. The
server adds the gateway's header deadline and connection cap (``witness serve``).
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from middleware.witness.protocol import MAX_BODY_BYTES
from middleware.witness.service import Witness

__all__ = ["BODY_TIMEOUT", "create_witness_app"]

#: Seconds a client has to send its whole body (a few KiB) once its headers are in.
BODY_TIMEOUT = 10.0


def create_witness_app(witness: Witness, *, body_timeout: float = BODY_TIMEOUT) -> Starlette:
    """The ASGI app serving ``witness``."""

    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        return PlainTextResponse("request body too large\n", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("", status_code=400)
        except TimeoutError:
            return PlainTextResponse("request body too slow\n", status_code=408)
        answer = await witness.add_checkpoint(bytes(body))
        # The content type exactly as given: tlog-witness's 409 is ``text/x.tlog.size``, and
        # starlette would append a charset to a ``text/`` media type.
        headers = {"content-type": answer.content_type}
        return Response(answer.body.encode(), status_code=answer.status, headers=headers)

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
