"""Slow-header flood against a local ``consentry serve``: do prompt clients still get answers?

``python -m bench.slowloris [--connections 2000] [--seconds 20] [--max-connections N]
[--header-timeout S] [--server-fd-limit N] [--mode slow-headers|body-flood]`` starts
``consentry serve`` on a free loopback port (memory store, an unreachable upstream: only
``/healthz`` is asked; ``--server-fd-limit`` lowers the server's open-file limit), opens
``--connections`` connections that send a request line and then one header line every 2 s,
never finishing (each reopened when the server closes it), and meanwhile asks ``GET /healthz``
on a fresh connection every 20 ms with a 5 s timeout. Prints one JSON object: prompt requests
tried, answered 200, success rate, p50/p99 latency, and how many slow connections the server
closed. Loopback only, bounded: at most 20,000 connections and 120 seconds.

``--mode body-flood``: the ``--connections`` clients instead send ``POST /fhir/Patient``
without a token, announcing a 16 MiB body and writing it in 64 KiB chunks as fast as the server
takes them (each reopened when the server closes it): the gateway refuses before reading a body
(401, or 429 once the address's budget is spent), so prompt clients must not notice.

The open-file limit of this process (and so of the server it starts, unless
``--server-fd-limit``) is raised to cover ``--connections`` (the hard limit too, which needs
root); the server's connection cap stays its default unless ``--max-connections``.
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
_REPO = Path(__file__).resolve().parents[1]


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


FLOOD_BODY = 16 * 1024 * 1024
FLOOD_CHUNK = b"x" * 65536


async def _flood(port: int, stop: float, closed: list[int]) -> None:
    """One unauthenticated body flooder: a POST announcing 16 MiB, then chunks until closed."""
    head = (
        b"POST /fhir/Patient HTTP/1.1\r\nhost: flood\r\ncontent-type: application/fhir+json\r\n"
        b"content-length: %d\r\n\r\n" % FLOOD_BODY
    )
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(head)
            sent = 0
            while time.monotonic() < stop and sent < FLOOD_BODY:
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(FLOOD_CHUNK)
                sent += len(FLOOD_CHUNK)
                await asyncio.wait_for(writer.drain(), 5)
            closed[0] += 1
            writer.close()
        except (OSError, TimeoutError):  # reset or closed under us: the server's refusal
            closed[0] += 1
            await asyncio.sleep(0.05)


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


async def _run(
    port: int, connections: int, seconds: float, mode: str = "slow-headers"
) -> dict[str, float | int | str]:
    stop = time.monotonic() + seconds
    closed = [0]
    # The legitimate client runs in a process of its own (in this one's event loop, thousands
    # of attackers would starve it and count their own delays against the server), started
    # before the attackers hold every descriptor, asking from once they are all open.
    opened = time.monotonic() + connections / 200 * 0.05 + 1
    legit = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench.slowloris", "--prompt-only", str(port)),
        *("--prompt-window", str(opened), str(stop - 5)),
        stdout=asyncio.subprocess.PIPE,
        cwd=_REPO,
    )
    slow = []
    attacker = _flood if mode == "body-flood" else _slow
    for i in range(connections):
        slow.append(asyncio.create_task(attacker(port, stop, closed)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # open them in waves, as a flood would
    out, _ = await legit.communicate()
    await asyncio.gather(*slow)
    results: list[float | None] = json.loads(out)
    times = sorted(t for t in results if t is not None)
    return {
        "mode": mode,
        "slow_connections": connections,
        "slow_closed_by_server": closed[0],
        "prompt_tried": len(results),
        "prompt_answered": len(times),
        "success_rate": round(len(times) / len(results), 4) if results else 0.0,
        "p50_ms": round(times[len(times) // 2] * 1000, 1) if times else -1,
        "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 1) if times else -1,
    }


async def _prompts(port: int, start: float, until: float) -> list[float | None]:
    """The legitimate client: ``GET /healthz`` on a new connection every 20 ms from ``start``
    until ``until`` (this host's monotonic clock, shared between processes)."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    prompts: list[asyncio.Task[float | None]] = []
    while time.monotonic() < until:
        prompts.append(asyncio.create_task(_prompt(port)))
        await asyncio.sleep(0.02)
    return await asyncio.gather(*prompts)


def _fd_limit(limit: int) -> Callable[[], None]:
    """Run in the server's process before it starts: lower its open-file limit."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def _raise_fd_limit(needed: int) -> None:
    """Let this process (and the server it starts) hold ``needed`` descriptors and some."""
    want = needed + 8192  # reconnects overlap closes; the legitimate client spawns too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # raising the hard limit needs root (CAP_SYS_RESOURCE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--header-timeout", type=float, default=None)
    parser.add_argument("--server-fd-limit", type=int, default=None)
    parser.add_argument("--mode", choices=("slow-headers", "body-flood"), default="slow-headers")
    parser.add_argument("--prompt-only", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-window", type=float, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prompt_only is not None:  # the legitimate client's own process (see _run)
        start, until = args.prompt_window
        print(json.dumps(asyncio.run(_prompts(args.prompt_only, start, until))))
        return 0
    connections = min(max(args.connections, 1), 20_000)
    _raise_fd_limit(connections)
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
            report = asyncio.run(_run(port, connections, seconds, args.mode))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
