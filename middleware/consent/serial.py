"""One change at a time per consent id (or key record) within a process. Pure asyncio.

A signed change applies to one version only (:func:`~middleware.consent.records.signed_change`);
checking the current version and recording the next must not interleave with another change of
the same id, or two requests (a change and its replay, two first key registrations) could both
pass the check. :class:`KeyedLocks` serialises them in this process; replicas sharing a store
are not serialised by it (docs/consent-api.md says so).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["KeyedLocks"]


class KeyedLocks:
    """An ``asyncio.Lock`` per key, held while in use and dropped when nobody waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the ``async with`` block."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
