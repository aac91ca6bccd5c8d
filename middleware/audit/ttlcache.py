"""A bounded LRU cache whose entries expire: the audit hot path's memory of store answers.

The recorder's pseudonyms (by ``Patient/<id>``) and the patients' evidence keys (by pseudonym,
:class:`~middleware.audit.evidence.PatientKeys`) are both answers of a store that change only
when a patient is crypto-shredded; both are kept here for a bounded time so a shred made by
another process is seen within it, and a bounded number so memory stays flat.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["TtlCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """The last ``max_size`` values put, each for ``ttl`` seconds of ``clock`` after the time
    it was put at (a use does not extend it). :meth:`get` of an expired value is a miss and
    drops it; a hit makes the value the most recently used; :meth:`put` beyond ``max_size``
    drops the least recently used. Raises :class:`ValueError` unless both are positive."""

    __slots__ = ("_clock", "_items", "_max", "_ttl")

    def __init__(self, max_size: int, ttl: float, clock: Callable[[], float]) -> None:
        if max_size < 1 or ttl <= 0:
            raise ValueError("max_size and ttl must be positive")
        self._max = max_size
        self._ttl = ttl
        self._clock = clock
        #: key -> (value, the clock's time it was put at)
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, now: float | None = None) -> V | None:
        """The value of ``key`` if put less than ``ttl`` seconds before ``now`` (default: the
        clock's time), else None (no I/O)."""
        hit = self._items.get(key)
        if hit is None:
            return None
        if (self._clock() if now is None else now) - hit[1] >= self._ttl:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: K, value: V, at: float | None = None) -> None:
        """Keep ``value`` for ``key`` as of ``at`` (default: the clock's time), the most
        recently used; the least recently used goes beyond ``max_size``."""
        items = self._items
        items[key] = (value, self._clock() if at is None else at)
        items.move_to_end(key)
        if len(items) > self._max:
            items.popitem(last=False)

    def drop(self, key: K) -> None:
        """Forget ``key`` (no error when it is not kept)."""
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
