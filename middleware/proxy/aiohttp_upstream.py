"""The upstream seam over :class:`aiohttp.ClientSession` (``upstream_client = "aiohttp"``).

Measured on the 2-core machine (README, "Choosing the upstream client"): aiohttp's client costs
far less CPU per proxied request than httpx's default transport, and about twice the native
client's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from middleware.errors import UpstreamError, UpstreamTimeout
from middleware.proxy.upstream import UpstreamRequest

__all__ = ["AiohttpUpstream"]

_CHUNK = 64 * 1024


class AiohttpResponse:
    """:class:`~middleware.proxy.upstream.UpstreamResponse` over an ``aiohttp.ClientResponse``."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.raw_headers
        ]

    async def read(self, limit: int) -> bytes:
        length = self._response.content_length
        if length is not None:
            if length > limit:
                raise UpstreamError("upstream response exceeds the configured size limit")
            if self._response.headers.get("content-encoding") is None:
                # The common case: a declared length under the cap, read in one call.
                try:
                    return await self._response.read()
                except TimeoutError as exc:
                    raise UpstreamTimeout("upstream server timed out") from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamError("upstream server sent a broken response") from exc
        chunks = [chunk async for chunk in self.iter_bytes(limit)]
        return b"".join(chunks)

    async def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        total = 0
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise UpstreamError("upstream response exceeds the configured size limit")
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream server timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream server sent a broken response") from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpUpstream:
    """:class:`~middleware.proxy.upstream.Upstream` over one pooled ``aiohttp.ClientSession``.

    Create it inside the running event loop (the app does so on first use).
    """

    def __init__(self, *, pool_size: int, connect_timeout: float, read_timeout: float) -> None:
        connector = aiohttp.TCPConnector(
            limit=pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        try:
            response = await self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body or None,
                allow_redirects=False,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream server timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream server unreachable") from exc
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        await self._session.close()
