"""Getting the ledger's checkpoints cosigned by witnesses (C2SP tlog-witness), off the hot path.

:class:`Witnessing` runs one background task. Each round it reads the store's latest signed
checkpoint and submits it, to every configured witness that has not cosigned that size yet,
concurrently (``add-checkpoint``, :mod:`middleware.ledger.witnesses`), each with the RFC 9162
consistency proof from the size that witness last cosigned. A witness that answers 409 with
another size (it cosigned something we do not remember, e.g. before a restart) is asked once
more with the proof from the size it reports. Each cosignature is checked against the
witness's configured key before it is kept (a witness answering garbage counts as failed).

Rounds run every ``interval`` seconds and when :meth:`Witnessing.wake` is called; a round
reads only the *latest* checkpoint, so a burst of commits costs one submission (coalesced,
nothing queues). No request waits for a witness: appends never see this task, and the
publication (:meth:`Witnessing.published`) is whatever the last round achieved.

Publication: with ``quorum`` > 0, :meth:`published` is the newest checkpoint that at least
``quorum`` witnesses cosigned, with every cosignature line collected for it appended to the
log's note; ``None`` until one has. Failures (unreachable, refused, timeouts) are logged with
the witness's name and a reason code only (once when a witness starts failing, not each
round), counted in :attr:`Witnessing.failures`, and the ledger keeps working. What was
cosigned is kept in memory: after a restart the first round gets the latest checkpoint
cosigned again (witnesses answer 409 with their size, then cosign).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import httpx

from middleware.ledger.cosignature import parse_cosignature_lines, verify_cosignatures
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.note import NoteSignature, parse_note
from middleware.ledger.signing import CosignatureVerifier
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.witnesses import (
    WitnessEndpoint,
    add_checkpoint_body,
    add_checkpoint_url,
    conflict_size,
    with_cosignatures,
)
from middleware.logging import get_logger

__all__ = ["CheckpointSource", "Witnessing"]

_CONTENT_TYPE = "text/plain; charset=utf-8"


class CheckpointSource(Protocol):
    """What a round reads of the log store (:class:`~middleware.storage.ledger_base.LogStore`)."""

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None: ...

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]: ...


class _Refused(Exception):
    """One witness did not cosign; ``reason`` is a short code for logs and metrics."""

    def __init__(self, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: With ``conflict`` (409): the size the witness says it holds.
        self.size = size


class Witnessing:
    """Submits the latest checkpoint to ``witnesses`` and keeps what they cosign (module
    docstring). ``store`` returns the opened log store; ``client`` is an
    :class:`httpx.AsyncClient` (one is made, and closed by :meth:`aclose`, when None)."""

    def __init__(
        self,
        store: Callable[[], Awaitable[CheckpointSource]],
        witnesses: Sequence[WitnessEndpoint],
        *,
        quorum: int,
        timeout: float = 10.0,
        interval: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not 0 <= quorum <= len(witnesses):
            raise ValueError("a quorum is 0 to the number of witnesses")
        self._store = store
        self._witnesses = tuple(witnesses)
        self._verifiers = {w.name: CosignatureVerifier(w.key) for w in witnesses}
        self.quorum = quorum
        self._timeout = timeout
        self._interval = interval
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        #: The size each witness last cosigned (as far as we know; 0: none).
        self._sizes: dict[str, int] = {w.name: 0 for w in witnesses}
        self._cosignatures: dict[str, tuple[NoteSignature, ...]] = {}
        #: The reason each failing witness last failed (logged when it changes).
        self._state: dict[str, str] = {}
        self._latest: StoredCheckpoint | None = None
        self._published: str | None = None
        self._published_size = 0
        self._tree = MerkleLevels()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Submissions that failed, by reason (``unreachable``, ``status-422``, ...).
        self.failures: dict[str, int] = {}
        #: Cosignatures received and kept.
        self.cosigned = 0

    def published(self) -> str | None:
        """The newest checkpoint note carrying a quorum of cosignatures (None: none yet)."""
        return self._published

    @property
    def published_size(self) -> int:
        """The size of :meth:`published` (0 when there is none), for metrics."""
        return self._published_size

    def wake(self) -> None:
        """Run a round now rather than at the next interval (cheap; never blocks)."""
        self._wakeup.set()

    def start(self) -> None:
        """Start the background task (once)."""
        if self._task is None and self._witnesses:
            self._task = asyncio.create_task(self._run(), name="consentry-witnessing")

    async def aclose(self) -> None:
        """Stop the task and close the client if this object made it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client:
            await self._client.aclose()

    async def _run(self) -> None:
        log = get_logger("consentry.ledger")
        while True:
            try:
                await self.submit_latest()
            except (OSError, LedgerError, ValueError) as exc:  # the store, not a witness
                self._count("store")
                log.warning("witnessing round failed", error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001  # the ledger must keep working without us
                self._count("error")
                log.error("witnessing round failed", error_type=type(exc).__name__)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wakeup.wait()

    async def submit_latest(self) -> None:
        """One round: submit the latest checkpoint to every witness that has not cosigned it."""
        store = await self._store()
        latest = await store.checkpoint()
        if latest is None:
            return
        if self._latest is None or latest.size != self._latest.size:
            self._latest, self._cosignatures = latest, {}
        elif not hmac.compare_digest(latest.root, self._latest.root):
            return  # two roots for one size: the store is refused by its own replay
        await self._grow(store, latest)
        pending = [w for w in self._witnesses if w.name not in self._cosignatures]
        results = await asyncio.gather(*(self._submit(w, latest) for w in pending))
        for witness, lines in zip(pending, results, strict=True):
            if lines is not None:
                self._cosignatures[witness.name] = lines
                self._sizes[witness.name] = latest.size
        if self.quorum and len(self._cosignatures) >= self.quorum:
            every = [s for lines in self._cosignatures.values() for s in lines]
            self._published = with_cosignatures(latest.note, every)
            self._published_size = latest.size

    async def _grow(self, store: CheckpointSource, latest: StoredCheckpoint) -> None:
        if self._tree.size < latest.size:
            self._tree.extend(await store.leaf_hashes(self._tree.size, latest.size))
        if not hmac.compare_digest(self._tree.root(latest.size), latest.root):
            self._tree = MerkleLevels()
            raise LedgerError("the witnessing tree disagrees with the store's checkpoint")

    async def _submit(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint
    ) -> tuple[NoteSignature, ...] | None:
        """The witness's cosignature lines for ``latest``, or None (logged and counted)."""
        log = get_logger("consentry.ledger")
        old = min(self._sizes[witness.name], latest.size)
        try:
            try:
                return await self._ask(witness, latest, old)
            except _Refused as exc:
                if exc.size is None:
                    raise
                # 409: the witness holds another size; once more from there (tlog-witness).
                return await self._ask(witness, latest, exc.size)
        except _Refused as exc:
            self._count(exc.reason)
            # One line when a witness starts failing (or fails otherwise), not one a second.
            if self._state.get(witness.name) != exc.reason:
                log.warning("witness did not cosign", witness=witness.name, reason=exc.reason)
            self._state[witness.name] = exc.reason
            return None

    async def _ask(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint, old: int
    ) -> tuple[NoteSignature, ...]:
        if old > latest.size:
            # The witness cosigned a larger tree of this log than the store holds: a rollback
            # (or a fork signed elsewhere). Never something to retry past.
            raise _Refused("witness-ahead")
        proof = self._tree.consistency_proof(old, latest.size) if old > 0 else []
        body = add_checkpoint_body(old, proof, latest.note)
        try:
            response = await self._client.post(
                add_checkpoint_url(witness),
                content=body,
                headers={"content-type": _CONTENT_TYPE},
                timeout=self._timeout,
            )
        except httpx.HTTPError:
            raise _Refused("unreachable") from None
        if response.status_code == 409:
            # The witness holds another size (its body says which: ask again from there), or
            # this very size with another root (a fork: nothing to retry).
            try:
                size = conflict_size(response.content)
            except LedgerError:
                raise _Refused("conflict") from None
            if size == old:
                raise _Refused("conflict")
            self._sizes[witness.name] = size
            raise _Refused("conflict", size)
        if response.status_code != 200:
            raise _Refused(f"status-{response.status_code}")
        return self._check(witness, latest, response.content)

    def _check(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint, content: bytes
    ) -> tuple[NoteSignature, ...]:
        """The answer's lines that are the witness's valid cosignature of ``latest``."""
        text = parse_note(latest.note).text
        try:
            lines = parse_cosignature_lines(content.decode("utf-8"), text)
            key = self._verifiers[witness.name]
            ours = tuple(s for s in lines if (s.name, s.key_id) == (key.name, key.key_id))
            verify_cosignatures(with_cosignatures(latest.note, ours), [key], 1)
        except (UnicodeDecodeError, LedgerError):
            raise _Refused("bad-cosignature") from None
        self.cosigned += 1
        if self._state.pop(witness.name, None) is not None:
            get_logger("consentry.ledger").info("witness cosigns again", witness=witness.name)
        return ours

    def _count(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
