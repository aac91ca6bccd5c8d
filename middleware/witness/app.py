"""The witness's HTTP service (starlette): ``POST /add-checkpoint`` and ``GET /healthz``.

The body is read up to :data:`~middleware.witness.protocol.MAX_BODY_BYTES` and no further
(413 beyond, before it is parsed); everything else is the ``Witness``'s
(:mod:`middleware.witness.service`).
Other paths are 404, other methods 405, as starlette routes them; nothing a client sends
produces a 500.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from middleware.witness.protocol import MAX_BODY_BYTES
from middleware.witness.service import Witness

__all__ = ["create_witness_app"]


def create_witness_app(witness: Witness) -> Starlette:
    """The ASGI app serving ``witness``."""

    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return PlainTextResponse("request body too large\n", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("", status_code=400)
        answer = await witness.add_checkpoint(bytes(body))
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
