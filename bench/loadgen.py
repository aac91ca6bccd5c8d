"""A small closed-loop HTTP load generator (asyncio + aiohttp), used when ``wrk`` is missing.

``connections`` workers each send GET requests back to back over their own keep-alive
connection until ``duration`` seconds have passed. Python generating load shares the CPU with
what it measures, so its numbers are lower bounds next to wrk's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

__all__ = ["LoadResult", "run"]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured (latencies in milliseconds)."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def run(
    url: str, connections: int, duration: float, headers: Mapping[str, str] | None = None
) -> LoadResult:
    """Load ``url`` with ``connections`` concurrent clients for ``duration`` seconds, each
    request carrying ``headers`` (e.g. ``Authorization``) when given."""
    return asyncio.run(_run(url, connections, duration, headers))


async def _run(
    url: str, connections: int, duration: float, headers: Mapping[str, str] | None = None
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + duration
    connector = aiohttp.TCPConnector(limit=connections)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status >= 400:
                    errors += 1
            latencies.append((time.perf_counter() - sent) * 1000)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    seconds = time.perf_counter() - started
    if len(latencies) < 2:
        return LoadResult(len(latencies), errors, seconds, 0.0, 0.0)
    cuts = statistics.quantiles(latencies, n=100)
    return LoadResult(len(latencies), errors, seconds, cuts[49], cuts[98])
