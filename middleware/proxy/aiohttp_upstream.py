"""The upstream seam over :class:`aiohttp.ClientSession` (``upstream_client = "aiohttp"``), an
option beside the default :mod:`~middleware.proxy.native_upstream`.

It keeps the contract of :mod:`~middleware.proxy.native_upstream`, clause by clause:

- One origin only (the base URL's scheme, host and port); the request checks of
  :mod:`~middleware.proxy.framing` (``ValueError`` before anything is sent); the URL's path and
  query sent as given (``yarl`` ``encoded=True``: no re-quoting, no dot-segment removal); the
  caller's framing and connection headers dropped; no headers of aiohttp's own but ``Host``,
  ``Accept-Encoding: gzip, deflate`` and the framing (no ``User-Agent``, ``Accept`` or a
  guessed ``Content-Type``).
- No redirect followed, no cookie kept (:class:`aiohttp.DummyCookieJar`: one user's
  ``Set-Cookie`` is never sent on another user's request), no proxy from the environment.
- gzip and deflate bodies decoded, their ``Content-Encoding`` and ``Content-Length`` dropped
  from :attr:`AiohttpResponse.headers`; any other coding refused. The size cap counts decoded
  bytes.
- At most ``pool_size`` connections; ``connect_timeout`` bounds the wait for one (free or new),
  ``read_timeout`` each wait for data (the overall deadline is
  :class:`~middleware.proxy.deadline.DeadlineUpstream`'s).
- A surprise refuses the answer (``UpstreamError``, 502) and the connection: the response
  framing of :func:`~middleware.proxy.framing.framing_problem`, a second answer already
  queued behind this one, and (:class:`_StrictHandler`) any answer that arrived while the
  connection was idle. A response not read whole is closed, never returned to the pool.

Measured on the 2-core machine (``docs/performance.md``): it costs more CPU per proxied
request than the native client (through real HTTP the enforced read 1,592-1,788 us of gateway
CPU against 1,000-1,092, which is why native is the default) and far less than httpx's default
transport.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from middleware.errors import SettingsError, UpstreamError, UpstreamTimeout
from middleware.proxy.framing import checked_fields, framing_problem, request_target
from middleware.proxy.upstream import UpstreamRequest

__all__ = ["AiohttpResponse", "AiohttpUpstream"]

_CHUNK = 64 * 1024
_DECODED = frozenset({"gzip", "deflate"})
_TOO_BIG = "upstream response exceeds the configured size limit"
_BROKEN = "upstream server sent a broken response"


class _Refused(aiohttp.ClientError):
    """An answer the upstream client refuses (its message says why)."""


class _StrictHandler(ResponseHandler):
    """aiohttp's protocol, refusing surprises where they are parsed, before aiohttp can return
    the connection to the pool (it does so as soon as a body is complete):

    - a second final answer to one request (pipelined junk, or bytes that arrive while the
      connection idles in the pool), which aiohttp would queue and hand to the next request
      sent on that connection (a desync);
    - framing :func:`~middleware.proxy.framing.framing_problem` refuses, and a content coding
      other than gzip or deflate (it would pass through still encoded).

    Such an answer is withdrawn if not taken yet (the request fails) and the connection closed.
    """

    _answers = 0

    def set_response_params(self, **kwargs: Any) -> None:
        self._answers = 0  # called once per request, before it is sent
        super().set_response_params(**kwargs)

    def feed_data(self, data: Any, size: int = 0) -> None:
        message = data[0]
        if getattr(message, "code", 200) >= 200:  # interim answers (1xx) precede the final one
            self._answers += 1
            problem = _problem(message) if self._answers == 1 else "a second answer"
            if problem is not None:
                self._buffer.clear()
                self.set_exception(_Refused(f"upstream server sent {problem}"))
                if self.transport is not None:
                    self.transport.close()
                return
        super().feed_data(data, size)


def _problem(message: Any) -> str | None:
    """Why the head of ``message`` (an aiohttp ``RawResponseMessage``) is refused, or ``None``."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.raw_headers]
    problem = framing_problem(headers)
    if problem is not None:
        return problem
    coding = message.headers.get("content-encoding", "identity").strip().lower()
    if coding not in _DECODED and coding != "identity":
        return f"an unsupported content coding {coding!r}"
    return None


class _StrictConnector(aiohttp.TCPConnector):
    """A :class:`aiohttp.TCPConnector` whose connections are :class:`_StrictHandler`\\ s."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        strict = functools.partial(_StrictHandler, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", strict)


class AiohttpResponse:
    """:class:`~middleware.proxy.upstream.UpstreamResponse` over an ``aiohttp.ClientResponse``."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.raw_headers
        ]
        coding = next((v.strip().lower() for k, v in headers if k == "content-encoding"), None)
        self._decoded = coding in _DECODED
        if self._decoded:
            dropped = ("content-encoding", "content-length")
            headers = [(name, value) for name, value in headers if name not in dropped]
        self.headers = headers

    async def read(self, limit: int) -> bytes:
        length = self._response.content_length
        if length is not None and not self._decoded:
            if length > limit:
                self._response.close()
                raise UpstreamError(_TOO_BIG)
            try:  # the common case: a declared length under the cap, read in one call
                return await self._response.read()
            except BaseException as exc:
                self._response.close()
                _translate(exc)
                raise
        chunks = [chunk async for chunk in self.iter_bytes(limit)]
        return b"".join(chunks)

    async def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        total = 0
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise UpstreamError(_TOO_BIG)
                yield chunk
        except BaseException as exc:
            self._response.close()
            _translate(exc)
            raise

    async def aclose(self) -> None:
        """Return the connection if the answer was read whole (aiohttp checks), else close it."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def _translate(exc: BaseException) -> None:
    """Raise the seam's error for an aiohttp one; return for anything else."""
    if isinstance(exc, TimeoutError):
        raise UpstreamTimeout("upstream server timed out") from exc
    if isinstance(exc, aiohttp.ClientError):
        raise UpstreamError(_BROKEN) from exc


class AiohttpUpstream:
    """:class:`~middleware.proxy.upstream.Upstream` over one pooled ``aiohttp.ClientSession``
    for the origin of ``base_url`` (module docstring). The session is made on first use, in
    the running event loop."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        resolver: AbstractResolver | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise SettingsError(f"upstream URL has an invalid port: {base_url!r}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"upstream URL must be absolute http(s): {base_url!r}")
        if parts.username is not None or parts.password is not None:
            raise SettingsError("upstream URL must not carry credentials")
        self._origin = f"{parts.scheme}://{parts.netloc}".lower()
        self._pool_size = pool_size
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._resolver = resolver  # tests point the upstream's name at a local server
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamError("upstream client is closed")
        if self._session is None:
            connector = _StrictConnector(
                limit=self._pool_size,
                ttl_dns_cache=300,
                resolver=self._resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Content-Type"),
            )
        return self._session

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        target = request_target(request, self._origin)
        headers, _ = checked_fields(request.headers)
        headers.append(("Accept-Encoding", "gzip, deflate"))
        session = self._open()
        try:
            response = await session.request(
                request.method,
                URL(self._origin + target, encoded=True),
                headers=headers,
                data=request.body or None,
                allow_redirects=False,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream server timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream server unreachable") from exc
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
