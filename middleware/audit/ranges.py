"""Read a ledger's leaves and evidence range by range, for the commands that walk all of it.

``consentry audit reindex`` and ``consentry audit retention`` used to read the whole log,
evidence included, into memory at once; :func:`read_ranges` holds at most two ranges (the
one being used and the next, read meanwhile so that the store's I/O overlaps the caller's
work). Each range is read with ``leaves(start, end)`` and ``evidence_range(start, end)``
(``LogStore``); entries appended after ``size`` was taken are not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from middleware.ledger.entry import Evidence

__all__ = ["RangeSource", "read_ranges"]

Range = tuple[int, list[bytes], dict[int, Evidence]]


class RangeSource(Protocol):
    """What :func:`read_ranges` reads of a ledger store."""

    async def leaves(self, start: int, end: int) -> list[bytes]: ...

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]: ...


async def _read(store: RangeSource, start: int, end: int) -> Range:
    leaves = await store.leaves(start, end)
    return start, leaves, await store.evidence_range(start, end)


async def read_ranges(store: RangeSource, size: int, step: int) -> AsyncIterator[Range]:
    """``(start, leaves, evidence by index)`` of ``[0, size)`` in ranges of ``step``, in
    order; ``evidence`` lacks the entries whose evidence was removed."""
    if step < 1:
        raise ValueError("step must be positive")
    pending: asyncio.Task[Range] | None = None
    try:
        for start in range(0, size, step):
            if pending is None:
                pending = asyncio.ensure_future(_read(store, start, min(start + step, size)))
            current = await pending
            following = start + step
            pending = (
                asyncio.ensure_future(_read(store, following, min(following + step, size)))
                if following < size
                else None
            )
            yield current
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
