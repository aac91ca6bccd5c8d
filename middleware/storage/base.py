"""The storage contract every backend honours."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Store"]


class Store(Protocol):
    """A gateway store.

    Contract: :meth:`ping` returns only when the store can serve reads and writes now, and
    raises :class:`~middleware.errors.ServiceUnavailable` otherwise; :meth:`close` is idempotent.
    """

    name: str

    async def ping(self) -> None:
        """Check the store answers; raise ``ServiceUnavailable`` if it does not."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
