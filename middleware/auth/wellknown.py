"""``/.well-known/smart-configuration``, served at the FHIR base and at the gateway's root.

SMART App Launch 2.x ("Conformance") puts the document under the FHIR base; some clients look
for it at the host's root as well, so both answer the same. It is public
(no token: a client reads it to learn where to get one), JSON, and built from the settings by
:func:`middleware.auth.smart.smart_configuration`. With no issuer configured there is no
authorization server to describe, and the answer is a 404 OperationOutcome saying so.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from middleware.auth.settings import AuthSettings
from middleware.auth.smart import authorization_server, smart_configuration
from middleware.errors import NotFound
from middleware.fhir.outcome import render_error

__all__ = ["WELL_KNOWN", "smart_paths", "smart_routes"]

WELL_KNOWN: Final = "/.well-known/smart-configuration"


def smart_paths(base_path: str) -> frozenset[str]:
    """The paths the document is served at: the root's and the FHIR base's."""
    return frozenset({WELL_KNOWN, f"{base_path.rstrip('/')}{WELL_KNOWN}"})


def smart_routes(settings: AuthSettings, *, base_path: str, gateway_root: str) -> list[Route]:
    """Starlette routes answering :func:`smart_paths` (GET only; other methods are 405)."""
    server = authorization_server(settings, gateway_root=gateway_root)
    document = smart_configuration(server) if server is not None else None

    async def endpoint(_request: Request) -> Response:
        if document is None:
            status, headers, body = render_error(
                NotFound("no authorization server is configured on this gateway")
            )
            raw = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
            raw.pop("content-length", None)
            return Response(body, status_code=status, headers=raw)
        return JSONResponse(document, headers={"cache-control": "public, max-age=300"})

    return [Route(path, endpoint, methods=["GET"]) for path in sorted(smart_paths(base_path))]
