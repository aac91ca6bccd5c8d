"""What a gateway replica publishes as its witnessed checkpoint, and where it keeps it.

:class:`Publication` holds the newest checkpoint note a quorum of witnesses cosigned
(:mod:`middleware.ledger.witnessing` offers each one it gets) and never goes back to an older
one. Without a store (``kept`` None, tests) that note lives in this object only.

With ``kept`` (the gateway passes the log's store), a quorum's note is kept in the store
(:mod:`middleware.storage.ledger_witnessed`: append-only by size, the first note of a size
stays) *before* it is published, and :meth:`Publication.current` reads the store's newest on
every call: one indexed read; a note already checked is compared, not verified again. So:

- every replica on one store publishes the same checkpoint, and a client switching replicas
  never sees it go backwards: the staleness bound is the store's commit (a note is published
  by anyone only once it is kept, and each call reads what is committed);
- a restarted replica publishes what the store holds at its first call, witnesses down or not;
- a kept note is published only once verified again
  (:func:`~middleware.ledger.witnessed_store.refusal`: the witnesses' keys, the quorum,
  ``FUTURE_SKEW``, the log's root and signature at that size). One that fails is refused:
  logged (``kept witnessed checkpoint refused`` with its reason code), counted under that code,
  and not checked again while it stays the newest. The replica keeps publishing what it had,
  or its own quorum's note when the store refuses to keep it below a forged larger row
  (availability over agreement while the store holds a forgery);
- when the store cannot be read or written (``store`` counted), the replica publishes what it
  had, or its own quorum's note: a quorum's note is still one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from middleware.errors import ServiceUnavailable
from middleware.ledger.errors import LedgerError
from middleware.ledger.note import NoteVerifier
from middleware.ledger.witnessed_store import KeptWitnessed, refusal
from middleware.logging import get_logger

__all__ = ["Publication"]

_STORE_ERRORS = (ServiceUnavailable, LedgerError, OSError)


class Publication:
    """The newest witnessed checkpoint a replica publishes (module docstring). ``witnesses``
    and ``quorum`` (at least 1) are the policy a kept note is checked against; ``count``
    counts a failure by reason code; ``clock``: POSIX seconds."""

    def __init__(
        self,
        witnesses: Sequence[NoteVerifier],
        quorum: int,
        *,
        kept: Callable[[], Awaitable[KeptWitnessed]] | None,
        count: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._witnesses = tuple(witnesses)
        self._quorum = quorum
        self._kept = kept
        self._count = count
        self._clock = clock
        self._note: str | None = None
        #: The tree size of the note published (0: none).
        self.size = 0
        #: A quorum's note not kept in the store yet: ``(note, size)``.
        self._pending: tuple[str, int] | None = None
        #: The last kept note refused (not verified again on every call).
        self._refused: str | None = None

    async def current(self) -> str | None:
        """The note published now (None: none yet); with ``kept``, the store's newest once
        verified, never older than one published before."""
        if self._kept is None:
            return self._note
        try:
            store = await self._kept()
            kept = await store.witnessed()
        except _STORE_ERRORS:
            self._count("store")  # what we had: still a quorum's note, never older
            return self._note
        if kept is not None and kept[1] not in (self._note, self._refused):
            await self._adopt(store, kept)
        return self._note

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
        note itself when the store cannot keep it, or keeps a newer one that is refused."""
        if self._kept is None or self._pending is None:
            return
        (note, size), self._pending = self._pending, None
        try:
            store = await self._kept()
            kept = await store.keep_witnessed(note)
        except _STORE_ERRORS as exc:
            self._count("store")
            get_logger("consentry.ledger").warning(
                "witnessed checkpoint not kept", size=size, error_type=type(exc).__name__
            )
            kept = False
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
        now = self._clock()
        reason = await refusal(store, kept, self._witnesses, self._quorum, now=now)
        if reason is not None:
            self._refused = note
            self._count(reason)
            get_logger("consentry.ledger").error(
                "kept witnessed checkpoint refused", reason=reason, size=size
            )
        elif size >= self.size:  # again: another call may have published meanwhile
            self._note, self.size = note, size
