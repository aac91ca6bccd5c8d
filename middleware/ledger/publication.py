"""What a gateway replica publishes as its witnessed checkpoint, and where it keeps it.

:class:`Publication` holds the newest checkpoint note a quorum of witnesses cosigned
(:mod:`middleware.ledger.witnessing` offers each one it gets) and never goes back to an older
one. Without a store (``kept`` None, tests) that note lives in this object only.

With ``kept`` (the gateway passes the log's store), a quorum's note is kept in the store
(:mod:`middleware.storage.ledger_witnessed`: append-only by size, the first note of a size
stays) *before* it is published, and :meth:`Publication.current` reads the store's newest on
every call: one indexed read; a note already checked is compared, not verified again. So:

- one replica never publishes a checkpoint older than one it published before;
- while the store keeps what a quorum cosigned, every replica on it publishes the same
  checkpoint and a client switching replicas (or a restarted one) never sees it go backwards:
  the staleness bound is the store's commit (a note is published only once it is kept, and
  each call reads what is committed). The one exception is the last bullet: a quorum's note
  the store failed to keep is published by the replica that got it, ahead of the others;
- a restarted replica publishes what the store holds at its first call, witnesses down or not;
- a kept note is published only once verified again
  (:func:`~middleware.ledger.witnessed_store.refusal`: the witnesses' keys, the quorum,
  ``FUTURE_SKEW``, the log's root at that size and its signature by the log's key, or by the
  key the log's key events name for that size after a rotation). One that
  fails is refused: logged (``kept witnessed checkpoint refused`` with its reason code), counted
  under that code, and not checked again while it stays the newest, except a
  ``kept-cosignature`` refusal, checked again every :data:`RECHECK` seconds (a line dated
  ahead of our clock becomes valid as the clock moves on; a bad line is logged and counted
  again). One call checks a new row; concurrent calls wait for its verdict. The replica keeps
  publishing what it had, or its own quorum's note when the store refuses to keep it below a
  forged larger row (availability over agreement while the store holds a forgery);
- when the store cannot be read or written, or fails while a row is checked (``store``
  counted once per witnessing round, :meth:`Publication.settle`, however many reads failed),
  the replica publishes what it had, or its own quorum's note: a quorum's note is still one.
  A quorum's note the store failed to keep stays pending and its write is tried
  again, one write at a time, at the end of each later round (and when a late answer comes),
  until it is kept or a newer quorum's note replaces it. Meanwhile this replica publishes it
  and the others publish the store's newest (older): a client switching replicas can see the
  checkpoint go back until the write succeeds, and so can a replica restarted before then.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from middleware.errors import ServiceUnavailable
from middleware.ledger.errors import LedgerError
from middleware.ledger.note import NoteVerifier
from middleware.ledger.witnessed_store import KeptWitnessed, refusal
from middleware.logging import get_logger

__all__ = ["RECHECK", "Publication"]

_STORE_ERRORS = (ServiceUnavailable, LedgerError, OSError)
#: Seconds before a kept note refused for a cosignature is checked again (module docstring).
RECHECK = 60.0
#: The refusals that may depend on our clock: a cosignature dated over FUTURE_SKEW ahead.
_RECHECKED = frozenset({"kept-cosignature"})


class Publication:
    """The newest witnessed checkpoint a replica publishes (module docstring). ``witnesses``
    and ``quorum`` (at least 1) are the policy a kept note is checked against, with ``log``,
    the log's key (required with ``kept``: ``ValueError``); ``count`` counts a failure by
    reason code (``store``: at :meth:`settle`); ``clock``: POSIX seconds."""

    def __init__(
        self,
        witnesses: Sequence[NoteVerifier],
        quorum: int,
        *,
        kept: Callable[[], Awaitable[KeptWitnessed]] | None,
        log: NoteVerifier | None = None,
        count: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if kept is not None and log is None:
            raise ValueError("a kept note is checked against the log's key: log is required")
        self._witnesses = tuple(witnesses)
        self._log = log
        self._quorum = quorum
        self._kept = kept
        self._count = count
        self._clock = clock
        self._note: str | None = None
        #: The tree size of the note published (0: none).
        self.size = 0
        #: A quorum's note not kept in the store yet: ``(note, size)``.
        self._pending: tuple[str, int] | None = None
        #: The last kept note refused and when to check it again (inf: never).
        self._refused: tuple[str, float] | None = None
        #: One check of a new row at a time; one write of a pending note at a time.
        self._adopting = asyncio.Lock()
        self._keeping = asyncio.Lock()
        #: The store failed since the last :meth:`settle` (a read or a write).
        self._store_failed = False

    def failed(self) -> None:
        """The store failed outside this object (the round's own reads): count it at
        :meth:`settle` like a failure here."""
        self._store_failed = True

    def settle(self) -> None:
        """Count ``store`` once if the store failed since the last call: the witnessing round
        calls this once, so reads (``GET /ledger/checkpoint``, receipts, exports: each calls
        :meth:`current`) during an outage add one a round at most, not one a request."""
        if self._store_failed:
            self._store_failed = False
            self._count("store")

    async def current(self) -> str | None:
        """The note published now (None: none yet); with ``kept``, the store's newest once
        verified, never older than one published before."""
        if self._kept is None:
            return self._note
        try:
            store = await self._kept()
            kept = await store.witnessed()
        except _STORE_ERRORS:
            self._store_failed = True  # what we had: still a quorum's note, never older
            return self._note
        if kept is not None and self._unchecked(kept[1]):
            async with self._adopting:  # single flight: the others wait for its verdict
                if self._unchecked(kept[1]):
                    await self._adopt(store, kept)
        return self._note

    def _unchecked(self, note: str) -> bool:
        """``note`` is neither published nor refused (a refusal still standing)."""
        refused = self._refused
        if note == self._note:
            return False
        return refused is None or refused[0] != note or self._clock() >= refused[1]

    def offer(self, note: str, size: int) -> None:
        """A quorum cosigned ``note`` (tree size ``size``): publish it, or with ``kept`` make
        it pending for :meth:`keep`. An older note is dropped (a replica's lagging read); with
        ``kept``, so is another of the size published (the store keeps the first of a size:
        a late cosignature stays out, on every replica alike)."""
        if size < self.size or (self._kept is not None and size == self.size):
            return
        if self._kept is None:
            self._note, self.size = note, size
        else:
            self._pending = (note, size)

    async def keep(self) -> None:
        """Keep the pending note in the store, then publish the store's newest; the pending
        note itself when the store keeps a newer one that is refused. When the write fails
        the note stays pending (this replica publishes it meanwhile) and the next call writes
        it again (module docstring)."""
        if self._kept is None:
            return
        async with self._keeping:  # rounds and late answers call this: one write at a time
            pending = self._pending
            if pending is None:
                return
            note, size = pending
            try:
                store = await self._kept()
                kept = await store.keep_witnessed(note)
            except _STORE_ERRORS as exc:
                self._store_failed = True
                get_logger("consentry.ledger").warning(
                    "witnessed checkpoint not kept yet", size=size, error_type=type(exc).__name__
                )
                if size > self.size:  # still a quorum's note
                    self._note, self.size = note, size
                return
            if self._pending is pending:  # kept, or the store holds this size or larger
                self._pending = None
            if not kept:  # another replica kept this size or a larger one first: theirs
                await self.current()
            if size > self.size or (kept and size == self.size):
                self._note, self.size = note, size

    async def _adopt(self, store: KeptWitnessed, kept: tuple[int, str]) -> None:
        """Publish the store's newest row ``kept`` if it verifies and is not older than what
        is published; refuse it (logged, counted) if it does not verify."""
        size, note = kept
        if size < self.size:
            return
        log, now = self._log, self._clock()
        if log is None:  # never: __init__ requires it with kept; nothing unchecked published
            return
        try:
            reason = await refusal(store, kept, self._witnesses, self._quorum, log=log, now=now)
        except _STORE_ERRORS:
            self._store_failed = True  # what we had; the row is checked again at the next call
            return
        if reason is not None:
            self._refused = (note, now + RECHECK if reason in _RECHECKED else math.inf)
            self._count(reason)
            get_logger("consentry.ledger").error(
                "kept witnessed checkpoint refused", reason=reason, size=size
            )
        elif size >= self.size:  # again: another call may have published meanwhile
            self._note, self.size = note, size
