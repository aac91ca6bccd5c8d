"""Running the gateway's HTTP server: in this process, or as one worker of several.

``consentry serve`` (:mod:`middleware.cli`) loads the settings and calls :func:`serve`. With one
worker the app is built and served here, as it always was: uvicorn on uvloop with the
guarded httptools protocol (a header deadline and a connection cap,
:mod:`middleware.proxy.connections`). With more, :mod:`middleware.supervisor` binds the
listening socket once and starts that many worker processes; each runs :func:`run_worker`,
which builds its own app (its own store connections, ledger writer and upstream pool) and
serves the shared socket until it is told to stop.

What a worker needs from the others lives in the shared store or is derived from the ledger
key file they all read: consent changes (the consent registry follows the ledger position on
every request), paging cursors (sealed under a key derived from the key file's data
secret), idempotency tags, audit keys and open break-the-glass sessions
(:mod:`middleware.storage.breakglass_sqlite`). Rate limits, metrics and the connection cap are
per worker (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection
from typing import Final

import uvicorn

from middleware.errors import GatewayError, SettingsError
from middleware.forwarded import ForwardedFor
from middleware.logging import configure_logging
from middleware.ops.scrape import parse_networks
from middleware.settings import Settings
from middleware.types import ASGIApp

__all__ = [
    "GC_THRESHOLDS",
    "READY",
    "STARTUP_FAILED",
    "collect_less",
    "run_worker",
    "serve",
    "worker_count",
]

#: Exit status of a process that could not start (a settings or store problem).
STARTUP_FAILED: Final = 2
#: What a worker sends its supervisor once it accepts connections.
READY: Final = b"ready"
#: The cyclic garbage collector's thresholds while serving (CPython's are 700, 10, 10).
#: Measured through real HTTP at 16 connections (docs/performance.md, "Gateway
#: throughput"): at 700 the first generation was collected every ~25 reads, 11-20 us of CPU
#: per read; at 7,000 once or never in 3,000 reads. Ten times the threshold, a hundred times
#: fewer collections: what filled the generation was the objects of requests in flight,
#: not garbage (reference counting frees a finished request's).
GC_THRESHOLDS: Final = (7000, 10, 10)


def worker_count(settings: Settings) -> int:
    """The number of worker processes: ``settings.workers`` (default 1), or when it is 0 one
    per CPU this process may run on (its affinity mask: a cgroup CPU quota is not seen, so a
    1-CPU container on a large node counts the node's CPUs; docs/operations.md). A
    ``memory:`` store lives in one process's memory, so it is always served by one (the
    settings refuse an explicit count above 1 with it)."""
    if settings.store.startswith("memory:"):
        return 1
    if settings.workers > 0:
        return settings.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux: every CPU
        return max(1, os.cpu_count() or 1)


def serve(settings: Settings) -> int:
    """Serve until stopped (SIGINT or SIGTERM); the exit status (0 stopped, 1 a worker died,
    2 bad settings, 3 a store that would not open: docs/operations.md)."""
    workers = worker_count(settings)
    if workers == 1:
        return _serve_here(settings)
    from middleware.supervisor import Supervisor  # noqa: PLC0415 - only for several workers

    return Supervisor(settings, workers).run()


def collect_less() -> None:
    """Set the garbage collector's :data:`GC_THRESHOLDS` for this serving process (cycles
    are still collected, after ten times as many allocations)."""
    gc.set_threshold(*GC_THRESHOLDS)


def _config(settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration over a newly built app; raises SettingsError/GatewayError when
    the app cannot be built."""
    from middleware.app import create_app  # noqa: PLC0415
    from middleware.proxy.connections import connection_cap, guarded_protocol  # noqa: PLC0415

    app: ASGIApp = create_app(settings)
    trusted = parse_networks(settings.forwarded_allow_ips)
    if trusted:
        # The client address from X-Forwarded-For, the TCP peer kept beside it (see
        # middleware.forwarded); uvicorn's own proxy_headers is off below.
        app = ForwardedFor(app, trusted)
    # httptools, with a deadline for request headers and a connection cap (uvicorn has
    # neither): see middleware.proxy.connections.
    protocol = guarded_protocol(settings.header_timeout, connection_cap(settings.max_connections))
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        # Never uvicorn's ProxyHeadersMiddleware: it accepts any text as the address, takes
        # the scheme from X-Forwarded-Proto, and leaves no trace of the TCP peer.
        proxy_headers=False,
    )


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, telling the supervisor on ``ready`` once it serves (uvicorn has no
    hook for that: its main loop starts right after the sockets accept)."""

    def __init__(self, config: uvicorn.Config, ready: Connection) -> None:
        super().__init__(config)
        self._ready = ready

    async def main_loop(self) -> None:
        self._ready.send_bytes(READY)
        self._ready.close()
        await super().main_loop()


def _serve_here(settings: Settings) -> int:
    try:
        server = uvicorn.Server(_config(settings))
    except (SettingsError, GatewayError) as exc:
        print(f"consentry: cannot start: {exc}", file=sys.stderr)
        return STARTUP_FAILED
    # uvicorn re-raises the signal it stopped for once the server is down, into the handler
    # in place before it ran: with this no-op one a SIGTERM stop exits 0 (not 143), as a stop
    # of several workers does (docs/operations.md).
    previous = signal.signal(signal.SIGTERM, _stopped)
    collect_less()
    try:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during the graceful stop
            server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else STARTUP_FAILED


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM after the server stopped for it: nothing left to do (the caller returns 0)."""


def run_worker(
    settings: Settings, listener: socket.socket, ready: Connection, lifeline: Connection
) -> None:
    """One worker process (the target :mod:`middleware.supervisor` spawns): serve
    ``listener`` until SIGTERM/SIGINT, or until ``lifeline`` closes (the supervisor is gone).
    Sends :data:`READY` on ``ready`` once it accepts connections; exits with
    :data:`STARTUP_FAILED` when it cannot start."""
    configure_logging(settings.log_level)
    try:
        server = _AnnouncingServer(_config(settings), ready)
    except (SettingsError, GatewayError) as exc:
        print(f"consentry: cannot start: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILED)

    collect_less()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # EOF on the lifeline: the supervisor died without stopping us; stop as for SIGTERM.
        loop.add_reader(lifeline.fileno(), _stop, server, loop, lifeline)
        await server.serve(sockets=[listener])

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(main())
    if not server.started:
        sys.exit(STARTUP_FAILED)


def _stop(server: uvicorn.Server, loop: asyncio.AbstractEventLoop, lifeline: Connection) -> None:
    loop.remove_reader(lifeline.fileno())
    server.should_exit = True
