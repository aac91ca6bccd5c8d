"""An overall deadline for each upstream exchange, whatever client stands behind the seam.

The clients' ``read_timeout`` bounds each *wait* for data, not the exchange: an upstream that
drips a byte every second never trips a 3-second read timeout and holds the request (and its
slot in the pool) for as long as it likes. :class:`DeadlineUpstream` wraps any
:class:`~middleware.proxy.upstream.Upstream` and gives each exchange ``deadline`` seconds in
total, from :meth:`~DeadlineUpstream.send` until the last byte of the answer is read; past it,
the step in progress is cancelled and :class:`~middleware.errors.UpstreamTimeout` (504) is
raised. The answer's connection is closed then, never returned to the pool: the inner
response's ``aclose`` closes a connection whose answer did not arrive whole.

Only the waits for the upstream count: time the caller spends between reads (streaming to a
slow client) is not charged to the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from middleware.errors import UpstreamTimeout
from middleware.proxy.upstream import Upstream, UpstreamRequest, UpstreamResponse

__all__ = ["DeadlineUpstream"]

T = TypeVar("T")


class DeadlineResponse:
    """An :class:`~middleware.proxy.upstream.UpstreamResponse` whose reads end at ``at``
    (event-loop time)."""

    def __init__(self, inner: UpstreamResponse, at: float, deadline: float) -> None:
        self._inner = inner
        self._at = at
        self._deadline = deadline
        self.status = inner.status
        self.headers = inner.headers

    async def read(self, limit: int) -> bytes:
        return await _within(self._inner.read(limit), self._at, self._deadline)

    async def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner.iter_bytes(limit))
        while True:
            try:
                chunk = await _within(anext(chunks), self._at, self._deadline)
            except StopAsyncIteration:
                return
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class DeadlineUpstream:
    """``inner`` with at most ``deadline`` seconds per exchange (module docstring)."""

    def __init__(self, inner: Upstream, deadline: float) -> None:
        if not 0 < deadline < float("inf"):
            raise ValueError("the upstream deadline is a positive, finite number of seconds")
        self.inner = inner
        self.deadline = deadline

    async def send(self, request: UpstreamRequest) -> DeadlineResponse:
        at = asyncio.get_running_loop().time() + self.deadline
        response = await _within(self.inner.send(request), at, self.deadline)
        return DeadlineResponse(response, at, self.deadline)

    async def fetch(
        self, request: UpstreamRequest, limit: int
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """:meth:`send`, the whole answer read under ``limit`` and closed, as status, headers
        and body: the same deadline from the send to the last byte, the same
        :class:`~middleware.errors.UpstreamTimeout`, the answer closed however it ends, with
        one timer instead of one per step (nothing runs between the two, so nothing else
        can be charged to the upstream)."""
        at = asyncio.get_running_loop().time() + self.deadline
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout_at(at):
                response = await self.inner.send(request)
                raw = await response.read(limit)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"upstream server did not answer within {self.deadline:g} s"
            ) from exc
        finally:
            if response is not None:
                await response.aclose()
        return response.status, response.headers, raw

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _within(step: Awaitable[T], at: float, deadline: float) -> T:
    try:
        async with asyncio.timeout_at(at):
            return await step
    except TimeoutError as exc:
        raise UpstreamTimeout(f"upstream server did not answer within {deadline:g} s") from exc
