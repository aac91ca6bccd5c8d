"""One witness: its logs, its state file and its key, answering ``add-checkpoint`` bodies.

:meth:`Witness.add_checkpoint` runs :mod:`~middleware.witness.protocol`'s checks and the state
file's compare-and-swap under one lock, so submissions are serialised in this process; the
swap itself is what keeps two processes on one file from rolling a log back (tlog-witness's
race). Every accepted checkpoint goes through the swap, the same one again included: the
state was read outside its transaction, so only the swap can say the log is still there. The
cosignature is made only after that (the new state durable), and is timestamped by the
injected clock then. A fork is kept once per checkpoint (:meth:`WitnessState.keep_fork`) and
warned about once; nothing else is evidence. Every outcome is an :class:`Answer` (status,
body, content type): bad input never raises out of here; a state file that fails is a 503.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from middleware.ledger.note import SignedNote
from middleware.ledger.signing import Cosigner
from middleware.logging import get_logger
from middleware.witness.protocol import (
    SIZE_CONTENT_TYPE,
    LogConfig,
    LogState,
    WitnessRefusal,
    check_submission,
    parse_submission,
)
from middleware.witness.state import WitnessState

__all__ = ["Answer", "Witness"]

_TEXT = "text/plain; charset=utf-8"
_log = get_logger("consentry.witness")


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, body and content type."""

    status: int
    body: str
    content_type: str = _TEXT


class Witness:
    """The witness: configured logs by origin, the state file and the cosigning key."""

    def __init__(
        self,
        logs: Mapping[str, LogConfig],
        state: WitnessState,
        cosigner: Cosigner,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._logs = dict(logs)
        self._state = state
        self._cosigner = cosigner
        self._clock = clock
        self._lock = asyncio.Lock()

    async def add_checkpoint(self, body: bytes) -> Answer:
        """Answer one ``POST /add-checkpoint`` body (C2SP tlog-witness)."""
        try:
            submission = parse_submission(body)
        except WitnessRefusal as refusal:
            return _refused(refusal)
        log = self._logs.get(submission.origin)
        try:
            async with self._lock:
                state = await asyncio.to_thread(self._state.get, submission.origin)
                try:
                    checkpoint = check_submission(submission, log, state)
                except WitnessRefusal as refusal:
                    if refusal.evidence is not None:
                        await self._keep_fork(submission.origin, refusal.evidence)
                    elif refusal.status == 422:
                        _log.debug("witness refused a consistency proof", reason=refusal.reason)
                    return _refused(refusal)
                new = LogState(
                    checkpoint.origin,
                    checkpoint.size,
                    checkpoint.root_hash,
                    submission.note.format(),
                )
                swapped, current = await asyncio.to_thread(self._state.swap, state, new)
                if not swapped:  # another process moved the log since we read it
                    return _refused(WitnessRefusal(409, "the log moved", size=current.size))
        except sqlite3.Error as exc:
            _log.error("witness state file failed", error_type=type(exc).__name__)
            return Answer(503, "the witness cannot record its state now\n")
        cosignature = self._cosigner.cosign(submission.note.text, int(self._clock()))
        return Answer(200, cosignature.line())

    async def _keep_fork(self, origin: str, note: SignedNote) -> None:
        outcome = await asyncio.to_thread(self._state.keep_fork, origin, note)
        if outcome == "kept":
            _log.warning("witness kept evidence of a log fork", origin=origin)
        elif outcome == "full":
            _log.info("witness fork evidence is full for this log", origin=origin)


def _refused(refusal: WitnessRefusal) -> Answer:
    if refusal.size is not None:
        return Answer(refusal.status, f"{refusal.size}\n", SIZE_CONTENT_TYPE)
    return Answer(refusal.status, f"{refusal.reason}\n")
