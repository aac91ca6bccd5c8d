"""The app and leak suites' upstream mocks served over real HTTP, to one of the gateway's
HTTP/1.1 clients (``native``, the default, or ``aiohttp``), instead of through
``httpx.MockTransport``.

:class:`ServedUpstream` is an :class:`~middleware.proxy.upstream.Upstream` for ``create_app``:
on first use it starts an HTTP/1.1 server on 127.0.0.1 (aiohttp's low-level server) that turns
each request it receives into an ``httpx.Request`` for the same URL (the ``Host`` the gateway
sent, so the upstream's own name and port) and answers with whatever ``handler`` (a respx
router's ``async_handler``) returns. The gateway's client keeps the upstream's URL (its
``Host``, its one-origin check) and is only pointed at that server: :class:`NativeUpstream`
through its ``address``, :class:`AiohttpUpstream` through a resolver that maps the upstream's
name to it. So a test's routes, recorded calls and assertions stay as they are, while the bytes
cross a socket, a pool and the client's parser.

A handler raising ``httpx.TimeoutException`` leaves the request unanswered (the client's read
timeout ends it, a 504); any other exception closes the connection unanswered (a 502), as an
upstream that fails would. Bodies are sent decoded, without ``Content-Encoding``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Literal

import httpx
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from middleware.proxy.aiohttp_upstream import AiohttpUpstream
from middleware.proxy.native_upstream import NativeUpstream
from middleware.proxy.upstream import Upstream, UpstreamRequest, UpstreamResponse

__all__ = ["Client", "ServedUpstream"]

#: The gateway clients a served upstream can be reached with.
Client = Literal["native", "aiohttp"]

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
_NOT_SENT = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)


class _Local(AbstractResolver):
    """Every name resolves to 127.0.0.1 and the served port."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=self.port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


class ServedUpstream:
    """``handler`` behind a local HTTP server, reached by the ``client`` kind as ``base_url``
    (module docstring), with the client's pool size and timeouts."""

    def __init__(
        self,
        handler: Handler,
        base_url: str,
        *,
        client: Client,
        pool_size: int = 100,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self._handler = handler
        self._base_url = base_url
        self._kind = client
        self._pool_size = pool_size
        # A handler's httpx.TimeoutException leaves its request unanswered: at most 2 s until
        # the client's read timeout turns it into the 504 the mock transport would give.
        self._timeouts = (connect_timeout, min(read_timeout, 2.0))
        self._client: Upstream | None = None
        self._server: asyncio.Server | None = None
        self._low_level: web.Server | None = None
        self._started = asyncio.Lock()
        self._closing = asyncio.Event()

    async def _start(self) -> Upstream:
        async with self._started:
            if self._client is None:
                self._low_level = web.Server(self._serve, access_log=None)
                loop = asyncio.get_running_loop()
                self._server = await loop.create_server(self._low_level, "127.0.0.1", 0)
                port: int = self._server.sockets[0].getsockname()[1]
                self._client = self._make_client(port)
            return self._client

    def _make_client(self, port: int) -> Upstream:
        connect, read = self._timeouts
        if self._kind == "native":
            return NativeUpstream(
                self._base_url,
                pool_size=self._pool_size,
                connect_timeout=connect,
                read_timeout=read,
                address=("127.0.0.1", port),
            )
        return AiohttpUpstream(
            self._base_url,
            pool_size=self._pool_size,
            connect_timeout=connect,
            read_timeout=read,
            resolver=_Local(port),
        )

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        forwarded = httpx.Request(
            request.method,
            f"http://{request.host}{request.raw_path}",
            headers=headers,
            content=body,
        )
        try:
            answer = await self._handler(forwarded)
            content = await answer.aread()
        except httpx.TimeoutException:
            await self._closing.wait()  # never answered: the gateway gives up first
            return web.Response(status=504)
        except Exception:  # noqa: BLE001 - an upstream that fails ends the connection unanswered
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)
        kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _NOT_SENT]
        return web.Response(status=answer.status_code, body=content, headers=kept)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        client = self._client or await self._start()
        return await client.send(request)

    async def aclose(self) -> None:
        """Close the client and the server (idempotent)."""
        self._closing.set()
        client, self._client = self._client, None
        server, self._server = self._server, None
        if client is not None:
            await client.aclose()
        if server is not None:
            server.close()
            assert self._low_level is not None
            await self._low_level.shutdown(1.0)
            await server.wait_closed()
