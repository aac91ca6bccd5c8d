"""The contract both HTTP/1.1 clients keep (the native one, the default, and aiohttp), run on
each against the scripted raw server of :mod:`tests.unit.proxy.test_native_upstream`.

First the response-desync suite: an upstream (or something between it and us) that answers
with bytes the framing does not account for must never get them read as the answer to a later
request. Each surprise ends in ``UpstreamError`` (the gateway's 502) and the connection is not
reused: the next request opens a new one. Then the rest of the contract: request bytes as
given, no cookies kept, no redirect followed, decoding under the cap, timeouts, the pool.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from middleware.app import create_app
from middleware.errors import UpstreamError, UpstreamTimeout
from middleware.ledger.signing import SigningKey
from middleware.proxy.aiohttp_upstream import AiohttpUpstream
from middleware.proxy.deadline import DeadlineUpstream
from middleware.proxy.native_upstream import NativeUpstream
from middleware.proxy.upstream import Upstream, UpstreamRequest
from middleware.settings import load_settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.unit.proxy.test_native_upstream import RawServer, Seen, chunked, constant, response

Make = Callable[..., Upstream]


def native(base: str, *, pool_size: int = 4, read_timeout: float = 2.0) -> Upstream:
    return NativeUpstream(base, pool_size=pool_size, connect_timeout=1.0, read_timeout=read_timeout)


def aiohttp(base: str, *, pool_size: int = 4, read_timeout: float = 2.0) -> Upstream:
    return AiohttpUpstream(
        base, pool_size=pool_size, connect_timeout=1.0, read_timeout=read_timeout
    )


@pytest.fixture(params=[aiohttp, native], ids=["aiohttp", "native"])
def make(request: pytest.FixtureRequest) -> Make:
    factory: Make = request.param
    return factory


@asynccontextmanager
async def opened(make: Make, server: RawServer, **kw: float) -> AsyncIterator[Upstream]:
    upstream = make(server.url + "/fhir", **kw)
    try:
        yield upstream
    finally:
        await upstream.aclose()


def get(server: RawServer, path: str = "/fhir/Patient/1", **kw: object) -> UpstreamRequest:
    method = str(kw.pop("method", "GET"))
    headers = kw.pop("headers", [])
    assert isinstance(headers, list)
    body = kw.pop("body", b"")
    assert isinstance(body, bytes)
    return UpstreamRequest(method, server.url + path, headers, body)


async def fetch(upstream: Upstream, request: UpstreamRequest, limit: int = 1 << 20) -> bytes:
    answer = await upstream.send(request)
    try:
        return await answer.read(limit)
    finally:
        await answer.aclose()


GOOD = response(b"good")
OK_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"

# --- the response-desync suite -------------------------------------------------------------

DESYNC = [
    # bytes after a complete answer
    ("GET", OK_HEAD + "Content-Length: 2\r\n\r\nokJUNK"),
    (
        "GET",
        OK_HEAD + "Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    ),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nJUNK"),
    ("GET", "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"),
    ("HEAD", OK_HEAD + "Content-Length: 4\r\n\r\nevil"),
    ("HEAD", OK_HEAD + "Content-Length: 4\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"),
    # Content-Length ambiguities (RFC 9112 §6.3 item 5)
    ("GET", OK_HEAD + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
    ("GET", OK_HEAD + "Content-Length: 2\r\nContent-Length: 6\r\n\r\nokJUNK"),
    ("GET", OK_HEAD + "Content-Length: 2, 2\r\n\r\nok"),
    ("GET", OK_HEAD + "Content-Length: +2\r\n\r\nok"),
    # Transfer-Encoding tricks (RFC 9112 §6.1, §6.3 items 3 and 4)
    (
        "GET",
        OK_HEAD + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ),
    (
        "GET",
        OK_HEAD + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ),
    ("GET", OK_HEAD + "Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nok"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: gzip\r\n\r\nok"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked, gzip\r\n\r\nok"),
    # bad chunk sizes (RFC 9112 §7.1)
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nok\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n"),
    ("GET", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n"),
    # early close (the server's script marks it X-Close)
    ("GET", OK_HEAD + "X-Close: 1\r\nContent-Length: 10\r\n\r\nabc"),
    ("GET", OK_HEAD + "X-Close: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
    ("GET", OK_HEAD + "X-Close: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"),
]
DESYNC_IDS = [
    "extra-bytes",
    "pipelined-answer",
    "junk-after-chunked",
    "answer-after-204",
    "head-with-body",
    "head-then-answer",
    "duplicate-content-length",
    "conflicting-content-length",
    "content-length-list",
    "content-length-sign",
    "chunked-and-content-length",
    "content-length-and-chunked",
    "identity-coding",
    "chunked-twice-lines",
    "chunked-twice-list",
    "unknown-coding",
    "not-chunked-last",
    "chunked-not-last",
    "chunk-size-not-hex",
    "chunk-size-negative",
    "chunk-size-overflow",
    "chunk-longer-than-declared",
    "chunk-without-crlf",
    "close-mid-body",
    "close-mid-chunk",
    "close-before-last-chunk",
]


@pytest.mark.parametrize(("method", "reply"), DESYNC, ids=DESYNC_IDS)
async def test_surprise_is_refused_and_the_connection_never_reused(
    make: Make, method: str, reply: str
) -> None:
    """An answer whose framing leaves bytes unaccounted for (or could be read two ways) is
    a 502, and the next request goes out on a new connection: no later request can be
    answered with the attacker's bytes."""

    async def script(seen: Seen) -> bytes:
        return reply.encode() if seen.conn == 0 else GOOD

    async with RawServer(script) as server, opened(make, server) as upstream:
        with pytest.raises(UpstreamError) as refused:
            await fetch(upstream, get(server, method=method))
        assert refused.value.status == 502
        await asyncio.sleep(0.02)  # the first connection's close has been seen
        assert await fetch(upstream, get(server)) == b"good"
    assert [seen.conn for seen in server.seen] == [0, 1]


async def test_answer_that_arrives_while_idle_never_reaches_the_next_request(
    make: Make,
) -> None:
    """A second answer to a request sent once the first was read whole (the connection idles
    in the pool) is not handed to the next request sent there: aiohttp's own pool would."""

    async def script(seen: Seen) -> bytes:
        if seen.conn == 0:
            seen.writer.write(response(b"ok"))
            await seen.writer.drain()
            await asyncio.sleep(0.05)
            return response(b"evil")
        return GOOD

    async with RawServer(script) as server, opened(make, server) as upstream:
        assert await fetch(upstream, get(server)) == b"ok"
        await asyncio.sleep(0.2)
        assert await fetch(upstream, get(server)) == b"good"
    assert [seen.conn for seen in server.seen] == [0, 1]


async def test_answer_that_arrives_before_the_body_is_read_ends_the_connection(
    make: Make,
) -> None:
    """Bytes after a complete answer that the caller has not read yet: the connection is not
    returned to the pool (the native client also refuses the unread answer)."""

    async def script(seen: Seen) -> bytes:
        if seen.conn == 0:
            seen.writer.write(response(b"ok"))
            await seen.writer.drain()
            await asyncio.sleep(0.05)
            return b"JUNK"
        return GOOD

    async with RawServer(script) as server, opened(make, server) as upstream:
        answer = await upstream.send(get(server))
        await asyncio.sleep(0.2)
        try:
            assert await answer.read(100) == b"ok"
        except UpstreamError:
            pass
        finally:
            await answer.aclose()
        assert await fetch(upstream, get(server)) == b"good"
    assert [seen.conn for seen in server.seen] == [0, 1]


@pytest.mark.parametrize(
    ("method", "reply"),
    [
        ("GET", response(status="204 No Content", headers=())),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        ("HEAD", response(length=1234)),
        ("GET", chunked(b"ab", b"cd")),
        ("GET", b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"")),
    ],
    ids=["204", "304", "head", "chunked", "interim-100"],
)
async def test_clean_answers_keep_the_connection(make: Make, method: str, reply: bytes) -> None:
    """The suite above is not passed by refusing everything: well-framed answers are read and
    the connection serves the next request."""

    async def script(seen: Seen) -> bytes:
        return reply if seen.index == 0 else GOOD

    async with RawServer(script) as server, opened(make, server) as upstream:
        first = await fetch(upstream, get(server, method=method))
        assert first == (b"abcd" if b"chunked" in reply else b"")
        assert await fetch(upstream, get(server)) == b"good"
    assert server.connections == 1


# --- the request on the wire ---------------------------------------------------------------


async def test_request_carries_the_callers_target_and_headers_and_nothing_guessed(
    make: Make,
) -> None:
    """The path and query go out as given (no re-quoting, no dot segments removed), the
    caller's headers in order; no User-Agent, Accept or Content-Type the caller did not send;
    the caller's Accept-Encoding replaced by the codings the client decodes."""
    target = "/fhir/Patient/a/../b?name=a%20b&x=%2F&y=%zz"
    headers = [("x-request-id", "r1"), ("accept-encoding", "br"), ("x-b", "2")]
    async with RawServer(constant(response(b"ok"))) as server, opened(make, server) as upstream:
        await fetch(upstream, get(server, target, headers=headers))
        await fetch(upstream, get(server, method="POST", body=b"{}"))
    first = server.seen[0].head.decode("latin-1").split("\r\n")
    assert first[0] == f"GET {target} HTTP/1.1"
    fields = [line.split(": ", 1) for line in first[1:] if line]
    names = [name.lower() for name, _ in fields]
    assert names.index("x-request-id") < names.index("x-b")
    assert not {"user-agent", "accept", "content-type", "cookie"} & set(names)
    encodings = [value for name, value in fields if name.lower() == "accept-encoding"]
    assert len(encodings) == 1
    assert "br" not in encodings[0]
    assert "gzip" in encodings[0]
    assert b"content-type" not in server.seen[1].head.lower()
    assert server.seen[1].body == b"{}"


@pytest.mark.parametrize(
    "request_",
    [
        UpstreamRequest("GET", "http://other.test/fhir/Patient", []),
        UpstreamRequest("GET", "{base}/Patient\r\nX: y", []),
        UpstreamRequest("GET", "{base}/Patient", [("x-a", "1\r\nX-Smuggled: 1")]),
        UpstreamRequest("GET /x HTTP/1.1\r\n", "{base}/Patient", []),
    ],
    ids=["other-origin", "crlf-in-target", "crlf-in-header", "crlf-in-method"],
)
async def test_unsafe_request_refused_before_sending(make: Make, request_: UpstreamRequest) -> None:
    async with RawServer(constant(GOOD)) as server, opened(make, server) as upstream:
        url = request_.url.replace("{base}", server.url + "/fhir")
        with pytest.raises(ValueError, match="not"):
            await upstream.send(UpstreamRequest(request_.method, url, request_.headers))
    assert server.connections == 0


async def test_cookies_are_never_kept(make: Make) -> None:
    """A Set-Cookie in one caller's answer is never sent with another caller's request (the
    upstream named by a host name: cookie jars refuse cookies from IP addresses anyway)."""
    reply = response(b"ok", headers=("Set-Cookie: session=alice; Path=/",))
    async with RawServer(constant(reply)) as server:
        named = server.url.replace("127.0.0.1", "localhost")
        upstream = make(named + "/fhir")
        try:
            for _ in range(2):
                await fetch(upstream, UpstreamRequest("GET", named + "/fhir/Patient", []))
        finally:
            await upstream.aclose()
    assert len(server.seen) == 2
    assert b"cookie" not in server.seen[1].head.lower()


async def test_redirects_are_answered_not_followed(make: Make) -> None:
    reply = response(b"", status="302 Found", headers=("Location: /fhir/elsewhere",))
    async with RawServer(constant(reply)) as server, opened(make, server) as upstream:
        answer = await upstream.send(get(server))
        assert answer.status == 302
        assert ("location", "/fhir/elsewhere") in answer.headers
        await answer.aclose()
    assert len(server.seen) == 1


# --- bodies ----------------------------------------------------------------------------------


async def test_gzip_decoded_its_headers_dropped(make: Make) -> None:
    plain = b'{"resourceType":"Bundle"}' * 100
    reply = response(gzip.compress(plain), headers=("Content-Encoding: gzip", "ETag: x"))
    async with RawServer(constant(reply)) as server, opened(make, server) as upstream:
        answer = await upstream.send(get(server))
        assert answer.headers == [("etag", "x")]
        assert await answer.read(len(plain)) == plain
        await answer.aclose()


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
async def test_a_coding_it_does_not_decode_is_refused(make: Make, coding: str) -> None:
    """An encoded body is never passed on as if it were plain."""
    reply = response(b"xx", headers=(f"Content-Encoding: {coding}",))
    async with RawServer(constant(reply)) as server, opened(make, server) as upstream:
        with pytest.raises(UpstreamError):
            await fetch(upstream, get(server))


async def test_decompression_bomb_stops_at_the_cap(make: Make) -> None:
    """64 MiB of zeros in 64 KiB of gzip: refused once the decoded bytes pass the cap."""
    reply = response(gzip.compress(bytes(64 << 20)), headers=("Content-Encoding: gzip",))
    async with RawServer(constant(reply)) as server, opened(make, server) as upstream:
        with pytest.raises(UpstreamError, match="size limit"):
            await fetch(upstream, get(server), limit=1 << 20)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_oversize_body_refused_and_connection_closed(make: Make, framing: str) -> None:
    big = b"x" * 300_000
    reply = response(big) if framing == "length" else chunked(big)
    async with RawServer(constant(reply)) as server, opened(make, server) as upstream:
        with pytest.raises(UpstreamError, match="size limit"):
            await fetch(upstream, get(server), limit=100_000)
        assert await fetch(upstream, get(server)) == big
    assert server.connections == 2


async def test_body_streamed_before_it_is_complete(make: Make) -> None:
    """A non-JSON body (a Binary, an export) reaches the caller chunk by chunk: the first
    chunk is handed over while the server still holds back the rest."""
    release = asyncio.Event()

    async def script(seen: Seen) -> bytes:
        seen.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await seen.writer.drain()
        await release.wait()
        return b"4\r\nrest\r\n0\r\n\r\n"

    async with RawServer(script) as server, opened(make, server) as upstream:
        answer = await upstream.send(get(server))
        chunks = aiter(answer.iter_bytes(1 << 20))
        assert await asyncio.wait_for(anext(chunks), 2) == b"first"
        release.set()
        assert b"".join([chunk async for chunk in chunks]) == b"rest"
        await answer.aclose()


# --- time and the pool -----------------------------------------------------------------------


async def test_read_timeout_is_a_504(make: Make) -> None:
    async def script(_seen: Seen) -> bytes:
        await asyncio.sleep(5)
        return GOOD

    async with RawServer(script) as server, opened(make, server, read_timeout=0.2) as upstream:
        with pytest.raises(UpstreamTimeout) as timed_out:
            await fetch(upstream, get(server))
    assert timed_out.value.status == 504


async def test_pool_size_bounds_the_connections(make: Make) -> None:
    async def script(_seen: Seen) -> bytes:
        await asyncio.sleep(0.02)
        return GOOD

    async with RawServer(script) as server, opened(make, server, pool_size=2) as upstream:
        bodies = await asyncio.gather(*(fetch(upstream, get(server)) for _ in range(8)))
    assert bodies == [b"good"] * 8
    assert server.max_open == 2


# --- wiring ----------------------------------------------------------------------------------


async def test_native_is_the_default_client() -> None:
    """Without ``upstream_client`` the gateway reaches its upstream with the native client
    (chosen by measurement, docs/configuration.md), inside the overall deadline."""
    settings = load_settings(overrides={"upstream": "http://upstream.test:8103/fhir"})
    assert settings.upstream_client == "native"
    gateway = create_app(settings, store=MemoryLogStore(), signer=SigningKey.generate("t"))
    chosen = gateway.proxy.forwarder.upstream
    assert isinstance(chosen, DeadlineUpstream)
    assert isinstance(chosen.inner, NativeUpstream)
    await gateway.aclose()


@pytest.mark.parametrize("client", ["aiohttp", "native"])
async def test_the_gateway_answers_502_to_a_smuggled_answer_and_the_next_request_is_clean(
    client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: an upstream that appends a second answer to its CapabilityStatement (an
    attacker's response queued for whoever asks next) gets the caller a 502, and the next
    request through the gateway is answered by the upstream on a new connection."""
    monkeypatch.chdir(tmp_path)
    capability = b'{"resourceType":"CapabilityStatement","status":"active","fhirVersion":"4.0.1"}'
    smuggled = b'{"resourceType":"Patient","id":"someone-else"}'

    async def script(seen: Seen) -> bytes:
        if seen.conn > 0:
            return response(capability)
        return response(capability) + response(smuggled)

    async with RawServer(script) as server:
        settings = load_settings(
            overrides={"upstream": server.url + "/fhir", "upstream_client": client}
        )
        app = create_app(settings, store=MemoryLogStore(), signer=SigningKey.generate("t"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            refused = await http.get("/fhir/metadata")
            again = await http.get("/fhir/metadata", params={"_": "1"})
        await app.aclose()
    assert refused.status_code == 502
    assert b"someone-else" not in refused.content
    assert again.status_code == 200
    assert b"someone-else" not in again.content
    assert [seen.conn for seen in server.seen] == [0, 1]
