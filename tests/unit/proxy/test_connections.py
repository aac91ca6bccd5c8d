"""The server's connection guard, on a real uvicorn server over loopback: slow headers are cut
off, and connections over the cap evict the slowest, never a prompt client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn

from middleware.proxy.connections import connection_cap, guarded_protocol

REQUEST = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"
#: The header deadline of the deadline tests (seconds).
HEADER_TIMEOUT = 0.3


async def ok(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def serve(
    header_timeout: float, max_connections: int
) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    config = uvicorn.Config(
        ok,
        host="127.0.0.1",
        port=0,
        http=guarded_protocol(header_timeout, max_connections),
        loop="asyncio",
        lifespan="off",
        log_level="error",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # up to 5 s for the server to listen
        if server.started:
            break
        await asyncio.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port, server
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async for p, _ in serve(header_timeout=HEADER_TIMEOUT, max_connections=4):
        yield p


async def get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.close()
    return head


async def test_headers_dripped_slower_than_the_deadline_are_cut_off(port: int) -> None:
    """The attack (slowloris): a request line, then a header byte now and then, holds the
    connection for ever. After header_timeout the connection is closed with 408: the client
    drips a header line every 50 ms until it is cut off (for at most 5 s), and the cut comes
    no sooner than the deadline, however slowly a loaded machine runs the loop."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n")
    answer = asyncio.ensure_future(reader.read())  # read() returns at EOF
    while not answer.done() and loop.time() - started < 5:
        writer.write(b"x-a: b\r\n")  # the headers never complete
        await asyncio.wait([answer], timeout=0.05)
    assert (await asyncio.wait_for(answer, timeout=5)).startswith(b"HTTP/1.1 408")
    assert loop.time() - started >= HEADER_TIMEOUT * 0.9  # the loop clock's granularity
    writer.close()


async def test_an_idle_connection_is_closed_without_an_answer(port: int) -> None:
    """A connection that sends nothing is closed at the deadline, with no unsolicited 408."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()


async def test_the_deadline_applies_again_after_each_response(port: int) -> None:
    """On a kept-alive connection the next request's headers have the same deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await asyncio.wait_for(reader.readuntil(b"ok"), timeout=5)
    writer.write(b"GET / HTTP/1.1\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (polled), at most 10 s: synchronisation, never a timing bound."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 10 s")


def begun(connections: Any, n: int) -> Callable[[], bool]:
    """True once the server holds ``n`` connections, each with part of a request read."""
    return lambda: len(connections) == n and all(c._partial for c in connections)


async def test_prompt_clients_are_served_past_the_cap_by_evicting_slow_ones() -> None:
    """Four slow connections fill the cap (4); a prompt client is still answered, and the
    slow connection that waited longest is the one closed (408: its request had begun) while
    the others stay open and can finish their requests. The header deadline is 30 s, so what
    closes the first is the eviction, never the deadline."""
    async for port, server in serve(header_timeout=30.0, max_connections=4):
        connections: Any = server.server_state.connections
        slow = []
        for n in range(1, 5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\n")
            slow.append((reader, writer))
            # In order: each is accepted and has begun its request before the next opens.
            await until(begun(connections, n))
        assert (await get(port)).startswith(b"HTTP/1.1 200")
        first = await asyncio.wait_for(slow[0][0].read(), timeout=10)
        assert first.startswith(b"HTTP/1.1 408")  # evicted (a request had begun)
        reader, writer = slow[1]
        writer.write(b"host: t\r\n\r\n")  # not evicted: its request completes
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=10)).startswith(
            b"HTTP/1.1 200"
        )
        for _, writer in slow:
            writer.close()


def test_the_cap_leaves_file_descriptors_for_the_rest() -> None:
    import resource  # noqa: PLC0415

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**9) == (10**9 if soft == resource.RLIM_INFINITY else soft - 256)
    assert connection_cap(5) == 5


@pytest.mark.parametrize(("timeout", "cap"), [(0.0, 1), (1.0, 0), (float("nan"), 1)])
def test_bad_limits_are_refused(timeout: float, cap: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        guarded_protocol(timeout, cap)
