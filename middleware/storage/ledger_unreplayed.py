"""A log store opened without its replay writes nothing (fail closed).

``open(replay=False)`` skips the replay that checks a log before a store may extend it (only
``consentry audit export`` asks: ``cli_reports.export`` says why reading so weakens nothing).
Such a store must not write either: not an entry, and nothing that would rest on an unchecked
log (an audit key, a shred and its tombstone, index rows, the heartbeat).

:func:`refuse_writes_unreplayed` is the one guard: it wraps each of a store class's
:data:`WRITES` so that, on a store opened so, the call raises :class:`LedgerError`
(:data:`UNREPLAYED`) before it touches the database or checks its arguments. :data:`READS`
is the rest of :class:`~middleware.storage.ledger_base.LogStore`; a test checks that the two
cover the protocol, so a new method has to be classified before a store can have it.
``rebuild_state`` is a read here: it *is* the replay, and rewrites the state row only from
the leaves it has just checked (the store stays refusing all the same).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from middleware.ledger.errors import LedgerError

__all__ = ["READS", "UNREPLAYED", "WRITES", "refuse_writes_unreplayed"]

#: The error text of every write refused (``LedgerError``).
UNREPLAYED = "a log opened without its replay does not write"

#: ``LogStore`` methods that write to the database.
WRITES = frozenset(
    {
        "append",
        "audit_key",
        "shred",
        "shred_entries",
        "reindex",
        "clear_index",
        "probe_commit",
        "keep_witnessed",
    }
)
#: ``LogStore`` methods that only read (``rebuild_state``: see the module docstring).
READS = frozenset(
    {
        "size",
        "state",
        "leaves",
        "leaf_hashes",
        "evidence",
        "evidence_range",
        "chain",
        "latest_consent",
        "consents_after",
        "checkpoint",
        "checkpoints",
        "witnessed",
        "rebuild_state",
        "ping",
        "audit_rows",
        "audit_count",
        "audit_row",
        "audit_key_get",
        "audit_keys_get",
        "shredded_chains",
        "close",
    }
)

S = TypeVar("S", bound=type)


def refuse_writes_unreplayed(cls: S) -> S:
    """Class decorator: each of ``cls``'s :data:`WRITES` raises ``LedgerError(UNREPLAYED)``
    on an instance whose ``_unreplayed`` is true (set by ``open(replay=False)``)."""
    for name in WRITES:
        setattr(cls, name, _guarded(getattr(cls, name)))
    return cls


def _guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._unreplayed:
            raise LedgerError(UNREPLAYED)
        return await method(self, *args, **kwargs)

    return guarded
