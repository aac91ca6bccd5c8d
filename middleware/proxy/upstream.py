"""The upstream seam: what the forwarder needs from an HTTP client, and nothing more.

Three implementations stand behind :class:`Upstream`: :mod:`~middleware.proxy.native_upstream`
(the default: HTTP/1.1 on asyncio with httptools' parser, chosen for its lower CPU per request,
see docs/performance.md), :mod:`~middleware.proxy.aiohttp_upstream` (both keep one contract,
tested on both, and refuse every response surprise), and
:mod:`~middleware.proxy.httpx_upstream` (for ``respx`` and ``httpx.MockTransport`` in tests,
and for deployments that prefer httpx). Each translates its library's exceptions into
:mod:`middleware.errors` in exactly one place:

- connect or read timeout -> :class:`~middleware.errors.UpstreamTimeout` (504)
- refused, reset, DNS failure, broken response -> :class:`~middleware.errors.UpstreamError` (502)
- a response body over the cap -> :class:`~middleware.errors.UpstreamError` (502)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Upstream", "UpstreamRequest", "UpstreamResponse"]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request to the upstream: absolute URL, header pairs (names lower case), whole body."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes = b""


class UpstreamResponse(Protocol):
    """An upstream answer whose body has not been read yet.

    ``headers`` holds lower-case names, in order, repeated names repeated. The body is
    decoded from any ``Content-Encoding`` the client negotiated. Exactly one of
    :meth:`read` or :meth:`iter_bytes` is used, then :meth:`aclose`.
    """

    status: int
    headers: list[tuple[str, str]]

    async def read(self, limit: int) -> bytes:
        """The whole body; raises ``UpstreamError`` once it exceeds ``limit`` bytes."""
        ...

    def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        """The body in chunks; raises ``UpstreamError`` once the total exceeds ``limit``."""
        ...

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        ...


class Upstream(Protocol):
    """A pooled client for one upstream FHIR server."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; raises ``UpstreamTimeout`` or ``UpstreamError``, never a library
        exception."""
        ...

    async def aclose(self) -> None:
        """Close the pool."""
        ...
