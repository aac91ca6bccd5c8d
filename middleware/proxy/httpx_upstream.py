"""The upstream seam over :class:`httpx.AsyncClient` (tests use it with ``respx``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from middleware.errors import UpstreamError, UpstreamTimeout
from middleware.proxy.upstream import UpstreamRequest

__all__ = ["HttpxUpstream"]


class HttpxResponse:
    """:class:`~middleware.proxy.upstream.UpstreamResponse` over an ``httpx.Response``."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw
        ]

    async def read(self, limit: int) -> bytes:
        chunks = [chunk async for chunk in self.iter_bytes(limit)]
        return b"".join(chunks)

    async def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        total = 0
        try:
            async for chunk in self._response.aiter_bytes():
                total += len(chunk)
                if total > limit:
                    raise UpstreamError("upstream response exceeds the configured size limit")
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("upstream server timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError("upstream server sent a broken response") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """:class:`~middleware.proxy.upstream.Upstream` over one pooled ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    @classmethod
    def from_transport(
        cls,
        transport: httpx.AsyncBaseTransport,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> HttpxUpstream:
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        return cls(httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False))

    async def send(self, request: UpstreamRequest) -> HttpxResponse:
        try:
            built = self._client.build_request(
                request.method, request.url, headers=request.headers, content=request.body or None
            )
            response = await self._client.send(built, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("upstream server timed out") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise UpstreamError("upstream server unreachable") from exc
        return HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()
