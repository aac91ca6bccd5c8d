"""The upstream seam over a minimal HTTP/1.1 client on asyncio transports and ``httptools``,
the default (``upstream_client = "native"``).

Hand-written by measurement, against the rule of a well-kept library first: the parsing is
llhttp's (Node's parser, through httptools), the rest is the pool and framing below. On the
2-core machine (``docs/performance.md``, "Upstream clients"), through real HTTP the enforced
read cost the gateway 1,000-1,092 us of CPU with this client and 1,592-1,788 with aiohttp's
(:mod:`~middleware.proxy.aiohttp_upstream`, kept as an option under the same contract), the
upstream round trip and answer parse 155-195 us against 500-590; ``bench.enforced`` at 16
connections, six alternating rounds: median 1,128 against 1,432 us.

One origin only: the base URL's scheme, host and port (``https`` verifies with
:func:`ssl.create_default_context`); a URL on another origin is a programming error,
``ValueError``. The contract, clause by clause:

- Request (RFC 9112 §3, §6.2), one write: the request line with the URL's path and query as
  given, ``Host``, the caller's headers, ``Content-Length`` for a body or a method that takes
  one, ``Accept-Encoding: gzip``, ``Connection: keep-alive``. The caller's framing and
  connection headers are dropped, so never ``Transfer-Encoding``. A target outside visible
  ASCII (CR, LF, space, '#', non-ASCII), a method or header name that is not a token, or a
  value holding a control character (RFC 9110 §5.1, §5.5, §5.6.2) raises ``ValueError``
  before anything is sent: no request smuggling.
- Response framing is llhttp's (RFC 9112 §6.3): Content-Length, chunked (§7.1), until close;
  no body after HEAD, 1xx, 204, 304; framing two parsers could read differently is refused
  (:func:`~middleware.proxy.framing.framing_problem`). gzip and deflate bodies are decoded
  (RFC 9110 §8.4.1), their ``Content-Encoding`` and ``Content-Length`` dropped from
  :attr:`headers`; other codings are refused. The size cap counts decoded bytes.
- Persistence (RFC 9112 §9.3, §9.6): at most ``pool_size`` connections; idle ones reused last
  in, first out; a request waits up to ``connect_timeout`` for one when all are busy. A
  connection goes back only once its answer arrived whole and neither side asked to close;
  :meth:`NativeResponse.aclose` before that closes it. Any byte after the answer (a second,
  pipelined or smuggled response, a body after HEAD, junk) or while no request is in flight
  is a surprise: the answer becomes ``UpstreamError`` if not yet read whole, and the
  connection is closed, never reused (RFC 9112 §9.3, §11.2).
- Retry (RFC 9112 §9.3.1): when a *reused* connection closes before any byte of the answer
  (the server dropped it while idle), an idempotent request (RFC 9110 §9.2.2: GET, HEAD, PUT,
  DELETE, OPTIONS) is sent once more, after closing the connections that idled longer. POST
  and PATCH never are.
- Errors: connect timeout, or ``read_timeout`` passing on any one wait for data (not in
  total) -> ``UpstreamTimeout``; refused, reset, closed mid-answer, unparsable, a 101 (no
  upgrade is ever asked), over the cap -> ``UpstreamError``. The connection involved is closed.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from middleware.errors import SettingsError, UpstreamError, UpstreamTimeout
from middleware.proxy.framing import checked_fields, framing_problem, request_target
from middleware.proxy.upstream import UpstreamRequest

__all__ = ["NativeResponse", "NativeUpstream"]

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_TRAILER = "Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_HIGH_WATER = 256 * 1024
_TOO_BIG = "upstream response exceeds the configured size limit"


class _Unanswered(UpstreamError):
    """The connection closed before any byte of the answer: safe to retry if idempotent."""


class _Surprise(UpstreamError):
    """The upstream broke HTTP/1.1's one-answer-per-request framing: the connection is done."""


def _expire(future: asyncio.Future[Any], message: str) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeout(message))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: llhttp's callbacks fill in the current response."""

    def __init__(self, pool: NativeUpstream) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.counted = self.lost = self.in_flight = self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.start(head=False)

    def start(self, *, head: bool) -> None:
        """Forget the previous response; the next one answers a HEAD when ``head``."""
        self.head = head
        self.status = 0
        self.raw: list[tuple[bytes, bytes]] = []
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.answered = self.headers_done = self.complete = self.keep_alive = False
        self.informational = False
        self.error: UpstreamError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_flight:  # the server spoke out of turn: never trust this connection
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 (RFC 9110 §15.2.2): this client never asks to upgrade, so the connection
            # now speaks something else. Not an HttpParserError: caught here, not by asyncio.
            self.error = self.error or _Surprise("upstream server switched protocols unasked")
            self.close()
            self._wake()
        except (httptools.HttpParserError, UpstreamError):
            self.error = self.error or UpstreamError("upstream server sent a broken response")
            self.close()
            self._wake()

    def _surprise(self, message: str) -> None:
        """Stop parsing: llhttp ends ``feed_data`` with the error this raises."""
        self.error = self.error or _Surprise(message)
        raise self.error

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request (RFC 9112 §9.3)
            self._surprise("upstream server sent bytes after a complete response")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.in_flight and not self.complete and self.error is None:
            names = {name for name, _ in self.headers}
            if self.headers_done and not names & {"content-length", "transfer-encoding"}:
                # RFC 9112 §6.3 item 8: a body without framing ends when the connection does
                self.complete = True
            elif not self.answered:
                self.error = _Unanswered("upstream server closed the connection unanswered")
            else:
                self.error = UpstreamError("upstream server closed the connection mid-response")
        self._wake()
        self.pool._forget(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            self._surprise("upstream server sent bytes after a complete response")
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            self._surprise("upstream server sent bytes after a complete response")
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer: the final one follows (RFC 9110 §15.2)
            self.informational = True
            self.raw = []
            return
        self.status = status
        self.headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self.raw]
        problem = framing_problem(self.headers)
        if problem is not None:
            self._surprise(f"upstream server sent {problem}")
        self.headers_done = True
        if self.head:  # llhttp cannot be told; this parser is replaced before the next request
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body after HEAD's head, or after the answer ended
            self._surprise("upstream server sent bytes after a complete response")
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
        elif not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
            self._wake()

    def take(self) -> bytes:
        """The buffered body bytes, and reading resumed."""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def wait(self) -> None:
        """Until the parser reports progress; ``UpstreamTimeout`` after ``read_timeout``."""
        self.waiter = future = self.loop.create_future()
        timer = self.loop.call_later(
            self.pool.read_timeout, _expire, future, "upstream server timed out"
        )
        try:
            await future
        finally:
            timer.cancel()
            self.waiter = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def exchange(self, data: bytes, *, head: bool) -> None:
        """Send one request and wait for the head of its response."""
        self.start(head=head)
        self.in_flight = True
        if self.lost or self.transport is None or self.transport.is_closing():
            raise _Unanswered("upstream connection closed before the request was sent")
        self.transport.write(data)
        while self.error is None and not self.headers_done:
            await self.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.pool._forget(self)


class NativeResponse:
    """:class:`~middleware.proxy.upstream.UpstreamResponse` over a pooled connection."""

    def __init__(self, conn: _Connection) -> None:
        self.status = conn.status
        self._conn: _Connection | None = conn
        self._decoder: zlib._Decompress | None = None
        self._length: int | None = None
        self._total = 0
        self._fed = False  # a compressed body byte arrived: it must then end properly
        coding = length = None
        for name, value in conn.headers:
            if name == "content-encoding":
                coding = value.strip().lower()
            elif name == "content-length" and value.isdigit():
                length = int(value)
        if coding is None or coding == "identity":
            self.headers = conn.headers
            self._length = length
            return
        if coding not in _CODINGS:
            raise UpstreamError(f"upstream server used an unsupported content coding {coding!r}")
        self._decoder = zlib.decompressobj(_CODINGS[coding])
        dropped = ("content-encoding", "content-length")
        self.headers = [(name, value) for name, value in conn.headers if name not in dropped]

    async def read(self, limit: int) -> bytes:
        conn = self._conn
        if conn is not None and conn.error is not None:
            self._abort()
            raise conn.error
        if conn is not None and conn.complete and self._decoder is None:  # the common case
            body = conn.take()
            if len(body) > limit:
                self._abort()
                raise UpstreamError(_TOO_BIG)
            self._release()
            return body
        if self._length is not None and self._length > limit:
            self._abort()
            raise UpstreamError(_TOO_BIG)
        chunks = []
        while (chunk := await self._next(limit)) is not None:
            chunks.append(chunk)
        return b"".join(chunks)

    async def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        while (chunk := await self._next(limit)) is not None:
            yield chunk

    async def _next(self, limit: int) -> bytes | None:
        """The next decoded chunk, or ``None`` once the body is complete."""
        conn = self._conn
        try:
            while conn is not None:
                if conn.error is not None:  # even with bytes buffered: they are suspect
                    raise conn.error
                if conn.chunks:
                    data = self._decode(conn.take(), limit)
                    if data:
                        return data
                elif conn.complete:
                    if self._fed and self._decoder is not None and not self._decoder.eof:
                        raise UpstreamError("upstream server sent a truncated compressed body")
                    self._release()
                    return None
                else:
                    await conn.wait()
            return None
        except BaseException:
            self._abort()
            raise

    def _decode(self, raw: bytes, limit: int) -> bytes:
        data = raw
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(raw, max(limit - self._total, 0) + 1)
            except zlib.error as exc:
                raise UpstreamError("upstream server sent a broken compressed body") from exc
            if self._decoder.unconsumed_tail:
                raise UpstreamError(_TOO_BIG)
            self._fed = True
        self._total += len(data)
        if self._total > limit:
            raise UpstreamError(_TOO_BIG)
        return data

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool._release(conn)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Return the connection if the response was received whole, else close it."""
        if self._conn is not None and self._conn.complete and self._conn.error is None:
            self._conn.take()
            self._release()
        self._abort()


class NativeUpstream:
    """:class:`~middleware.proxy.upstream.Upstream` for the origin of ``base_url``.

    ``address``, when given, is the ``(host, port)`` connected to instead of the URL's (tests
    serve the upstream's name from a local server, as ``AiohttpUpstream``'s ``resolver`` does);
    ``Host``, the TLS server name and the one-origin check still follow ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        address: tuple[str, int] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        try:
            port = parts.port
        except ValueError as exc:
            raise SettingsError(f"upstream URL has an invalid port: {base_url!r}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"upstream URL must be absolute http(s): {base_url!r}")
        if parts.username is not None or parts.password is not None:
            raise SettingsError("upstream URL must not carry credentials")
        https = parts.scheme == "https"
        self._host, self._port = parts.hostname, port or (443 if https else 80)
        self._address = address or (self._host, self._port)
        self._ssl = ssl.create_default_context() if https else None
        self._origin = f"{parts.scheme}://{parts.netloc}".lower()
        self._host_line = f"\r\nHost: {parts.netloc}\r\n"
        self._size = pool_size
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._conns: set[_Connection] = set()
        self._open = 0  # connections open or being opened, at most pool_size
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    def encode(self, request: UpstreamRequest) -> bytes:
        """The request's bytes on the wire; ``ValueError`` for anything unsafe to send."""
        target = request_target(request, self._origin)
        _, fields = checked_fields(request.headers)
        if request.body or request.method in _BODY_METHODS:
            fields += f"Content-Length: {len(request.body)}\r\n"
        head = f"{request.method} {target} HTTP/1.1{self._host_line}{fields}{_TRAILER}"
        return head.encode("latin-1") + request.body

    async def send(self, request: UpstreamRequest) -> NativeResponse:
        data = self.encode(request)
        retry = request.method in _IDEMPOTENT
        while True:
            conn, reused = await self._acquire()
            try:
                await conn.exchange(data, head=request.method == "HEAD")
                return NativeResponse(conn)
            except _Unanswered as exc:
                conn.close()
                if not (reused and retry):
                    raise UpstreamError("upstream server closed the connection") from exc
            except BaseException:
                conn.close()
                raise
            retry = False
            for idle in self._idle[:]:  # idle longer than the stale one: likely stale as well
                idle.close()

    async def _acquire(self) -> tuple[_Connection, bool]:
        """The last idled connection, a new one, or one another request returns; and whether
        it served a request before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        while not self._closed:
            while self._idle:
                conn = self._idle.pop()
                if not conn.lost and conn.transport is not None and not conn.transport.is_closing():
                    return conn, True
                conn.close()
            if self._open < self._size:
                return await self._connect(), False
            future: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(future)
            timer = loop.call_at(
                deadline, _expire, future, "no upstream connection became free in time"
            )
            try:
                got = await future
            except BaseException:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._hand_on(future.result())
                elif future in self._waiters:
                    self._waiters.remove(future)
                raise
            finally:
                timer.cancel()
            if got is not None:
                return got, True
        raise UpstreamError("upstream client is closed")

    async def _connect(self) -> _Connection:
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self),
                    *self._address,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except BaseException as exc:
            self._open -= 1
            self._hand_on(None)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout("upstream server did not accept a connection") from exc
            if isinstance(exc, OSError):
                raise UpstreamError("upstream server unreachable") from exc
            raise
        conn.counted = True
        self._conns.add(conn)
        if conn.lost:
            self._forget(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        """Back to the pool after a complete response, unless it must close."""
        conn.in_flight = False
        closing = conn.lost or conn.transport is None or conn.transport.is_closing()
        if self._closed or not conn.keep_alive or closing:
            conn.close()
        else:
            self._hand_on(conn)

    def _hand_on(self, conn: _Connection | None) -> None:
        """Give ``conn`` (or, when ``None``, a free slot) to the first waiter, else idle it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        """``conn`` closed: its slot is free (once, however often this is called)."""
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._conns.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._hand_on(None)

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamError("upstream client is closed"))
        self._waiters.clear()
        await asyncio.sleep(0)  # let the transports report connection_lost
