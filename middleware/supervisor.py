"""Several worker processes on one listening socket: ``consentry serve --workers N``.

The supervisor binds the listening socket once and starts ``N`` workers
(:func:`middleware.serving.run_worker`) that all accept on it; the kernel hands each
connection to one of them. Workers are *spawned* (a fresh interpreter each, multiprocessing's
``spawn``), never forked, so no worker inherits another's threads, locks or connections; the
socket and two pipes are the only things passed.

- **start**: the first worker starts alone and the others only once it serves: it creates what
  the others must then share (the ledger key file on a first run, the store's tables) and
  replays the log once, so no two processes race to create either. A worker that cannot start
  stops the whole serve with its exit status (2 bad settings, 3 a store it cannot open),
  naming the cause on standard error.
- **a worker dies** while the gateway runs: the supervisor stops the others and exits with
  status 1, for the service manager (systemd, Kubernetes, compose) to restart the gateway. It
  does not restart the worker itself: a worker dies for a reason (a store it cannot write, a
  full disk, memory) that a restart loop would hide while every Nth request fails.
- **stop**: SIGTERM or SIGINT is passed to every worker as SIGTERM; each finishes the requests
  it has, commits its ledger queue and closes its stores (uvicorn's graceful shutdown and the
  app's lifespan), then the supervisor exits 0. A worker still running ``upstream_deadline`` +
  :data:`STOP_MARGIN` seconds later is killed.
- **the supervisor dies** (SIGKILL): each worker sees its lifeline pipe close and stops as for
  SIGTERM, so no worker outlives it serving alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from multiprocessing.reduction import ForkingPickler
from types import FrameType, MappingProxyType
from typing import Any, Final

from middleware.logging import get_logger
from middleware.serving import READY, STARTUP_FAILED, run_worker
from middleware.settings import Settings

__all__ = ["STOP_MARGIN", "Supervisor"]

#: Seconds a stopping worker gets beyond ``upstream_deadline`` (its longest exchange).
STOP_MARGIN: Final = 10.0
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def read_only(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    """A read-only view of ``items`` (how a spawned worker rebuilds a settings mapping)."""
    return MappingProxyType(items)


def _reduce_mapping(mapping: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return read_only, (dict(mapping),)


# Settings hold read-only mappings (upstream_headers); the spawned worker gets a copy.
ForkingPickler.register(MappingProxyType, _reduce_mapping)


@dataclass
class _Worker:
    process: SpawnProcess
    ready: Connection
    serving: bool = False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (as uvicorn binds its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _startup_status(workers: list[_Worker]) -> int:
    """The exit status of a serve whose worker could not start: that worker's own (2 for bad
    settings, 3 for a store it could not open, as with one process), else 2."""
    for worker in workers:
        worker.process.join(1.0)
        code = worker.process.exitcode
        if code is not None and code > 0:
            return code
    return STARTUP_FAILED


class Supervisor:
    """Runs ``workers`` worker processes of the gateway ``settings`` describe (module
    docstring); :meth:`run` returns the exit status."""

    def __init__(self, settings: Settings, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.settings = settings
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._signalled: int | None = None

    def run(self) -> int:
        """Bind, start the workers, watch them until a signal or a death (module
        docstring)."""
        try:
            listener = bind(self.settings.host, self.settings.port)
        except OSError as exc:
            print(f"consentry: cannot start: {exc}", file=sys.stderr)
            return STARTUP_FAILED
        wake_reader, wake_writer = socket.socketpair()
        wake_writer.setblocking(False)
        lifeline, keep_alive = self._context.Pipe(duplex=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous_fd = signal.set_wakeup_fd(wake_writer.fileno())
        workers: list[_Worker] = []
        try:
            return self._supervise(listener, lifeline, workers, wake_reader)
        finally:
            self._stop(workers)
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for closable in (listener, wake_reader, wake_writer, lifeline, keep_alive):
                closable.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signalled = signum

    def _stopping(self) -> bool:
        """True once SIGTERM or SIGINT has come (set by the handler between any two lines)."""
        return self._signalled is not None

    def _spawn(self, listener: socket.socket, lifeline: Connection) -> _Worker:
        ready, ready_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(self.settings, listener, ready_writer, lifeline),
            name="consentry-worker",
        )
        process.start()
        ready_writer.close()  # the worker holds the writing end now
        return _Worker(process, ready)

    def _supervise(
        self,
        listener: socket.socket,
        lifeline: Connection,
        workers: list[_Worker],
        wake: socket.socket,
    ) -> int:
        log = get_logger()
        workers.append(self._spawn(listener, lifeline))
        if not self._await_serving(workers, wake):
            return 0 if self._signalled is not None else _startup_status(workers)
        workers.extend(self._spawn(listener, lifeline) for _ in range(self.workers - 1))
        if not self._await_serving(workers, wake):
            return 0 if self._signalled is not None else _startup_status(workers)
        pids = ", ".join(str(w.process.pid) for w in workers)
        log.info(
            "serving",
            reason=f"{self.workers} workers (pids {pids})",
            host=self.settings.host,
            port=listener.getsockname()[1],
        )
        while not self._stopping():
            done = self._wait(workers, wake)
            if self._stopping():  # the signal came with the end: workers are stopping
                break
            ended = [w for w in workers if w.process.sentinel in done]
            if ended:
                for worker in ended:
                    process = worker.process
                    process.join(1.0)  # reaped: its exit status is known
                    log.error(
                        "worker exited, stopping the gateway",
                        reason=f"worker pid {process.pid} exit status {process.exitcode}",
                    )
                return 1
        return 0

    def _wait(self, workers: Iterable[_Worker], wake: socket.socket) -> list[Any]:
        """Block until a worker ends or a signal arrives; the sentinels (or pipes) ready."""
        sentinels: list[Any] = [w.process.sentinel for w in workers]
        ready = wait([*sentinels, wake])
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                wake.recv(64)  # the signal numbers written by set_wakeup_fd
        return [r for r in ready if r is not wake]

    def _await_serving(self, workers: list[_Worker], wake: socket.socket) -> bool:
        """Wait until every worker serves (True), or one ends or a signal comes (False)."""
        while self._signalled is None:
            starting = [w for w in workers if not w.serving]
            if not starting:
                return True
            watched: list[Any] = [w.ready for w in starting]
            watched += [w.process.sentinel for w in workers]
            ready = wait([*watched, wake])
            if wake in ready:
                wake.recv(64)
            for worker in starting:
                if worker.ready in ready:
                    try:
                        worker.serving = worker.ready.recv_bytes() == READY
                    except EOFError:
                        worker.serving = False
                    if not worker.serving:
                        return False
            if any(w.process.sentinel in ready for w in workers):
                return False
        return False

    def _stop(self, workers: list[_Worker]) -> None:
        """SIGTERM every live worker, wait for each, kill what outlives the grace period."""
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self.settings.upstream_deadline + STOP_MARGIN
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                get_logger().error(
                    "worker did not stop, killing it", reason=f"pid {worker.process.pid}"
                )
                worker.process.kill()
                worker.process.join()
            worker.ready.close()
