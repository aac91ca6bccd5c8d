"""An event loop on a thread of its own, for a store whose callers are synchronous.

The export board's callers (:mod:`middleware.audit.bulk`) call it synchronously, as they call
the SQLite board; :class:`LoopThread` lets an asyncpg pool serve them: the pool lives on this
loop, and :meth:`LoopThread.run` waits for one coroutine there (the caller's thread, often the
app's event loop, blocks for that one round trip, as it does for a SQLite read). The thread
starts on first use and :meth:`LoopThread.close` stops it and closes its loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """One daemon thread running one event loop (module docstring); ``name`` names the
    thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float) -> T:
        """Run ``coro`` on the thread's loop and return its result (its exception is raised
        here); TimeoutError after ``timeout`` seconds (the coroutine is cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._started())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the loop and its thread and close the loop (idempotent; a later :meth:`run`
        starts a new one). Run what must finish on the loop (closing a pool) first."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
