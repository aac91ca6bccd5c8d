"""In-memory store for tests: same contract, nothing durable."""

from __future__ import annotations

from middleware.errors import ServiceUnavailable

__all__ = ["MemoryStore"]


class MemoryStore:
    """A store that lives in the process; ``available`` lets tests simulate an outage."""

    name = "memory"

    def __init__(self) -> None:
        self.available = True

    async def ping(self) -> None:
        if not self.available:
            raise ServiceUnavailable("store unavailable")

    async def close(self) -> None:
        self.available = False
