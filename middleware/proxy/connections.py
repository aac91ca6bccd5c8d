"""The HTTP server's connections: a deadline for request headers and a cap on connections.

uvicorn bounds idle keep-alive time (``timeout_keep_alive``) but not the time a client takes
to send its request headers: a client that opens a connection and sends a header byte now and
then ("slowloris") holds the connection, and its file descriptor, for ever. This module
builds the httptools protocol ``consentry serve`` runs with two additions:

- **header deadline**: a request's headers must be complete within ``header_timeout``
  seconds of the connection opening, or of the previous response on it; otherwise the
  connection is closed (with a ``408`` when part of a request had arrived, RFC 9110 §15.5.9).
  The body has its own deadline in the ASGI edge (``body_timeout``, :mod:`middleware.asgi`).
- **connection cap**: at most ``max_connections`` open at once per process. A connection
  over the cap evicts the oldest connection still waiting for its headers (an idle keep-alive
  connection or a slow sender: a client that sends its request promptly is rarely the
  oldest waiting), else it is closed at once. Unlike uvicorn's ``limit_concurrency`` (a 503
  for the newcomer), a flood of slow connections cannot lock prompt clients out.

The I/O here is uvicorn's; the only state is the ordered set of connections waiting for
headers, one per protocol class (one per server process).
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["FD_RESERVE", "connection_cap", "guarded_protocol"]

#: File descriptors kept for everything but client connections (stores, upstream pool, logs).
FD_RESERVE: Final = 256

_TIMED_OUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


def connection_cap(configured: int) -> int:
    """``configured``, lowered to what the process's open-file limit leaves once
    :data:`FD_RESERVE` descriptors are kept: past that limit ``accept`` fails and the server
    stops accepting anyone for a while, which the cap is there to prevent."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_RESERVE))


def guarded_protocol(header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """An httptools protocol class (pass it as uvicorn's ``http``) with a header deadline of
    ``header_timeout`` seconds and at most ``max_connections`` connections (module
    docstring)."""
    if not header_timeout > 0 or max_connections < 1:
        raise ValueError("header_timeout and max_connections must be positive")
    waiting: OrderedDict[GuardedProtocol, None] = OrderedDict()

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _partial = False  # bytes of a request arrived, its headers are not complete

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections and not _evict_one():
                transport.close()
                return
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._partial = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._partial = False
            self._stop_waiting()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # a queued request already has its headers
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._await_headers()

        def _await_headers(self) -> None:
            self._stop_waiting()
            self._deadline = self.loop.call_later(header_timeout, self._headers_too_slow)
            waiting[self] = None

        def _stop_waiting(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)

        def _headers_too_slow(self) -> None:
            self._deadline = None
            self.close_waiting()

        def close_waiting(self) -> None:
            """Close this connection, which is waiting for request headers."""
            self._stop_waiting()
            if not self.transport.is_closing():
                if self._partial:
                    self.transport.write(_TIMED_OUT)
                self.transport.close()

    def _evict_one() -> bool:
        """Close the connection that has waited longest for its headers; False if none is
        waiting (every connection is busy with a request)."""
        if not waiting:
            return False
        oldest, _ = waiting.popitem(last=False)
        oldest.close_waiting()
        return True

    return GuardedProtocol
