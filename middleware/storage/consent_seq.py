"""The consent announcements of a SQLite store: one word in ``<store>.consent-seq``.

Every process of one SQLite store (the workers of ``consentry serve``, other gateways on the
same file, the CLI) maps this file. A log store writing a batch that holds ``consent`` or
``consent-revoke`` entries stores in it, inside its append transaction (so under SQLite's write
lock, before ``COMMIT``), the *mark* of the batch's latest consent entry: its ledger index
plus one. A consent registry reads the word before each decision (one ``struct`` unpack of
shared memory and one ``fstat``) instead of the ledger's consent position, and reads the
ledger only when the mark is beyond what it knows (:mod:`middleware.consent.registry` states
what it may conclude and proves it).

What the registry relies on, and what makes each hold:

- *Announced before committed.* The word is written before the ``COMMIT`` of the entry it
  announces, so a process dying after its commit leaves it announced; one dying before leaves
  an announcement of an entry that never committed (readers then read the ledger until the
  ledger has grown past that index: the safe direction, briefly slower).
- *Never below a committed consent.* Writers store their mark under SQLite's write lock, where
  their entries are the newest of the log, so the word never drops below the mark of a
  committed consent entry (an assignment, not a maximum: a mark of an entry that never
  committed, or a garbage value, is overwritten by the next consent write). A process opening
  the store for writing sets the word to the ledger's size under that lock
  (:meth:`ConsentSeq.settle`): no committed consent's mark is above the size, and a word left
  above it (an entry that never committed, a file restored beside an older database) stops
  sending every decision to the ledger.
- *One file for every process.* A file deleted or replaced (``nlink`` 0) is noticed by a reader
  after it read the word (that read then counts for nothing: the ledger is read) and by a
  writer before and after it announces; both map the file now at the path (created if missing).
  The one window left: the file deleted *while* a consent write commits, between the writer's
  last check and its ``COMMIT`` (a millisecond), and a process that opened the new file read
  the ledger before that commit: it misses the change until the next one. Do not delete the
  file while the store is in use (docs/operations.md). Truncating it makes the processes that
  map it die of ``SIGBUS`` at their next read, unless a process opening the store grows it
  back first: that one sets the word to the ledger's size at once (above what the running
  processes know, so they read the ledger), but a decision in the microseconds between the
  growth (zero) and the setting trusts a zero word and can miss a change committed before the
  truncation, until the next consent change.
- *Every writer announces.* Every process appending to the store runs this code: a process
  of an earlier version appends consent entries unannounced (upgrades stop every process of
  the store first), and a file moved away, overwritten or copied over while processes map it
  can hide changes from them (docs/operations.md says to leave it alone).
- *Whole words.* The word is 8 aligned bytes in native order, stored and loaded by one
  ``memcpy`` of 8 bytes (CPython's native ``q`` format), one instruction on x86-64 and
  AArch64, so a reader never sees half of a store.

A file this process cannot use (a directory at the path, another owner's file mode 0600, a
file system that cannot map it) fails safe. Reading: :meth:`ConsentSeq.announced` answers
None, logged once, and the registry reads the ledger's position before every decision, as
before the file existed. Writing: :meth:`ConsentSeq.announce` raises
:class:`~middleware.errors.ServiceUnavailable` and the append rolls back, because another
process that can map the file would not see the change; :func:`announcing` names the batch's
consent entries as the refused ones, so only their appenders get the 503 and the ledger
writer appends the batch's other entries (audit entries of other requests) again without
them. It tries the file again at each write.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.refused import EntriesRefused
from middleware.logging import get_logger
from middleware.storage.sidecar import beside, open_beside

__all__ = ["ConsentSeq", "announcing"]

_WORD: Final = struct.Struct("q")  # native order and size: one memcpy (module docstring)
_SIZE: Final = _WORD.size
_CONSENT_KINDS: Final = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})
#: How often a writer re-maps the file while it keeps being replaced under it.
_ATTEMPTS: Final = 3

Mapping = tuple[mmap.mmap, int]


def announcing(
    seq: ConsentSeq | None,
    batch: Sequence[NewEntry],
    body: Callable[[sqlite3.Connection], list[AppendResult]],
) -> Callable[[sqlite3.Connection], list[AppendResult]]:
    """``body``, an append transaction's work for ``batch``, followed (still in the
    transaction, before its ``COMMIT``) by the announcement in ``seq`` of the latest consent
    entry it appended; ``body`` itself when there is nothing to announce (no file, no consent
    entry in the batch: one pass over the batch's kinds). An announcement refused raises
    :class:`~middleware.ledger.refused.EntriesRefused` naming the batch's new consent entries
    (the transaction rolls back; the writer appends the other entries again without them)."""
    if seq is None or not any(entry.kind in _CONSENT_KINDS for entry in batch):
        return body

    def announced(conn: sqlite3.Connection) -> list[AppendResult]:
        results = body(conn)
        new = [
            (position, result.index + 1)
            for position, (entry, result) in enumerate(zip(batch, results, strict=True))
            if entry.kind in _CONSENT_KINDS and not result.duplicate
        ]
        if new:  # none: every consent entry was a duplicate, already announced when recorded
            try:
                seq.announce(max(mark for _, mark in new))
            except ServiceUnavailable as exc:
                # Only these are refused: the writer appends the batch's others again.
                refused = frozenset(position for position, _ in new)
                raise EntriesRefused(str(exc), refused) from exc
        return results

    return announced


class ConsentSeq:
    """The announcement word of the SQLite store at ``database`` (module docstring). Opened on
    first use; :meth:`announced` runs on the event loop, :meth:`announce` on the store's
    writer thread; :meth:`close` after both stopped."""

    def __init__(self, database: Path) -> None:
        self.database = database
        # The real file's name, links resolved, and owned like it: storage.sidecar says why.
        self.path = beside(database, ".consent-seq")
        # (mapping, fd) read in one attribute load by the hot path; replaced, never closed,
        # while the process runs (a closed fd's number could name another file by then).
        self._mapped: Mapping | None = None
        self._retired: list[Mapping] = []
        self._lock = threading.Lock()
        self._tried = False
        self._warned = False
        self._closed = False

    def announced(self) -> int | None:
        """The mark announced last (0: none yet), or None when it cannot be trusted this time
        (the file unusable, or deleted or replaced since it was mapped: re-mapped for the next
        call). Read the word, then check the file: a change committed before the read was
        announced in this file or, if it was replaced, is caught by the check."""
        mapped = self._mapped
        if mapped is None:
            return self._first_read()
        try:
            mark: int = _WORD.unpack_from(mapped[0])[0]
            if os.fstat(mapped[1]).st_nlink:
                return mark
        except (OSError, ValueError) as exc:  # ValueError: closed with the store
            self._unusable(exc)
            return None
        self._remap(mapped)
        return None

    def announce(self, mark: int) -> None:
        """Store ``mark`` (the latest consent entry's index + 1) as the latest announced.
        Call inside the append transaction, before ``COMMIT``. Raises
        :class:`ServiceUnavailable` when the file cannot be used (module docstring)."""
        try:
            with self._lock:
                for _ in range(_ATTEMPTS):
                    mapped = self._mapped or self._map()
                    if not os.fstat(mapped[1]).st_nlink:
                        self._remap_locked(mapped)
                        continue
                    _WORD.pack_into(mapped[0], 0, mark)
                    if os.fstat(mapped[1]).st_nlink:  # still the file at the path
                        return
                raise OSError("the file keeps being replaced")
        except (OSError, ValueError) as exc:
            get_logger("consentry.consent").error(
                "consent counter file unusable; consent changes refused",
                path=str(self.path),
                error=_describe(exc),
            )
            raise ServiceUnavailable("consent counter file unusable") from exc

    def settle(self, size: int) -> None:
        """Store ``size``, the ledger's size, as the word. Call only under the store's write
        lock (inside ``BEGIN IMMEDIATE``), where no announcement is in flight: every entry
        announced before has committed (index below ``size``, mark at most ``size``) or never
        will, so the word stays at or above every committed consent entry's mark. A word
        above it (an announcement whose entry never committed, a file restored beside an
        older database) no longer sends every decision to the ledger until the log grows past
        it; one below it (zeroed, regrown after a truncation) sends each process's next
        decision to the ledger once. A file that cannot be used is left as it is (the next
        :meth:`announced` or :meth:`announce` reports it)."""
        try:
            with self._lock:
                mapped = self._mapped or self._map()
                if _WORD.unpack_from(mapped[0])[0] != size:
                    _WORD.pack_into(mapped[0], 0, size)
        except (OSError, ValueError):
            return

    def close(self) -> None:
        """Unmap and close every mapping this object made (idempotent)."""
        with self._lock:
            self._closed = True
            mapped, self._mapped = self._mapped, None
            for mm, fd in [*self._retired, *([mapped] if mapped else [])]:
                mm.close()
                os.close(fd)
            self._retired.clear()

    def _first_read(self) -> int | None:
        if self._tried or self._closed:
            return None
        self._tried = True
        try:
            with self._lock:
                if self._mapped is None:
                    self._map()
        except (OSError, ValueError) as exc:
            self._unusable(exc)
            return None
        return self.announced()

    def _map(self) -> Mapping:
        """Open (create) and map the file now at the path; the lock is held."""
        if self._closed:
            raise ValueError("closed")
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        fd = open_beside(self.path, self.database, flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"not a regular file: {self.path}")
            if os.fstat(fd).st_size < _SIZE:
                # Grows only (zero-filled: no announcement yet); another process that grew it
                # first and wrote a mark keeps it, ftruncate to the same size changes nothing.
                os.ftruncate(fd, _SIZE)
            mapped = (mmap.mmap(fd, _SIZE), fd)
        except BaseException:
            os.close(fd)
            raise
        self._mapped = mapped
        return mapped

    def _remap(self, stale: Mapping) -> None:
        try:
            with self._lock:
                self._remap_locked(stale)
        except (OSError, ValueError) as exc:
            self._unusable(exc)

    def _remap_locked(self, stale: Mapping) -> None:
        if self._mapped is stale:  # else another thread re-mapped it already
            self._retired.append(stale)
            self._mapped = None
            self._map()

    def _unusable(self, exc: BaseException) -> None:
        if not self._warned and not self._closed:
            self._warned = True
            get_logger("consentry.consent").warning(
                "consent counter file unusable; the ledger's consent position is read "
                "before every decision instead",
                path=str(self.path),
                error=_describe(exc),
            )


def _describe(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {text}"
