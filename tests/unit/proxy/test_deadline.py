"""The overall upstream deadline (``upstream_deadline``) against a real dripping server.

The attack: an upstream (or something between it and the gateway) that sends its answer one
byte at a time never trips the per-read ``read_timeout``, so a request was held 132 s with a
3 s read timeout, and a few such answers tie up the whole upstream pool. Each client stands
behind :class:`~middleware.proxy.deadline.DeadlineUpstream`; these tests run the native,
aiohttp and httpx clients against a loopback server that drips a byte every 0.1 s, and the
app end to end on the default client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from middleware.app import create_app
from middleware.errors import UpstreamTimeout
from middleware.ledger.signing import SigningKey
from middleware.proxy.aiohttp_upstream import AiohttpUpstream
from middleware.proxy.deadline import DeadlineUpstream
from middleware.proxy.httpx_upstream import HttpxUpstream
from middleware.proxy.native_upstream import NativeUpstream
from middleware.proxy.upstream import Upstream, UpstreamRequest
from middleware.settings import load_settings
from middleware.storage.ledger_memory import MemoryLogStore

DRIP = 0.1  # seconds between bytes: far below any read timeout here
BODY = b'{"resourceType":"CapabilityStatement","status":"active","kind":"instance"}'
READ_TIMEOUT = 1.0
DEADLINE = 0.8
#: The least time a dripped answer takes whole (the body alone, byte by byte: about 7.5 s).
#: A refusal well before it proves the answer was cut off rather than waited for, and the
#: bound still holds with a loaded machine stretching the deadline's timer by seconds.
DRIPPED = len(BODY) * DRIP
CUT_OFF_BEFORE = DRIPPED / 2


class DripServer:
    """Loopback HTTP/1.1 server: the first connection's answer drips (``where``: the head or
    the body), later connections get the same answer at once. Counts connections."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drip = self.connections == 1
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    return
                head = (
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\n"
                    b"content-length: %d\r\n\r\n" % len(BODY)
                )
                if drip and self.where == "head":
                    await self._drip(writer, head)
                    writer.write(BODY)
                elif drip:
                    writer.write(head)
                    await self._drip(writer, BODY)
                else:
                    writer.write(head + BODY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for n in range(len(data)):
            writer.write(data[n : n + 1])
            await writer.drain()
            await asyncio.sleep(DRIP)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DripServer]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()


def native(base: str) -> Upstream:
    return NativeUpstream(base, pool_size=1, connect_timeout=1, read_timeout=READ_TIMEOUT)


def aiohttp_client(base: str) -> Upstream:
    return AiohttpUpstream(base, pool_size=1, connect_timeout=1, read_timeout=READ_TIMEOUT)


def httpx_client(_base: str) -> Upstream:
    timeout = httpx.Timeout(READ_TIMEOUT, connect=1)
    return HttpxUpstream(httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1)))


CLIENTS: list[Callable[[str], Upstream]] = [native, aiohttp_client, httpx_client]


async def exchange(upstream: Upstream, url: str) -> bytes:
    response = await upstream.send(UpstreamRequest("GET", url, [("accept", "application/json")]))
    try:
        return await response.read(1 << 20)
    finally:
        await response.aclose()


async def fetched(upstream: DeadlineUpstream, url: str) -> bytes:
    """The same exchange through :meth:`DeadlineUpstream.fetch` (one timer)."""
    request = UpstreamRequest("GET", url, [("accept", "application/json")])
    status, _headers, raw = await upstream.fetch(request, 1 << 20)
    assert status == 200
    return raw


@pytest.mark.parametrize("how", [exchange, fetched], ids=["send-read", "fetch"])
@pytest.mark.parametrize("where", ["head", "body"])
@pytest.mark.parametrize("make", CLIENTS, ids=["native", "aiohttp", "httpx"])
async def test_a_dripping_upstream_is_cut_off_at_the_deadline(
    make: Callable[[str], Upstream],
    where: str,
    how: Callable[[DeadlineUpstream, str], Awaitable[bytes]],
) -> None:
    """Each byte comes well within the read timeout; the answer as a whole (about 7.5 s) does
    not come within the deadline: 504 after the deadline (and long before the answer could
    have been whole), and the connection is not reused
    (the next exchange opens a new one and gets the answer at once)."""
    async with DripServer(where).running() as server:
        base = f"http://127.0.0.1:{server.port}/fhir"
        upstream = DeadlineUpstream(make(base), DEADLINE)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"within 0\.8 s"):
            await how(upstream, f"{base}/metadata")
        took = time.monotonic() - started
        assert DEADLINE * 0.9 <= took < CUT_OFF_BEFORE
        assert await how(upstream, f"{base}/metadata") == BODY
        assert server.connections == 2
        await upstream.aclose()


async def test_streamed_reads_share_the_one_deadline() -> None:
    async with DripServer("body").running() as server:
        base = f"http://127.0.0.1:{server.port}/fhir"
        upstream = DeadlineUpstream(native(base), DEADLINE)
        response = await upstream.send(UpstreamRequest("GET", f"{base}/metadata", []))
        received: list[bytes] = []

        async def stream() -> None:
            async for chunk in response.iter_bytes(1 << 20):
                received.append(chunk)

        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await stream()
        await response.aclose()
        assert 0 < len(b"".join(received)) < len(BODY)
        assert time.monotonic() - started < CUT_OFF_BEFORE
        await upstream.aclose()


async def test_a_prompt_exchange_is_untouched() -> None:
    async with DripServer("body").running() as server:
        server.connections = 1  # no connection drips
        base = f"http://127.0.0.1:{server.port}/fhir"
        upstream = DeadlineUpstream(native(base), DEADLINE)
        for _ in range(3):
            assert await exchange(upstream, f"{base}/metadata") == BODY
            assert await fetched(upstream, f"{base}/metadata") == BODY
        await upstream.aclose()


@pytest.mark.parametrize("deadline", [0.0, -1.0, float("inf"), float("nan")])
def test_a_deadline_is_positive_and_finite(deadline: float) -> None:
    with pytest.raises(ValueError, match="positive, finite"):
        DeadlineUpstream(native("http://127.0.0.1:9/fhir"), deadline)


@pytest.mark.parametrize("client", ["native", "aiohttp"])
async def test_the_gateway_answers_504_at_the_deadline(
    client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on the clients ``upstream_client`` selects: the CapabilityStatement from a
    dripping upstream is 504 after ``upstream_deadline``, not a 200 seven seconds later."""
    monkeypatch.chdir(tmp_path)
    async with DripServer("body").running() as server:
        settings = load_settings(
            overrides={
                "upstream": f"http://127.0.0.1:{server.port}/fhir",
                "upstream_client": client,
                "read_timeout": READ_TIMEOUT,
                "upstream_deadline": DEADLINE,
            }
        )
        app = create_app(settings, store=MemoryLogStore(), signer=SigningKey.generate("t"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            started = time.monotonic()
            answer = await http.get("/fhir/metadata")
            took = time.monotonic() - started
        await app.aclose()
    assert answer.status_code == 504
    assert took < CUT_OFF_BEFORE
    assert answer.json()["issue"][0]["code"] == "timeout"
