"""The pages' only way to data: the gateway's own HTTP APIs, called in-process.

:class:`GatewayApi` sends each call through the gateway's ASGI app (``httpx.ASGITransport``)
with ``Authorization: Bearer <session.token>``, so a page action meets the same
classification, token check, consent and audit scopes, and ledger recording as any client's
call: the Consent API's answer comes back only after its change is on the ledger, and every
read a page shows is audited by the API that served it. No page reads a store directly.

Each call carries the browser's own address as the ASGI ``client`` (:func:`calling_for`, set
by the web app for the request being answered): the APIs record it in their audit events and
count it in their per-address limits as they would for that browser calling them directly,
instead of every page sharing one loopback address.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final

import httpx

from middleware.fhir import jsoncodec
from middleware.types import ASGIApp, Receive, Scope, Send
from middleware.web.session import WebSession

__all__ = ["Answer", "GatewayApi", "Params", "calling_for"]

#: (status, decoded JSON, or the raw bytes of a non-JSON answer, headers)
Answer = tuple[int, Any, httpx.Headers]
#: Query parameters: a mapping, or pairs when a name repeats.
Params = Mapping[str, str] | list[tuple[str, str | int | float | bool | None]]
#: The address of the browser whose request a page is answering (ASGI ``client``).
_BROWSER: ContextVar[tuple[str, int] | None] = ContextVar("consentry_web_browser", default=None)
_ACCEPT: Final = "application/fhir+json, application/json;q=0.9, */*;q=0.1"


class GatewayApi:
    """Calls the gateway ``app`` in-process; ``root`` is the gateway's public root URL
    (requests carry its host, as a browser's would). Paths are absolute
    (``/fhir/Consent``, ``/ledger/checkpoint``)."""

    def __init__(self, app: ASGIApp, root: str, *, timeout: float = 30.0) -> None:
        async def as_browser(scope: Scope, receive: Receive, send: Send) -> None:
            browser = _BROWSER.get()
            if browser is not None:
                scope = {**scope, "client": browser}
            await app(scope, receive, send)

        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=as_browser, client=("127.0.0.1", 0)),
            base_url=root.rstrip("/"),
            timeout=timeout,
            follow_redirects=False,
        )

    async def get(
        self,
        session: WebSession | None,
        path: str,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """GET ``path`` with ``params`` as ``session``."""
        return await self._send("GET", session, path, params=params, headers=headers)

    async def post(
        self,
        session: WebSession | None,
        path: str,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        form: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST ``json`` (FHIR JSON) or ``form`` (URL-encoded) to ``path`` as ``session``."""
        return await self._send("POST", session, path, body=json, headers=headers, form=form)

    async def put(
        self,
        session: WebSession | None,
        path: str,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """PUT ``json`` (FHIR JSON) to ``path`` as ``session``."""
        return await self._send("PUT", session, path, body=json, headers=headers)

    async def _send(
        self,
        method: str,
        session: WebSession | None,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Answer:
        sent: dict[str, str] = {"accept": _ACCEPT}
        if session is not None:
            sent["authorization"] = f"Bearer {session.token}"
        content: bytes | None = None
        if body is not None:
            content = jsoncodec.encode(body)
            sent["content-type"] = "application/fhir+json"
        sent.update(headers or {})
        response = await self._client.request(
            method, path, params=params, content=content, data=form, headers=sent
        )
        return response.status_code, _decoded(response), response.headers

    async def aclose(self) -> None:
        await self._client.aclose()


def _decoded(response: httpx.Response) -> Any:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    # NDJSON (a download: application/fhir+ndjson, x-ndjson) stays bytes, even when its one
    # line alone would parse as JSON.
    if kind.endswith("json") and not kind.endswith("ndjson") and response.content:
        try:
            # Plain JSON (decimals as floats): pages show values, they never forward them.
            return json.loads(response.content)
        except ValueError:
            return response.content
    return response.content


def calling_for(scope: Scope) -> None:
    """Make the API calls of the current task carry ``scope``'s client address (module
    docstring); the web app calls it once per request, before any page code runs."""
    client = scope.get("client")
    if isinstance(client, tuple | list) and len(client) == 2:
        _BROWSER.set((str(client[0]), int(client[1])))
    else:
        _BROWSER.set(None)
