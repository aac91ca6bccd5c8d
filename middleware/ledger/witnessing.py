"""Getting the ledger's checkpoints cosigned by witnesses (C2SP tlog-witness), off the hot path.

:class:`Witnessing` runs one background task. Each round reads the store's latest signed
checkpoint and submits it (``add-checkpoint``, :mod:`middleware.ledger.witnesses`) to every
witness that has not cosigned it and has no request under way, concurrently, each with the
RFC 9162 consistency proof from the size that witness last cosigned (proofs from the log's
shared tree, :mod:`middleware.ledger.prooftree`). A 409 naming a smaller size (a witness that
cosigned something we forgot, e.g. before a restart) is retried once from that size. Each
answer is checked against the witness's key and dated at most ``quorum.FUTURE_SKEW`` ahead of
our clock (verifiers reject a later one); one valid line per witness is kept.

One witness cannot hold up the others: each request ends within ``timeout`` seconds in
all, not per read (two with the retry); an answer over :data:`MAX_ANSWER` bytes is refused; a round
returns once a quorum cosigned, and requests still running add their line when they end.

Replicas share one store and the witnesses: a 409 naming a size *above* the checkpoint we
read is another replica's submission (counted in :attr:`Witnessing.behind`, not a failure);
a store still below it a round later is the rollback alarm (``witness-ahead``). Two roots
from the store for one size are fork evidence: logged (the size only), counted as ``fork``.

Rounds run every ``interval`` seconds (:meth:`Witnessing.wake` starts one sooner; the gateway
does not call it) and read only the *latest* checkpoint: a burst of commits costs one
submission. No request waits for a witness. With ``quorum`` > 0, :meth:`published` is the
newest checkpoint at least ``quorum`` witnesses cosigned, their lines appended to the log's
note, never older than one already published; ``None`` until then. Failures are logged with
the witness's name and a reason code only (once when a witness starts failing), counted in
:attr:`Witnessing.failures`, and the ledger keeps working.

With ``kept`` (the gateway passes the log's store), a checkpoint a quorum cosigned is kept in
the store before it is published, and :meth:`published` reads the store's newest (verified
again) on every call: a replica never goes backwards; while the store keeps what a quorum
cosigned, every replica publishes the same one and a restarted one publishes it at once
(:mod:`middleware.ledger.publication`, which states the staleness bound, what is refused, and
what a replica publishes while the store cannot keep a quorum's note: that note, ahead of the
other replicas, its write tried again each round). ``log_key`` (the log's verifier,
required with ``kept``) checks the log's signature on a kept note. Without ``kept`` (tests),
what was cosigned lives in this object only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import httpx

from middleware.ledger.cosignature import parse_cosignature_lines, verify_cosignatures
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.note import NoteSignature, NoteVerifier, parse_note
from middleware.ledger.prooftree import ProofTree
from middleware.ledger.publication import Publication
from middleware.ledger.quorum import FUTURE_SKEW
from middleware.ledger.signing import CosignatureVerifier
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.witnessed_store import KeptWitnessed
from middleware.ledger.witnesses import (
    WitnessEndpoint,
    add_checkpoint_body,
    add_checkpoint_url,
    conflict_size,
    with_cosignatures,
)
from middleware.logging import get_logger

__all__ = ["MAX_ANSWER", "CheckpointSource", "Witnessing"]

#: The longest witness answer read: a few cosignature lines (each about 120 bytes) or a size.
MAX_ANSWER = 4096
_HEADERS = {"content-type": "text/plain; charset=utf-8", "accept-encoding": "identity"}


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
    :class:`httpx.AsyncClient` (one is made, and closed by :meth:`aclose`, when None);
    ``tree`` is the log's shared tree (the ledger service's; a new one when None); ``clock``: POSIX
    seconds, bounding the cosignatures' dates; ``kept`` returns the store that keeps the
    witnessed checkpoints every replica publishes (None: this object's memory only), whose
    notes are checked against ``log_key`` (required with ``kept``: ``ValueError``)."""

    def __init__(
        self,
        store: Callable[[], Awaitable[CheckpointSource]],
        witnesses: Sequence[WitnessEndpoint],
        *,
        quorum: int,
        timeout: float = 10.0,
        interval: float = 1.0,
        client: httpx.AsyncClient | None = None,
        tree: ProofTree | None = None,
        clock: Callable[[], float] = time.time,
        kept: Callable[[], Awaitable[KeptWitnessed]] | None = None,
        log_key: NoteVerifier | None = None,
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
        self._tree = tree if tree is not None else ProofTree()
        self._clock = clock
        #: The size each witness last cosigned or reported holding (0: none known).
        self._sizes: dict[str, int] = {w.name: 0 for w in witnesses}
        #: The one cosignature line each witness gave for :attr:`_latest`.
        self._cosignatures: dict[str, NoteSignature] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: The reason each failing witness last failed (logged when it changes).
        self._state: dict[str, str] = {}
        self._forks: set[int] = set()
        self._latest: StoredCheckpoint | None = None
        self._publication = Publication(
            list(self._verifiers.values()),
            quorum,
            kept=kept,
            log=log_key,
            count=self._count,
            clock=clock,
        )
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Submissions that failed, by reason (``unreachable``, ``status-422``, ...;
        #: ``store``: rounds the store failed, one a round however many reads failed).
        self.failures: dict[str, int] = {}
        #: Cosignatures received and kept.
        self.cosigned = 0
        #: 409s naming a size above the store's latest: another replica was first (normal).
        self.behind = 0

    async def published(self) -> str | None:
        """The newest checkpoint note carrying a quorum of cosignatures (None: none yet);
        with ``kept``, the store's newest once verified (module docstring)."""
        return await self._publication.current() if self.quorum else None

    @property
    def published_size(self) -> int:
        """The size of :meth:`published` (0 when there is none), for metrics."""
        return self._publication.size

    def wake(self) -> None:
        """Run a round now rather than at the next interval (cheap; never blocks)."""
        self._wakeup.set()

    def start(self) -> None:
        """Start the background task (once)."""
        if self._task is None and self._witnesses:
            self._task = asyncio.create_task(self._run(), name="consentry-witnessing")

    async def aclose(self) -> None:
        """Stop the task and the requests under way; close the client if this object made it."""
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client:
            await self._client.aclose()

    async def _run(self) -> None:
        log = get_logger("consentry.ledger")
        while True:
            try:
                await self.submit_latest()
            except (OSError, LedgerError, ValueError) as exc:  # the store: counted by the round
                log.warning("witnessing round failed", error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001  # the ledger must keep working without us
                self._count("error")
                log.error("witnessing round failed", error_type=type(exc).__name__)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wakeup.wait()

    async def submit_latest(self) -> None:
        """One round: ask every witness that has not cosigned the latest checkpoint (and has
        no request under way); return once a quorum cosigned it (and it is kept) or no
        request is left. A round that the store failed (reading, keeping, or a read of
        :meth:`published` since the last round) counts ``store`` once."""
        try:
            await self._round()
        except (OSError, LedgerError, ValueError):
            self._publication.failed()
            raise
        finally:
            self._publication.settle()

    async def _round(self) -> None:
        await self.published()  # what the replicas kept since (and the metrics' size)
        store = await self._store()
        latest = await store.checkpoint()
        if latest is None:
            return
        if self._latest is None or latest.size != self._latest.size:
            self._latest, self._cosignatures = latest, {}
        elif not hmac.compare_digest(latest.root, self._latest.root):
            self._fork(latest.size)
            return
        tree = await self._tree.at(store, latest)
        for witness in self._witnesses:
            name = witness.name
            if name not in self._cosignatures and name not in self._inflight:
                task = asyncio.create_task(self._request(witness, latest, tree))
                self._inflight[name] = task
        waiting = set(self._inflight.values())
        while waiting and not self._publish():
            _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        await self._publication.keep()

    def _publish(self) -> bool:
        """Offer :attr:`_latest` with its lines for publication if a quorum cosigned it;
        True if a quorum did (``Publication.keep`` then keeps it, with ``kept``)."""
        latest = self._latest
        if not self.quorum or latest is None or len(self._cosignatures) < self.quorum:
            return False
        note = with_cosignatures(latest.note, self._cosignatures.values())
        self._publication.offer(note, latest.size)
        return True

    def _fork(self, size: int) -> None:
        """The store gave two roots for one size: fork evidence in our own store."""
        self._count("fork")
        if size not in self._forks:
            self._forks.add(size)
            get_logger("consentry.ledger").error(
                "the store returned two roots for one checkpoint size", size=size
            )

    async def _request(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint, tree: MerkleLevels
    ) -> None:
        """One witness's submission, as a task: keep its line if ``latest`` is still current."""
        try:
            line = await self._submit(witness, latest, tree)
            current = self._latest
            if (
                line is not None
                and current is not None
                and current.size == latest.size
                and hmac.compare_digest(current.root, latest.root)
            ):
                self._cosignatures[witness.name] = line
                self._publish()  # a late answer adds its line to the publication
                await self._publication.keep()
        except Exception as exc:  # noqa: BLE001  # a bug here must not end the gateway's task
            self._count("error")
            get_logger("consentry.ledger").error(
                "witness request failed", witness=witness.name, error_type=type(exc).__name__
            )
        finally:
            self._inflight.pop(witness.name, None)

    async def _submit(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint, tree: MerkleLevels
    ) -> NoteSignature | None:
        """The witness's cosignature line for ``latest``, or None (logged and counted)."""
        held = self._sizes[witness.name]
        try:
            if held > latest.size:
                # A witness reported a larger tree of this log in an earlier round and the
                # store is still below it: a rollback (or a fork signed elsewhere).
                raise _Refused("witness-ahead")
            try:
                return await self._ask(witness, latest, tree, held)
            except _Refused as exc:
                if exc.size is None:
                    raise
                if exc.size > latest.size:
                    self.behind += 1  # another replica submitted a newer checkpoint first
                    return None
                # 409: the witness holds another size; once more from there (tlog-witness).
                return await self._ask(witness, latest, tree, exc.size)
        except _Refused as exc:
            self._count(exc.reason)
            # One line when a witness starts failing (or fails otherwise), not one a second.
            if self._state.get(witness.name) != exc.reason:
                get_logger("consentry.ledger").warning(
                    "witness did not cosign", witness=witness.name, reason=exc.reason
                )
            self._state[witness.name] = exc.reason
            return None

    async def _ask(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint, tree: MerkleLevels, old: int
    ) -> NoteSignature:
        proof = tree.consistency_proof(old, latest.size) if old > 0 else []
        body = add_checkpoint_body(old, proof, latest.note)
        try:
            async with asyncio.timeout(self._timeout):  # the whole exchange, not each read
                status, content = await self._post(add_checkpoint_url(witness), body)
        except TimeoutError:
            raise _Refused("timeout") from None
        if status == 409:
            # The witness holds another size (its body says which: ask again from there), or
            # this very size with another root (a fork: nothing to retry).
            try:
                size = conflict_size(content)
            except LedgerError:
                raise _Refused("conflict") from None
            if size == old:
                raise _Refused("conflict")
            self._sizes[witness.name] = size
            raise _Refused("conflict", size)
        if status != 200:
            raise _Refused(f"status-{status}")
        line = self._check(witness, latest, content)
        self._sizes[witness.name] = latest.size
        return line

    async def _post(self, url: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; the status and at most :data:`MAX_ANSWER` bytes of answer."""
        try:
            async with self._client.stream(
                "POST", url, content=body, headers=_HEADERS, timeout=self._timeout
            ) as response:
                if response.headers.get("content-encoding", "identity") != "identity":
                    raise _Refused("bad-answer")  # we asked for none: no decompression bomb
                content = bytearray()
                async for chunk in response.aiter_bytes():  # identity: no decoding
                    content += chunk
                    if len(content) > MAX_ANSWER:
                        raise _Refused("too-large")
                return response.status_code, bytes(content)
        except httpx.HTTPError:
            raise _Refused("unreachable") from None

    def _check(
        self, witness: WitnessEndpoint, latest: StoredCheckpoint, content: bytes
    ) -> NoteSignature:
        """The first of the answer's lines by the witness's key, if every such line is a
        valid cosignature of ``latest`` (one by its key that is not is evidence, not noise) and
        none is dated more than FUTURE_SKEW ahead of our clock: verifiers reject such a line
        (ledger.quorum), and with it the whole published note."""
        text = parse_note(latest.note).text
        try:
            lines = parse_cosignature_lines(content.decode("utf-8"), text)
            key = self._verifiers[witness.name]
            ours = tuple(s for s in lines if (s.name, s.key_id) == (key.name, key.key_id))
            not_after = int(self._clock()) + FUTURE_SKEW
            verify_cosignatures(with_cosignatures(latest.note, ours), [key], 1, not_after=not_after)
        except (UnicodeDecodeError, LedgerError):
            raise _Refused("bad-cosignature") from None
        self.cosigned += 1
        if self._state.pop(witness.name, None) is not None:
            get_logger("consentry.ledger").info("witness cosigns again", witness=witness.name)
        return ours[0]

    def _count(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
