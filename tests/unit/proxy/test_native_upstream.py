"""NativeUpstream against a scripted raw HTTP/1.1 server on 127.0.0.1, and once against the
real upstream FHIR server (compared byte for byte with httpx).

The scripted server reads each request (head, then a Content-Length body) and writes whatever
the test's script returns, byte for byte; ``None`` closes the connection unanswered. It closes
after a reply whose head carries the test marker ``X-Close: 1``, or says ``Connection: close``
without the marker ``X-Keep-Open: 1``.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from middleware.app import create_app
from middleware.errors import SettingsError, UpstreamError, UpstreamTimeout
from middleware.ledger.signing import SigningKey
from middleware.proxy.deadline import DeadlineUpstream
from middleware.proxy.native_upstream import NativeUpstream
from middleware.proxy.upstream import UpstreamRequest
from middleware.settings import load_settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.support import UpstreamServer, free_port


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server read it: connection number, its index there, bytes."""

    conn: int
    index: int
    head: bytes
    body: bytes
    writer: asyncio.StreamWriter  # for scripts that answer in several writes


Script = Callable[[Seen], Awaitable[bytes | None]]


class RawServer:
    """The scripted server (see the module docstring); counts connections, open and total."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number, self.connections = self.connections, self.connections + 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            for index in range(1_000_000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                seen = Seen(number, index, head, await reader.readexactly(length), writer)
                self.seen.append(seen)
                reply = await self.script(seen)
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
                reply_head = reply.split(b"\r\n\r\n")[0].lower()
                if b"x-close: 1" in reply_head or (
                    b"connection: close" in reply_head and b"x-keep-open: 1" not in reply_head
                ):
                    return
        finally:
            self.open -= 1
            writer.close()
            with suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


def response(
    body: bytes = b"",
    *,
    status: str = "200 OK",
    headers: tuple[str, ...] = ("Content-Type: application/fhir+json",),
    length: int | None = None,
) -> bytes:
    """A Content-Length framed answer (``length`` overrides the declared size)."""
    declared = len(body) if length is None else length
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {declared}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*chunks: bytes, headers: tuple[str, ...] = ()) -> bytes:
    """A chunked answer (RFC 9112 §7.1)."""
    head = "\r\n".join(["HTTP/1.1 200 OK", "Transfer-Encoding: chunked", *headers])
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    return head.encode() + b"\r\n\r\n" + body


def constant(reply: bytes | None) -> Script:
    async def script(_seen: Seen) -> bytes | None:
        return reply

    return script


@asynccontextmanager
async def client(
    server: RawServer | str, *, pool_size: int = 4, read_timeout: float = 2.0, **kw: float
) -> AsyncIterator[NativeUpstream]:
    base = server if isinstance(server, str) else server.url + "/fhir"
    upstream = NativeUpstream(
        base,
        pool_size=pool_size,
        connect_timeout=kw.get("connect_timeout", 2.0),
        read_timeout=read_timeout,
    )
    try:
        yield upstream
    finally:
        await upstream.aclose()


def get(server: RawServer, path: str = "/fhir/Patient/1", **kw: Any) -> UpstreamRequest:
    return UpstreamRequest(kw.pop("method", "GET"), server.url + path, kw.pop("headers", []), **kw)


async def fetch(upstream: NativeUpstream, request: UpstreamRequest, limit: int = 1 << 20) -> bytes:
    response = await upstream.send(request)
    try:
        return await response.read(limit)
    finally:
        await response.aclose()


# --- framing ----------------------------------------------------------------------------------


async def test_content_length_body_headers_in_order_lower_case() -> None:
    reply = response(b'{"a":1}', headers=("Content-Type: application/json", 'ETag: W/"1"'))
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        assert response_.status == 200
        assert response_.headers == [
            ("content-type", "application/json"),
            ("etag", 'W/"1"'),
            ("content-length", "7"),
        ]
        assert await response_.read(100) == b'{"a":1}'
        await response_.aclose()


async def test_request_bytes_are_exactly_what_the_caller_asked_for() -> None:
    async with RawServer(constant(response())) as server, client(server) as upstream:
        headers = [("accept", "application/fhir+json"), ("x-request-id", "r1")]
        await fetch(upstream, get(server, "/fhir/Patient?name=a%20b&_count=2", headers=headers))
        await fetch(upstream, get(server, "/fhir/Patient", method="POST", body=b"{}"))
    port = server.url.rsplit(":", 1)[1]
    assert server.seen[0].head == (
        b"GET /fhir/Patient?name=a%20b&_count=2 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + port.encode() + b"\r\n"
        b"accept: application/fhir+json\r\nx-request-id: r1\r\n"
        b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
    )
    assert b"Content-Length: 2\r\n" in server.seen[1].head
    assert server.seen[1].body == b"{}"


async def test_chunked_body_streamed() -> None:
    reply = chunked(b"abc", b"def" * 1000, b"g")
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        body = b"".join([chunk async for chunk in response_.iter_bytes(1 << 20)])
        await response_.aclose()
        assert body == b"abc" + b"def" * 1000 + b"g"
        assert await fetch(upstream, get(server)) == body  # and the connection was reused
    assert server.connections == 1


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
    ],
    ids=["gzip", "deflate"],
)
async def test_compressed_body_decoded_and_its_headers_dropped(
    coding: str, compress: Callable[[bytes], bytes]
) -> None:
    plain = b'{"resourceType":"Bundle"}' * 100
    reply = response(compress(plain), headers=(f"Content-Encoding: {coding}", "ETag: x"))
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        assert response_.headers == [("etag", "x")]
        assert await response_.read(len(plain)) == plain
        await response_.aclose()


async def test_compressed_body_over_the_limit_after_decoding() -> None:
    reply = response(gzip.compress(b"x" * 100_000), headers=("Content-Encoding: gzip",))
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        with pytest.raises(UpstreamError):
            await fetch(upstream, get(server), limit=99_999)


async def test_unknown_content_coding_refused() -> None:
    reply = response(b"xx", headers=("Content-Encoding: br",))
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        with pytest.raises(UpstreamError):
            await upstream.send(get(server))


@pytest.mark.parametrize(
    ("method", "reply"),
    [
        ("GET", response(status="204 No Content", headers=())),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        ("HEAD", response(status="200 OK", length=1234)),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["204", "304", "head-content-length", "head-chunked"],
)
async def test_answers_without_a_body_and_the_connection_kept(method: str, reply: bytes) -> None:
    async def script(seen: Seen) -> bytes:
        return reply if seen.index == 0 else response(b"next")

    async with RawServer(script) as server, client(server) as upstream:
        assert await fetch(upstream, get(server, method=method)) == b""
        assert await fetch(upstream, get(server)) == b"next"
    assert server.connections == 1


async def test_interim_answer_skipped() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"done")
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        assert await fetch(upstream, get(server)) == b"done"


async def test_body_ended_by_close() -> None:
    reply = b"HTTP/1.1 200 OK\r\nX-Close: 1\r\n\r\nuntil the end"
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        assert await fetch(upstream, get(server)) == b"until the end"


# --- persistence ------------------------------------------------------------------------------


async def test_keep_alive_one_connection_serves_several_requests() -> None:
    async with RawServer(constant(response(b"ok"))) as server, client(server) as upstream:
        for _ in range(5):
            assert await fetch(upstream, get(server)) == b"ok"
    assert server.connections == 1
    assert [s.index for s in server.seen] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "reply",
    [
        response(b"ok", headers=("Connection: close", "X-Keep-Open: 1")),
        response(b"ok", status="200 OK", headers=("X-Keep-Open: 1",)).replace(b"1.1", b"1.0", 1),
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_the_server_asked_to_close_not_reused(reply: bytes) -> None:
    """The server keeps its side open: only the client's reading of the answer closes it."""
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        for _ in range(3):
            assert await fetch(upstream, get(server)) == b"ok"
    assert server.connections == 3


async def test_aclose_before_the_body_is_complete_closes_the_connection() -> None:
    async def script(seen: Seen) -> bytes:
        return response(b"x" * 10, length=20) if seen.conn == 0 else response(b"ok")

    async with RawServer(script) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        await response_.aclose()
        assert await fetch(upstream, get(server)) == b"ok"
    assert server.connections == 2


async def test_aclose_after_a_complete_unread_body_keeps_the_connection() -> None:
    async with RawServer(constant(response(b"unread"))) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        await asyncio.sleep(0.05)  # the whole body arrives
        await response_.aclose()
        assert await fetch(upstream, get(server)) == b"unread"
    assert server.connections == 1


async def test_pool_limit_respected_under_concurrency() -> None:
    async def script(seen: Seen) -> bytes:
        await asyncio.sleep(0.005)
        return response(seen.head.split(b" ")[1])

    async with RawServer(script) as server, client(server, pool_size=4) as upstream:
        paths = [f"/fhir/Patient/{n}" for n in range(50)]
        bodies = await asyncio.gather(*(fetch(upstream, get(server, p)) for p in paths))
    assert bodies == [p.encode() for p in paths]
    assert server.max_open <= 4
    assert server.connections <= 4


async def test_waiting_for_a_free_connection_times_out() -> None:
    async with (
        RawServer(constant(response(b"x" * 10, length=20))) as server,
        client(server, pool_size=1, connect_timeout=0.2) as upstream,
    ):
        held = await upstream.send(get(server))
        with pytest.raises(UpstreamTimeout):
            await upstream.send(get(server))
        await held.aclose()


# --- stale connections and retries ----------------------------------------------------------


async def test_stale_reused_connection_get_retried_on_a_fresh_one() -> None:
    async def script(seen: Seen) -> bytes | None:
        return None if (seen.conn, seen.index) == (0, 1) else response(b"ok")

    async with RawServer(script) as server, client(server) as upstream:
        assert await fetch(upstream, get(server)) == b"ok"
        assert await fetch(upstream, get(server)) == b"ok"
    assert server.connections == 2


async def test_all_idle_connections_stale_get_still_answered() -> None:
    """The server restarted: every idle connection is dead; one retry still suffices."""

    async def script(seen: Seen) -> bytes | None:
        if seen.index == 0:
            await asyncio.sleep(0.05)  # keeps both first requests in flight: two connections
            return response(b"ok")
        return None

    async with RawServer(script) as server, client(server) as upstream:
        await asyncio.gather(fetch(upstream, get(server)), fetch(upstream, get(server)))
        assert await fetch(upstream, get(server)) == b"ok"
    assert server.connections == 3


async def test_stale_reused_connection_post_not_retried() -> None:
    async def script(seen: Seen) -> bytes | None:
        return None if (seen.conn, seen.index) == (0, 1) else response(b"ok")

    async with RawServer(script) as server, client(server) as upstream:
        assert await fetch(upstream, get(server)) == b"ok"
        with pytest.raises(UpstreamError):
            await fetch(upstream, get(server, method="POST", body=b"{}"))
    assert len(server.seen) == 2


async def test_idle_connection_closed_by_the_server_is_not_used() -> None:
    reply = response(b"ok", headers=("X-Close: 1",))  # closed right after, keep-alive framing
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        assert await fetch(upstream, get(server)) == b"ok"
        await asyncio.sleep(0.05)  # the client sees the EOF
        assert await fetch(upstream, get(server, method="POST", body=b"{}")) == b"ok"
    assert server.connections == 2


# --- failures ---------------------------------------------------------------------------------


async def test_server_closes_mid_body() -> None:
    reply = response(b"x" * 10, length=100, headers=("X-Close: 1",))
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        with pytest.raises(UpstreamError):
            await fetch(upstream, get(server))


async def test_server_closes_mid_chunked_body_streamed() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Close: 1\r\n\r\n3\r\nabc\r\n"
    async with RawServer(constant(reply)) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        with pytest.raises(UpstreamError):
            async for _ in response_.iter_bytes(100):
                pass
        await response_.aclose()


async def test_broken_response_is_an_upstream_error() -> None:
    async with RawServer(constant(b"NOT HTTP AT ALL\r\n\r\n")) as server, client(server) as up:
        with pytest.raises(UpstreamError):
            await fetch(up, get(server))


async def test_switching_protocols_is_a_surprise_not_a_logged_traceback() -> None:
    """A 101 (RFC 9110 §15.2.2) to a request that asked no upgrade: llhttp raises
    HttpParserUpgrade, which is no HttpParserError; it escaped data_received, so asyncio
    logged a traceback. Now the client's 502 (UpstreamError), nothing handed to the loop's
    exception handler, and the connection is not reused."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx"
    )

    async def script(seen: Seen) -> bytes:
        return switch if seen.conn == 0 else response(b"ok")

    loop = asyncio.get_running_loop()
    handled: list[object] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context.get("exception")))
    try:
        async with RawServer(script) as server, client(server) as upstream:
            with pytest.raises(UpstreamError) as raised:
                await fetch(upstream, get(server))
            assert raised.value.status == 502
            assert await fetch(upstream, get(server)) == b"ok"
            assert server.connections == 2
    finally:
        loop.set_exception_handler(None)
    # the scripted server's own teardown cancels its tasks; nothing else reaches the loop
    assert [e for e in handled if not isinstance(e, asyncio.CancelledError)] == []


async def test_server_never_answers_read_timeout() -> None:
    async def script(_seen: Seen) -> bytes:
        await asyncio.sleep(3600)
        return b""

    async with RawServer(script) as server, client(server, read_timeout=0.2) as upstream:
        with pytest.raises(UpstreamTimeout):
            await fetch(upstream, get(server))


async def test_read_timeout_applies_to_each_wait_not_the_total() -> None:
    async def script(seen: Seen) -> bytes:
        seen.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in b"abcde":  # 0.5 s in all, 0.1 s apart: each wait is well under 0.3 s
            await asyncio.sleep(0.1)
            seen.writer.write(b"1\r\n%c\r\n" % part)
        return b"0\r\n\r\n"

    async with RawServer(script) as server, client(server, read_timeout=0.3) as upstream:
        assert await fetch(upstream, get(server)) == b"abcde"


async def test_connect_refused() -> None:
    base = f"http://127.0.0.1:{free_port()}/fhir"
    async with client(base) as upstream:
        with pytest.raises(UpstreamError):
            await upstream.send(UpstreamRequest("GET", f"{base}/metadata", []))


async def test_connect_timeout_when_the_listen_backlog_is_full() -> None:
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
        filler.connect(listener.getsockname())  # fills the backlog: further SYNs are dropped
        async with client(base, connect_timeout=0.3) as upstream:
            with pytest.raises(UpstreamTimeout):
                await upstream.send(UpstreamRequest("GET", f"{base}/metadata", []))


async def test_oversize_body_closes_the_connection() -> None:
    async with RawServer(constant(response(b"x" * 1000))) as server, client(server) as upstream:
        with pytest.raises(UpstreamError):
            await fetch(upstream, get(server), limit=999)
        response_ = await upstream.send(get(server))
        with pytest.raises(UpstreamError):
            async for _ in response_.iter_bytes(10):
                pass
        await response_.aclose()
        assert await fetch(upstream, get(server)) == b"x" * 1000
    assert server.connections == 3


async def test_large_body_through_flow_control() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, past the high-water mark
    async with RawServer(constant(response(body))) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        received = bytearray()
        async for chunk in response_.iter_bytes(len(body)):
            received += chunk
            await asyncio.sleep(0)
        await response_.aclose()
        assert bytes(received) == body


async def test_slow_reader_pauses_the_socket() -> None:
    """Flow control: a consumer that stops reading holds at most about the high-water mark
    (256 KiB) plus one socket read in memory, not the whole answer."""
    body = b"x" * (16 * 1024 * 1024)
    async with RawServer(constant(response(body))) as server, client(server) as upstream:
        response_ = await upstream.send(get(server))
        chunks = response_.iter_bytes(len(body))
        received = len(await anext(chunks))
        await asyncio.sleep(0.3)  # not reading: the client must stop reading the socket too
        (conn,) = upstream._conns
        assert conn.buffered < 2 * 1024 * 1024
        async for chunk in chunks:
            received += len(chunk)
        await response_.aclose()
        assert received == len(body)


# --- refusing what must not be sent -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/fhir/Patient/1", [("x-a", "ok\r\nInjected: 1")]),
        ("/fhir/Patient/1", [("x-a", "ok\nx")]),
        ("/fhir/Patient/1", [("x-a", "nul\x00")]),
        ("/fhir/Patient/1", [("x-a", "snowman \u2603")]),
        ("/fhir/Patient/1", [("bad name", "v")]),
        ("/fhir/Patient/1", [("x-a: 1\r\ninjected", "v")]),
        ("/fhir/Patient/1 HTTP/1.1\r\nX: y", []),
        ("/fhir/Patient/1\r\n", []),
        ("/fhir/Patient/a b", []),
        ("/fhir/Patient/\u00e9", []),
        ("/fhir/Patient/1#frag", []),
    ],
    ids=[
        "crlf-value",
        "lf-value",
        "nul-value",
        "non-latin1-value",
        "space-in-name",
        "crlf-name",
        "crlf-target",
        "trailing-crlf-target",
        "space-target",
        "non-ascii-target",
        "fragment",
    ],
)
async def test_unsafe_request_refused_before_sending(
    path: str, headers: list[tuple[str, str]]
) -> None:
    async with RawServer(constant(response())) as server, client(server) as upstream:
        with pytest.raises(ValueError):
            await upstream.send(get(server, path, headers=headers))
    assert server.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://other.test:1/fhir/Patient",
        "https://127.0.0.1:{port}/fhir/Patient",
        "http://127.0.0.1:{port}0/fhir/Patient",
        "http://127.0.0.1:{port}@evil.test/fhir",
    ],
    ids=["other-host", "other-scheme", "port-prefix", "userinfo-trick"],
)
async def test_other_origin_refused(url: str) -> None:
    async with RawServer(constant(response())) as server, client(server) as upstream:
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(ValueError, match="not on the upstream origin"):
            await upstream.send(UpstreamRequest("GET", url.format(port=port), []))
    assert server.connections == 0  # refused before any connection was opened


async def test_framing_headers_from_the_caller_dropped() -> None:
    headers = [("Transfer-Encoding", "chunked"), ("content-length", "99"), ("host", "evil")]
    async with RawServer(constant(response())) as server, client(server) as upstream:
        await fetch(upstream, get(server, method="POST", body=b"{}", headers=headers))
    head = server.seen[0].head.lower()
    assert b"transfer-encoding" not in head
    assert b"evil" not in head
    assert head.count(b"content-length") == 1


@pytest.mark.parametrize(
    "base",
    ["ftp://x/fhir", "http:///fhir", "http://user:pw@x/fhir", "http://x:99999/fhir"],
    ids=["scheme", "no-host", "credentials", "bad-port"],
)
def test_bad_base_url_is_a_settings_error(base: str) -> None:
    with pytest.raises(SettingsError):
        NativeUpstream(base, pool_size=1, connect_timeout=1, read_timeout=1)


def test_https_base_url_names_its_origin_and_port_443() -> None:
    """An ``https`` base is its own origin: requests to it are framed with its host (port 443
    implied), and the same host over plain ``http`` is another origin, refused. (The test it
    replaces only constructed the client and asserted nothing.)"""
    upstream = NativeUpstream(
        "https://fhir.example.org/r4", pool_size=1, connect_timeout=1, read_timeout=1
    )
    wire = upstream.encode(UpstreamRequest("GET", "https://FHIR.example.org/r4/metadata", []))
    assert wire == (
        b"GET /r4/metadata HTTP/1.1\r\nHost: fhir.example.org\r\n"
        b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
    )
    for other in ("http://fhir.example.org/r4/metadata", "https://fhir.example.org:8443/r4"):
        with pytest.raises(ValueError, match="not on the upstream origin"):
            upstream.encode(UpstreamRequest("GET", other, []))


async def test_address_is_where_it_connects_the_url_still_frames_the_request() -> None:
    """``address`` changes only where the client connects: the request still names the base
    URL's host in ``Host``, and a URL on the address's own origin is refused, so pointing a
    client at a local server (the served test upstream) cannot widen what it sends."""
    async with RawServer(constant(response(b"{}"))) as server:
        port = int(server.url.rsplit(":", 1)[1])
        upstream = NativeUpstream(
            "http://upstream.test:8103/fhir",
            pool_size=1,
            connect_timeout=2.0,
            read_timeout=2.0,
            address=("127.0.0.1", port),
        )
        try:
            request = UpstreamRequest("GET", "http://upstream.test:8103/fhir/Patient/1", [])
            assert await fetch(upstream, request) == b"{}"
            with pytest.raises(ValueError, match="not on the upstream origin"):
                await upstream.send(UpstreamRequest("GET", server.url + "/fhir/Patient/1", []))
        finally:
            await upstream.aclose()
    assert [seen.head.split(b"\r\n")[:2] for seen in server.seen] == [
        [b"GET /fhir/Patient/1 HTTP/1.1", b"Host: upstream.test:8103"]
    ]


async def test_https_verifies_the_servers_certificate(tmp_path: Path) -> None:
    """``https`` is verified TLS (default context): a server with a self-signed certificate
    is an upstream error, and it never reads a request (no PHI sent to an impostor)."""
    certificate, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    handshakes: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(Exception):
            handshakes.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client(f"https://127.0.0.1:{port}/fhir") as upstream:
            with pytest.raises(UpstreamError):
                await upstream.send(
                    UpstreamRequest("GET", f"https://127.0.0.1:{port}/fhir/Patient/1", [])
                )
    finally:
        server.close()
        await server.wait_closed()
    assert not any(handshakes)  # the handshake failed: no request line ever arrived


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_settings_select_the_native_client() -> None:
    settings = load_settings(
        overrides={"upstream": "http://upstream.test:8103/fhir", "upstream_client": "native"}
    )
    gateway = create_app(settings, store=MemoryLogStore(), signer=SigningKey.generate("t"))
    chosen = gateway.proxy.forwarder.upstream
    assert isinstance(chosen, DeadlineUpstream)  # the overall deadline wraps every client
    assert isinstance(chosen.inner, NativeUpstream)
    await gateway.aclose()


# --- the same behaviour under uvloop, the loop the gateway runs on -----------------------------

UVLOOP_CASES: list[Callable[[], Awaitable[None]]] = [
    test_content_length_body_headers_in_order_lower_case,
    test_chunked_body_streamed,
    test_keep_alive_one_connection_serves_several_requests,
    test_pool_limit_respected_under_concurrency,
    test_stale_reused_connection_get_retried_on_a_fresh_one,
    test_idle_connection_closed_by_the_server_is_not_used,
    test_server_closes_mid_body,
    test_server_never_answers_read_timeout,
    test_oversize_body_closes_the_connection,
    test_large_body_through_flow_control,
    test_slow_reader_pauses_the_socket,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__[5:])
def test_under_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await case()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


# --- the real upstream ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@pytest.mark.integration
async def test_same_bytes_as_httpx_from_the_real_upstream(real_upstream: UpstreamServer) -> None:
    """A Patient POSTed through the native client, read back, searched and paged (following
    each ``next`` link): status, body bytes and headers (but Date) equal httpx's answers."""
    base = real_upstream.base_url
    patient = b'{"resourceType":"Patient","name":[{"family":"Nativetest"}]}'
    fhir = [("accept", "application/fhir+json"), ("content-type", "application/fhir+json")]
    async with client(base) as upstream, httpx.AsyncClient() as reference:

        async def compare(url: str) -> bytes:
            ours = await upstream.send(UpstreamRequest("GET", url, fhir[:1]))
            body = await ours.read(1 << 24)
            await ours.aclose()
            theirs = await reference.get(url, headers=dict(fhir[:1]))
            assert (ours.status, body) == (theirs.status_code, theirs.content), url
            raw = [(k.decode().lower(), v.decode()) for k, v in theirs.headers.raw]
            assert [h for h in ours.headers if h[0] != "date"] == [h for h in raw if h[0] != "date"]
            return body

        created = [
            json.loads(
                await fetch(upstream, UpstreamRequest("POST", f"{base}/Patient", fhir, patient))
            )
            for _ in range(3)
        ]
        await compare(f"{base}/Patient/{created[0]['id']}")
        await compare(f"{base}/Patient/does-not-exist")
        found = json.loads(await compare(f"{base}/Patient?family=Nativetest"))
        assert {e["resource"]["id"] for e in found["entry"]} == {p["id"] for p in created}
        url: str | None = f"{base}/Patient?family=Nativetest&_count=1"
        pages = 0
        while url is not None:
            page = json.loads(await compare(url))
            pages += 1
            links = {link["relation"]: link["url"] for link in page.get("link", [])}
            url = links.get("next")
        assert pages == 3
