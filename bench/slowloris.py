"""Slow-header flood against a local ``consentry serve``: do prompt clients still get answers?

``python -m bench.slowloris [--connections 2000] [--seconds 20] [--max-connections N]
[--header-timeout S] [--server-fd-limit N]`` starts ``consentry serve`` on a free loopback
port (memory store, an unreachable upstream: only ``/healthz`` is asked; the last option
lowers the server's open-file limit), opens ``--connections`` connections that send a request
line and then one header line every 2 s, never finishing (each reopened when the server
closes it), and meanwhile asks ``GET /healthz`` on a fresh connection every 20 ms with a 5 s
timeout. Prints one JSON object: prompt requests tried, answered 200, success rate, p50/p99
latency, and how many slow connections the server closed. Loopback only, bounded: at most
20,000 connections and 120 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


async def _slow(port: int, stop: float, closed: list[int]) -> None:
    """One slow sender: a request line, then a header line every 2 s, reopened when closed."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: slow\r\n")
            while time.monotonic() < stop:
                await asyncio.sleep(2)
                if reader.at_eof() or writer.is_closing():
                    closed[0] += 1
                    break
                writer.write(b"x-slow: 1\r\n")
                await writer.drain()
            writer.close()
        except OSError:  # refused, reset or closed under us: the server's doing too
            closed[0] += 1
            await asyncio.sleep(0.5)


async def _prompt(port: int) -> float | None:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: prompt\r\nconnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    except (OSError, TimeoutError):
        return None
    return time.perf_counter() - started if head.startswith(b"HTTP/1.1 200") else None


async def _run(port: int, connections: int, seconds: float) -> dict[str, float | int]:
    stop = time.monotonic() + seconds
    closed = [0]
    slow = []
    for i in range(connections):
        slow.append(asyncio.create_task(_slow(port, stop, closed)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # open them in waves, as a flood would
    prompts: list[asyncio.Task[float | None]] = []
    while time.monotonic() < stop - 5:
        prompts.append(asyncio.create_task(_prompt(port)))
        await asyncio.sleep(0.02)
    results = await asyncio.gather(*prompts)
    await asyncio.gather(*slow)
    times = sorted(t for t in results if t is not None)
    return {
        "slow_connections": connections,
        "slow_closed_by_server": closed[0],
        "prompt_tried": len(results),
        "prompt_answered": len(times),
        "success_rate": round(len(times) / len(results), 4) if results else 0.0,
        "p50_ms": round(times[len(times) // 2] * 1000, 1) if times else -1,
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 1) if times else -1,
    }


def _fd_limit(limit: int) -> Callable[[], None]:
    """Run in the server's process before it starts: lower its open-file limit."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--header-timeout", type=float, default=None)
    parser.add_argument("--server-fd-limit", type=int, default=None)
    args = parser.parse_args()
    connections = min(max(args.connections, 1), 20_000)
    seconds = min(max(args.seconds, 10.0), 120.0)
    port = _free_port()
    env = {**os.environ, "CONSENTRY_LOG_LEVEL": "error", "CONSENTRY_ACCESS_LOG": "false"}
    if args.max_connections:
        env["CONSENTRY_MAX_CONNECTIONS"] = str(args.max_connections)
    if args.header_timeout:
        env["CONSENTRY_HEADER_TIMEOUT"] = str(args.header_timeout)
    consentry = Path(sys.executable).with_name("consentry")
    with tempfile.TemporaryDirectory() as work:
        server = subprocess.Popen(
            [
                str(consentry),
                "serve",
                "--upstream",
                "http://127.0.0.1:9/fhir",
                "--store",
                "memory:",
                "--port",
                str(port),
            ],
            cwd=work,
            env=env,
            # No thread is running yet (asyncio starts after), so preexec_fn is safe here.
            preexec_fn=None if not args.server_fd_limit else _fd_limit(args.server_fd_limit),  # noqa: PLW1509
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            report = asyncio.run(_run(port, connections, seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
