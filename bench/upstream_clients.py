"""The upstream clients side by side: CPU per request and throughput of each seam implementation.

    python -m bench.upstream_clients [--duration 3] [--concurrency 1,16] [--rounds 1]
                                     [--clients native,aiohttp,httpx] [--loop uvloop|asyncio]

Starts the shared upstream FHIR server seeded with carebundle-10, then in this one process,
on one event loop (uvloop by default, as the gateway runs), drives each client through the
:class:`~middleware.proxy.upstream.Upstream` seam exactly as the proxy handler does (``send``,
``read(limit)``, ``aclose``) with ``GET /Patient/{id}`` and the six headers the gateway sends
upstream. Each point is an unmeasured warm-up second, then ``--duration`` seconds of
``--concurrency`` workers sending back to back.

CPU per request is this process's ``time.process_time()`` delta over the requests completed:
the client's cost alone, since the upstream runs in its own process. With ``--rounds`` above 1
each cell is the median over the rounds, clients interleaved within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass

import httpx
import uvloop

from middleware.proxy.aiohttp_upstream import AiohttpUpstream
from middleware.proxy.httpx_upstream import HttpxUpstream
from middleware.proxy.native_upstream import NativeUpstream
from middleware.proxy.upstream import Upstream, UpstreamRequest
from tests.support import UpstreamServer, carebundle_dir

LIMIT = 64 * 1024 * 1024
POOL_SIZE = 100
CPU_NOTE = (
    "CPU µs/req = time.process_time() delta of the benchmark process (client only; the "
    "upstream is a separate node process) / requests completed"
)


def make_client(name: str, base: str) -> Upstream:
    """The named client, configured as ``create_app`` configures it (inside the running loop)."""
    if name == "native":
        return NativeUpstream(base, pool_size=POOL_SIZE, connect_timeout=5.0, read_timeout=30.0)
    if name == "aiohttp":
        return AiohttpUpstream(base, pool_size=POOL_SIZE, connect_timeout=5.0, read_timeout=30.0)
    if name == "httpx":
        timeout = httpx.Timeout(30.0, connect=5.0)
        limits = httpx.Limits(max_connections=POOL_SIZE)
        return HttpxUpstream(
            httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
        )
    raise SystemExit(f"unknown client {name!r}")


def gateway_headers(n: int) -> list[tuple[str, str]]:
    """The six headers :func:`~middleware.proxy.headers.upstream_request_headers` sends for a
    plain read through the gateway."""
    return [
        ("accept", "application/fhir+json"),
        ("x-request-id", f"{n:032x}"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "127.0.0.1:8080"),
        ("x-forwarded-prefix", "/fhir"),
    ]


@dataclass(frozen=True, slots=True)
class Point:
    """One client at one concurrency for one run."""

    requests: int
    errors: int
    seconds: float
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.requests * 1e6


async def drive(upstream: Upstream, url: str, concurrency: int, duration: float) -> Point:
    """``concurrency`` workers sending back to back for ``duration`` seconds."""
    done = errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            response = await upstream.send(UpstreamRequest("GET", url, gateway_headers(done)))
            try:
                await response.read(LIMIT)
            finally:
                await response.aclose()
            if response.status == 200:
                done += 1
            else:
                errors += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Point(done, errors, time.perf_counter() - wall, time.process_time() - cpu)


async def measure_all(
    base: str, url: str, clients: list[str], concurrencies: list[int], duration: float, rounds: int
) -> dict[tuple[str, int], list[Point]]:
    points: dict[tuple[str, int], list[Point]] = {}
    for _ in range(rounds):
        for concurrency in concurrencies:
            for name in clients:
                upstream = make_client(name, base)
                try:
                    await drive(upstream, url, concurrency, 1.0)  # warm-up: pool, caches
                    point = await drive(upstream, url, concurrency, duration)
                finally:
                    await upstream.aclose()
                points.setdefault((name, concurrency), []).append(point)
                print(f"  {name} c={concurrency}: {point.cpu_us:.1f} µs/req", flush=True)
    return points


async def same_answers(base: str, url: str, clients: list[str]) -> None:
    """Every client must receive the same status and body before anything is timed."""
    bodies = set()
    for name in clients:
        upstream = make_client(name, base)
        try:
            response = await upstream.send(UpstreamRequest("GET", url, gateway_headers(0)))
            bodies.add((response.status, await response.read(LIMIT)))
            await response.aclose()
        finally:
            await upstream.aclose()
    if len(bodies) != 1 or next(iter(bodies))[0] != 200:
        raise SystemExit(f"the clients disagree or fail on {url}")


def markdown(points: dict[tuple[str, int], list[Point]]) -> str:
    lines = [
        "| client | concurrency | CPU µs/req | req/s | requests | errors |",
        "|---|---|---|---|---|---|",
    ]
    for (name, concurrency), runs in points.items():
        cpu = statistics.median(p.cpu_us for p in runs)
        rps = statistics.median(p.rps for p in runs)
        requests = sum(p.requests for p in runs)
        errors = sum(p.errors for p in runs)
        lines.append(f"| {name} | {concurrency} | {cpu:.1f} | {rps:.0f} | {requests} | {errors} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_clients", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrencies")
    parser.add_argument("--rounds", type=int, default=1, help="repeat and report medians")
    parser.add_argument("--clients", default="native,aiohttp,httpx")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    clients = args.clients.split(",")
    concurrencies = [int(n) for n in args.concurrency.split(",")]
    factory = uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop

    with UpstreamServer(seed_dir=carebundle_dir()) as upstream:
        base = upstream.base_url
        bundle = httpx.get(f"{base}/Patient?_count=1").json()
        url = f"{base}/Patient/{bundle['entry'][0]['resource']['id']}"
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(same_answers(base, url, clients))
            points = runner.run(
                measure_all(base, url, clients, concurrencies, args.duration, args.rounds)
            )

    print(
        f"\nGET /Patient/{{id}} with 6 headers, {args.duration:g} s per point, "
        f"{args.rounds} round(s), {args.loop}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
    )
    print(markdown(points))
    print(f"\n{CPU_NOTE}.")


if __name__ == "__main__":
    main()
