"""A bounded memo keyed by object identity: what was made of the last few objects.

The token verifier hands out the same :class:`~middleware.auth.identity.Identity` for a token
it verified before, and the decision cache the same
:class:`~middleware.consent.decide.Decision` for the same question; both are frozen, so what is
made of one of them (a pipeline Caller, audit facts) need be made only once per object.
:class:`RecentByIdentity` remembers it for the last ``size`` objects. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RecentByIdentity"]

K = TypeVar("K")
V = TypeVar("V")


class RecentByIdentity(Generic[K, V]):
    """``make(key)`` remembered for the last ``size`` key objects, told apart by ``is``.

    Contract: ``make`` must be a pure function of a key that never changes (a frozen object):
    the value remembered is the one ``make(key)`` would return again. Two equal but distinct
    objects each get their own call to ``make``. Each entry holds its key object alive, so no
    other object can be given its ``id()`` (and so its value) while the entry stands; entries
    leave oldest first (FIFO: a hit moves nothing). A ``make`` that raises remembers nothing.
    """

    __slots__ = ("_entries", "made")

    def __init__(self, make: Callable[[K], V], size: int) -> None:
        if size < 1:
            raise ValueError("a RecentByIdentity remembers at least one object")
        entries: dict[int, tuple[K, V]] = {}

        # A closure over locals rather than a method: the hit path is one frame, one dict
        # lookup and one `is` (70 ns; a method reading self's attributes 94 ns), and users
        # bind it as their own function (caller_of).
        def made(key: K) -> V:
            hit = entries.get(id(key))
            # While an entry stands it holds its key, so a live `key` with this id is that
            # very object; the `is` keeps that true should an entry ever stop holding it.
            if hit is not None and hit[0] is key:
                return hit[1]
            value = make(key)
            entries[id(key)] = (key, value)
            if len(entries) > size:
                # Oldest first out: a dict iterates in insertion order. A plain dict rather
                # than an OrderedDict because hits are per request and misses rare: measured,
                # a hit 46 ns (OrderedDict 61, an LRU's move_to_end 102), a miss's eviction
                # 480 ns (OrderedDict 240) beside a make of 2-4 us.
                del entries[next(iter(entries))]
            return value

        self._entries = entries
        self.made: Callable[[K], V] = made
        """The value made of ``key``: remembered, or ``make(key)`` now (then remembered)."""

    def holds(self, key: K) -> bool:
        """True when ``key`` (this very object) has an entry."""
        hit = self._entries.get(id(key))
        return hit is not None and hit[0] is key

    def __len__(self) -> int:
        return len(self._entries)
