"""Break-the-glass stop events: recorded once, by the opener or, when it is gone, by another.

A session's DICOM 110138 "Emergency Override Stopped" event (tagged for review like its start)
used to be recorded only by the process that opened the session, at its first request after
the session ended: a process killed with a session open (kill -9, out of memory, its node
lost) left a start without a stop on the ledger, which a reviewer cannot tell from a session
still open. Now (:mod:`middleware.pipeline.breakglass` docstring):

* once the start is on the ledger, :meth:`GlassStops.started` leaves on the session board what
  the stop needs (:func:`stop_note`: the caller as the audit facts keep it, the patient's
  reference, the start entry's ledger index; sealed by the board);
* the opener records the stop when the session is over, at its next request
  (:meth:`GlassStops.close_expired`) or its next sweep, taking the board's row first;
* every process sweeps every ``every`` seconds (:meth:`GlassStops.start`, the first sweep at
  once: what a previous incarnation left) and records the stops still owed ``GRACE`` seconds
  after their end. Such a stop names the opener's caller and patient, has no client address,
  a request id of its own, and the reason ``opener gone; ...`` with the start's ledger index.

Exactly one process takes a row (the board's atomic update), so a stop is recorded once; a
stop the ledger does not take goes back to the board and is taken again (never lost). An
append already handed to the ledger's writer is awaited (up to ``drain`` seconds) even when
the sweep is cancelled at shutdown: its row is marked or given back by the outcome, never
given back blindly. The windows left are in docs/security.md (known limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from middleware.audit.facts import Caller
from middleware.audit.recorder import AuditRecorder
from middleware.auth.identity import Identity
from middleware.errors import ServiceUnavailable
from middleware.logging import get_logger
from middleware.pipeline.breakglass import BreakGlass, Owed, Session
from middleware.pipeline.caller import Caller as RequestCaller

__all__ = ["SWEEP_EVERY", "GlassStops", "stop_note"]

#: Seconds between two sweeps of one process (well under ``GRACE``).
SWEEP_EVERY: Final = 30.0
_NOTE_VERSION: Final = 1
_NOTE: Final = msgspec.msgpack.Decoder(tuple[int, Caller, str, int])


def stop_note(identity: Identity, patient: str, start_index: int) -> bytes:
    """What another process needs to record the stop of ``identity``'s session for
    ``patient`` whose start is the ledger's entry ``start_index`` (MessagePack)."""
    return msgspec.msgpack.encode((_NOTE_VERSION, Caller.of(identity), patient, start_index))


def _read_note(note: bytes) -> tuple[Identity, str, int] | None:
    try:
        version, caller, patient, start = _NOTE.decode(note)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None
    return (caller.identity(), patient, start) if version == _NOTE_VERSION else None


class GlassStops:
    """Records the stop events of ``sessions`` on ``recorder`` (module docstring)."""

    def __init__(
        self,
        recorder: AuditRecorder,
        sessions: BreakGlass,
        wall_clock: Callable[[], float],
        *,
        every: float = SWEEP_EVERY,
        drain: float = 5.0,
    ) -> None:
        self.recorder = recorder
        self.sessions = sessions
        self.wall_clock = wall_clock
        self.every = every
        self.drain = drain
        #: Stops recorded without the board's proof, by reason code (missing, unreadable, ...).
        self.unproven: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger("consentry.breakglass")

    async def started(
        self, caller: RequestCaller, sessions: Sequence[Session], indexes: Sequence[int]
    ) -> None:
        """The starts of ``sessions`` (begun: :meth:`BreakGlass.begin`) are the ledger's
        ``indexes``: leave their stops on the board (where the board cannot take one, this
        process records it alone)."""
        if not self.sessions.shared:
            return  # sessions in this process alone: it records their stops (memory store)
        for session, index in zip(sessions, indexes, strict=True):
            note = stop_note(caller.identity, session.patient, index)
            if not await self.sessions.owe(session, note):
                self._log.warning("break-glass stop not shared", start_index=index)

    async def close_expired(self, rid: str, client_host: str | None) -> int:
        """Record the stop of every session of this process whose time is over (those it
        takes); raises :class:`~middleware.errors.ServiceUnavailable` when the ledger cannot
        take one (it stays to be recorded later). How many were recorded."""
        over = await self.sessions.expire(self.wall_clock())
        for done, session in enumerate(over):
            if session.unproven is not None:  # the board's row is no proof: recorded here
                self.unproven[session.unproven] = self.unproven.get(session.unproven, 0) + 1
                self._log.warning("break-glass stop row unproven", reason=session.unproven)
            append = asyncio.ensure_future(
                self.recorder.record_break_glass(
                    "stopped",
                    identity=session.identity,
                    patients=[session.patient],
                    request_id=rid,
                    client_address=client_host,
                )
            )
            try:
                recorded = await self._outcome(append)
            except BaseException:
                for left in over[done + 1 :]:  # kept (and given back): recorded later
                    await self.sessions.settle(left, recorded=False)
                if append.done():  # settled by what the ledger did, never blindly
                    await self.sessions.settle(session, recorded=_committed(append))
                raise
            await self.sessions.settle(session, recorded=recorded)
            if not recorded:
                for left in over[done + 1 :]:
                    await self.sessions.settle(left, recorded=False)
                append.result()  # raises the ledger's refusal
        return len(over)

    async def _outcome(self, append: asyncio.Future[list[int]]) -> bool:
        """Whether ``append`` committed. On cancellation (shutdown) the writer may still
        commit it: wait up to ``drain`` seconds for the outcome, then re-raise (a take left
        undecided lapses with its lease)."""
        try:
            await asyncio.shield(append)
        except asyncio.CancelledError:
            if not append.done():
                await asyncio.wait({append}, timeout=self.drain)
            raise
        except ServiceUnavailable:
            return False
        return True

    async def sweep(self) -> int:
        """One sweep: this process's own sessions that are over, then the stops other
        processes still owe. Never raises for a ledger or board failure (logged; the next
        sweep tries again). How many stops it recorded."""
        recorded = 0
        try:
            recorded += await self.close_expired(_sweep_id(), None)
        except ServiceUnavailable as exc:
            self._log.warning("break-glass stop not recorded", error_type=type(exc).__name__)
        for owed in await self.sessions.overdue(self.wall_clock()):
            recorded += await self._record_owed(owed)
        return recorded

    async def _record_owed(self, owed: Owed) -> int:
        note = _read_note(owed.stop)
        if note is None:  # not ours to read: its take lapses (logged, never guessed at)
            self._log.error("break-glass stop unreadable", reason="bad-note")
            return 0
        identity, patient, start = note
        append = asyncio.ensure_future(
            self.recorder.record_break_glass(
                "stopped",
                identity=identity,
                patients=[patient],
                request_id=_sweep_id(),
                client_address=None,
                reason=f"opener gone; stopped by another process (start: ledger index {start})",
            )
        )
        try:
            recorded = await self._outcome(append)
        except asyncio.CancelledError:
            if append.done():
                await self.sessions.settle_owed(owed, recorded=_committed(append))
            raise
        except ValueError:  # a patient no entry can name: its take lapses (never guessed at)
            self._log.error("break-glass stop unreadable", reason="unnamed-patient")
            return 0
        await self.sessions.settle_owed(owed, recorded=recorded)
        return int(recorded)

    def start(self) -> None:
        """Sweep now (what a previous incarnation left), then every ``every`` seconds."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - a bug must not end the sweeping
                self._log.error("break-glass sweep failed", error_type=type(exc).__name__)
            await asyncio.sleep(self.every)

    async def aclose(self) -> None:
        """Stop sweeping (idempotent); a stop being recorded is given back by its lease."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _committed(append: asyncio.Future[list[int]]) -> bool:
    """Whether a finished append committed (it returned)."""
    return not append.cancelled() and append.exception() is None


def _sweep_id() -> str:
    """A request id of its own for a stop a sweep records (as the edge makes one)."""
    return os.urandom(16).hex()
