"""Hypothesis against the native client's response handling: raw bytes, cut anywhere, fed to
one pooled connection as the answer to one request.

Properties: whatever arrives, the outcome is a body or the client's own error
(``UpstreamError``, ``UpstreamTimeout``), never another exception; and a connection that goes
back to the pool is in sync: the next answer read on it is exactly the next response sent,
with no byte of the earlier ones. A well-framed answer followed by any further byte is never
reused.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.errors import UpstreamError, UpstreamTimeout
from middleware.proxy.native_upstream import NativeResponse, NativeUpstream, _Connection

CANARY = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary"
FRAGMENTS = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n",
    b"Content-Length: 2\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n",
    b"Content-Encoding: gzip\r\n",
    b"\r\n",
    b"ok",
    b"2\r\nok\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
]


class FakeTransport(asyncio.Transport):
    """Records writes; closing reports ``connection_lost`` on the next loop turn, as asyncio's
    transports do."""

    def __init__(self, conn: _Connection) -> None:
        super().__init__()
        self.conn = conn
        self.closed = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(conn: _Connection, chunks: list[bytes], *, head: bool) -> bytes | Exception:
    """One exchange on ``conn`` while ``chunks`` arrive one per loop turn: the body or the
    client's error. Bytes stop arriving once the client closed the connection."""
    transport = conn.transport
    assert isinstance(transport, FakeTransport)

    async def feed() -> None:
        for chunk in chunks:
            await asyncio.sleep(0)
            if transport.closed:
                return
            conn.data_received(chunk)

    feeder = asyncio.create_task(feed())
    try:
        await conn.exchange(b"GET / HTTP/1.1\r\n\r\n", head=head)
        response = NativeResponse(conn)
        try:
            outcome: bytes | Exception = await response.read(1 << 16)
        finally:
            await response.aclose()
    except (UpstreamError, UpstreamTimeout) as exc:  # anything else fails the property
        outcome = exc
    await feeder
    await asyncio.sleep(0)  # a close reports connection_lost
    return outcome


def run(chunks: list[bytes], *, head: bool) -> tuple[bytes | Exception, bytes | Exception | None]:
    """The first exchange's outcome, and the second's (the canary) when the connection was
    returned to the pool, else ``None``."""

    async def go() -> tuple[bytes | Exception, bytes | Exception | None]:
        pool = NativeUpstream(
            "http://upstream.test/fhir", pool_size=1, connect_timeout=0.05, read_timeout=0.05
        )
        conn = _Connection(pool)
        conn.connection_made(FakeTransport(conn))
        conn.counted = True
        pool._conns.add(conn)
        pool._open = 1
        first = await answer(conn, chunks, head=head)
        if conn not in pool._idle:
            return first, None
        pool._idle.remove(conn)
        return first, await answer(conn, [CANARY], head=False)

    return asyncio.run(go())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


raw = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=6)), max_size=14).map(
        b"".join
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=raw, points=st.lists(st.integers(0, 400), max_size=6), head=st.booleans())
def test_any_bytes_give_a_body_or_its_own_error_and_reuse_stays_in_sync(
    data: bytes, points: list[int], head: bool
) -> None:
    """No input makes the client raise a foreign exception; a reused connection answers the
    next request with exactly the next response (no byte of ``data`` leaks into it)."""
    first, second = run(cut(data, points), head=head)
    if second is not None:
        assert isinstance(first, bytes)
        assert second == b"canary"


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """A well-framed final answer: Content-Length or chunked (cut into random chunks)."""
    body = draw(st.binary(max_size=40))
    status = draw(st.sampled_from([b"200 OK", b"201 Created", b"404 Not Found"]))
    if draw(st.booleans()):
        return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
    pieces = cut(body, draw(st.lists(st.integers(0, 40), max_size=4)))
    coded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (status, coded)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reply=framed(),
    extra=st.one_of(framed(), raw, st.binary(max_size=30)).filter(
        lambda b: b.strip(b"\r\n") != b""
    ),
    points=st.lists(st.integers(0, 400), max_size=6),
)
def test_a_complete_answer_followed_by_any_byte_is_never_reused(
    reply: bytes, extra: bytes, points: list[int]
) -> None:
    """Whether the extra bytes arrive with the answer, before it is read or once the
    connection idles, the connection is closed (RFC 9112 §9.3: one answer per request).
    Blank lines alone are excepted: recipients skip them between messages (RFC 9112 §2.2)."""
    first, second = run(cut(reply + extra, points), head=False)
    assert second is None
    assert isinstance(first, (bytes, UpstreamError, UpstreamTimeout))
