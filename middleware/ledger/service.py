"""The ledger as the app sees it: one store, one writer, opened once, on first need.

The store is opened (and replayed, so a forged log refuses to open) and the writer started
lazily, under a lock, by the first caller of :meth:`LedgerService.writer`: ASGI servers run the
lifespan startup (which calls it eagerly), test transports do not. If opening fails, the
caller gets :class:`~middleware.errors.ServiceUnavailable` and the next caller tries again:
nothing that needs the ledger proceeds without it.

A writer whose task ended on its own (a crash: an error escaped it, or it was cancelled) is
never kept: the next caller logs it and starts a new writer on the same store, so one bug does
not leave every later append failing. :meth:`LedgerService.admit` is the cheap check made
before any work that calls the upstream (pushback: a full queue is refused at once), and
:meth:`LedgerService.check_commit` is readiness's proof that the ledger can commit now.

Before the writer signs anything, the log's identity is checked against the key and origin
(:mod:`middleware.ledger.identity`): a log another key or origin signed is never continued.
The refusal is the cause of the ``ServiceUnavailable`` raised: start-up stops with its
message (``app_health``); to a request it is one more reason the ledger is unavailable.

The service also owns the log's one in-memory tree (:attr:`LedgerService.tree`, a
:class:`~middleware.ledger.prooftree.ProofTree`) for whoever needs proofs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from middleware.errors import ServiceUnavailable, SettingsError
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import LedgerError
from middleware.ledger.identity import LedgerIdentityError, check_identity
from middleware.ledger.keyfile import LedgerKey
from middleware.ledger.prooftree import ProofTree
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import CommitObserver, LedgerWriter
from middleware.logging import get_logger
from middleware.storage.ledger_base import LogStore

__all__ = ["LedgerService"]


class LedgerService:
    """Owns the log store and the group-commit writer for the app's lifetime.

    ``key`` signs checkpoints for ``origin``; ``origin_stated`` is False when the origin was
    not written in the key file (see :class:`~middleware.ledger.keyfile.LedgerKey`).
    ``on_accepted`` runs once, after the store opened and its identity check accepted the key,
    before anything is signed (the app writes a new key file there); a
    :class:`~middleware.errors.SettingsError` from it fails that start like a refused identity.
    """

    def __init__(
        self,
        open_store: Callable[[], Awaitable[LogStore]],
        key: SigningKey,
        *,
        origin: str,
        origin_stated: bool = True,
        max_batch: int = 256,
        max_pending: int = 10_000,
        max_wait: float = 0.0,
        observer: CommitObserver | None = None,
        on_accepted: Callable[[], None] | None = None,
    ) -> None:
        self._open_store = open_store
        self._on_accepted = on_accepted
        self._observer = observer
        self.key = key
        self.origin = origin
        self._identity = LedgerKey(key, origin, stated=origin_stated)
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_wait = max_wait
        self._store: LogStore | None = None
        self._writer: LedgerWriter | None = None
        self._lock = asyncio.Lock()
        self._last_probe: float | None = None
        #: The one in-memory tree of the log: ``/ledger`` proofs and the witnessing task
        #: share it (:mod:`middleware.ledger.prooftree`), so it is built and held once.
        self.tree = ProofTree()

    async def writer(self) -> LedgerWriter:
        """The running writer; opens the store and starts the writer on first use. A log
        this key and origin may not continue raises :class:`ServiceUnavailable` whose
        ``__cause__`` is the :class:`~middleware.ledger.identity.LedgerIdentityError` (a
        :class:`~middleware.errors.SettingsError`: start-up stops with its message)."""
        try:
            return await self._start()
        except LedgerIdentityError as exc:
            raise ServiceUnavailable("ledger unavailable") from exc

    async def _start(self) -> LedgerWriter:
        writer = self._writer
        if writer is not None and not writer.crashed:
            return writer
        async with self._lock:
            if self._writer is not None and self._writer.crashed:
                get_logger("consentry.ledger").error(
                    "ledger writer stopped; starting a new one", error_type=self._writer.cause
                )
                self._writer = None
            if self._writer is None:
                try:
                    store = self._store or await self._open_store()
                    self._store = store
                    await check_identity(store, self._identity)
                    self._accepted()
                    writer = LedgerWriter(
                        store,
                        self.key,
                        origin=self.origin,
                        max_batch=self._max_batch,
                        max_pending=self._max_pending,
                        max_wait=self._max_wait,
                        observer=self._observer,
                    )
                    await writer.start()
                except (OSError, LedgerError) as exc:
                    raise ServiceUnavailable("ledger unavailable") from exc
                self._writer = writer
        return self._writer

    def _accepted(self) -> None:
        """Run ``on_accepted`` once: the store opened and may be continued with this key."""
        callback, self._on_accepted = self._on_accepted, None
        if callback is None:
            return
        try:
            callback()
        except SettingsError as exc:
            self._on_accepted = callback  # the next start tries again
            raise ServiceUnavailable("ledger unavailable") from exc

    async def admit(self) -> None:
        """Return at once if an entry would be queued now; else raise
        :class:`ServiceUnavailable`: the writer cannot be started (or restarted), or its queue
        is full. Costs an attribute check when the ledger is healthy; callers run it before
        work whose audit entry the ledger would refuse (pushback before the upstream call)."""
        if (await self.writer()).full:
            raise ServiceUnavailable("ledger queue is full")

    async def check_commit(self, max_age: float) -> None:
        """Return if the ledger can commit now; raise :class:`ServiceUnavailable` otherwise.

        Proof is a batch the writer committed (or a probe that committed) at most ``max_age``
        seconds ago with no failed batch since; without it, the store's
        :meth:`~middleware.storage.ledger_base.LogStore.probe_commit` must commit now. A
        crashed writer is replaced first (:meth:`writer`)."""
        writer = await self.writer()
        loop = asyncio.get_running_loop()
        proofs = [t for t in (writer.last_commit, self._last_probe) if t is not None]
        proved = max(proofs, default=None)
        failing = writer.last_failure is not None and (
            proved is None or writer.last_failure >= proved
        )
        if proved is not None and not failing and loop.time() - proved <= max_age:
            return
        await (await self.store()).probe_commit()
        self._last_probe = loop.time()

    @property
    def pending(self) -> int:
        """Entries queued for the writer's next batch (0 before it runs)."""
        return 0 if self._writer is None else self._writer.pending

    async def store(self) -> LogStore:
        """The opened store (opening it, and starting the writer, if needed)."""
        await self.writer()
        assert self._store is not None  # set together with the writer
        return self._store

    async def append(self, entry: NewEntry) -> int:
        """Record ``entry`` durably and return its index (see :meth:`LedgerWriter.append`)."""
        writer = self._writer
        if writer is None or writer.crashed:  # what writer() checks first, without its frames
            writer = await self.writer()
        return await writer.append(entry)

    async def aclose(self) -> None:
        """Stop the writer (committing what is queued), then close the store."""
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._store is not None:
            await self._store.close()
            self._store = None
