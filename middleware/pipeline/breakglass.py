"""Break-the-glass: time-boxed emergency access, honouring a patient's refusal of it.

A caller whose token allows it (:attr:`Identity.break_the_glass`: the configured scope or role,
see :mod:`middleware.auth.settings`) asks for emergency access by sending
``X-Break-Glass-Reason: <why>``. From then on, for ``minutes``, the consent denials of the
patients its requests touch are overridden, except for a patient whose active consent denies
the purpose v3-ActReason ``BTG`` ("break the glass"): that patient's refusal stands. Each
session (one caller, one patient) starts with a DICOM 110113/110127 "Emergency Override
Started" event and ends with 110138 "Emergency Override Stopped", both tagged for review
(:func:`~middleware.audit.alerts.break_glass_events`); every exchange under it carries the
ledger flag ``BREAK_THE_GLASS``.

A request without the header continues an open session; once the session is over, denials
stand again until the caller asks again (and a new, separately reviewed session starts).
The process that opened a session holds it (with the identity its stop event names) and
records its start and stop. With a :class:`SessionBoard` (the worker processes of one gateway
on a SQLite store, :mod:`middleware.storage.breakglass_sqlite`; every replica on a PostgreSQL
store, :mod:`middleware.storage.breakglass_postgres`) the other processes honour it for
callers whose token allows break-the-glass, and do not start a second one; without one (a
``memory:`` store) a process that has not seen the request opening a session requires the
header again (the safe direction). The clock is injected.

A stop must not depend on its opener living to record it. Once the start is on the ledger the
opener leaves the stop's facts on the board (:meth:`BreakGlass.owe`, sealed there), and
whoever records the stop first *takes* the board's row (one atomic update: exactly one taker):
the opener when the session is over (:meth:`BreakGlass.expire`), or, for a session still owed
``GRACE`` seconds after it ended (its opener killed, out of memory, its node gone), any
process's sweep (:meth:`BreakGlass.overdue`). A taker that cannot record the stop gives the row
back (:meth:`BreakGlass.settle`); one that dies holding it leaves a take that lapses after the
board's lease, and the row is taken again. A recorded row is marked so (sealed); the opener,
which holds its stop in memory, records it itself unless the board proves another did.

An expired session is never continued: it moves to the stops this process still owes, and a
new request with the header opens (and records the start of) a new one; a request without
the header never opens one (review R7b-2). Emergency access only once its start is durable
(review R7b-1/3): :meth:`BreakGlass.open` claims a session *pending*; it is honoured (here, and
on the board by every process) only once :meth:`BreakGlass.begin` says its start is on the
ledger. Whatever a call to :meth:`~BreakGlass.open` claimed and did not see begun is dropped
(:meth:`BreakGlass.abandon`) on every failure path, cancellation included; a board row left
pending (its release lost) is honoured nowhere and stops blocking a claim after ``PENDING``
seconds. A pending claim (here: even past its end, R7c-1) blocks a second one: that request is
refused (503, retry), never released on the strength of a start not yet durable; begin and
abandon act on the very sessions open returned, the board's confirm and release on the claim
until their ``ends``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from middleware.auth.identity import Identity
from middleware.consent.model import DENY, Policy, Provision
from middleware.errors import BadRequest, Forbidden, ServiceUnavailable
from middleware.pipeline.breakglass_board import (
    HELD,
    PENDING,
    RECORDED_BY_OTHER,
    BeingOpened,
    Owed,
    SessionBoard,
)
from middleware.pipeline.caller import Caller

__all__ = [
    "BREAK_GLASS_HEADER",
    "BTG",
    "BeingOpened",
    "GRACE",
    "HELD",
    "HELD_RETRY",
    "PENDING",
    "RECORDED_BY_OTHER",
    "BreakGlass",
    "Owed",
    "Session",
    "SessionBoard",
    "forbids_break_glass",
    "requested_reason",
]

BREAK_GLASS_HEADER: Final = "x-break-glass-reason"
#: v3-ActReason BTG, "break the glass": the purpose a consent names to refuse emergency access.
BTG: Final = ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "BTG")
_MAX_REASON: Final = 200
#: Seconds after its end before another process records a session's stop: its opener records
#: it within its sweep interval (:mod:`middleware.proxy.glass_stops`) or its next request.
GRACE: Final = 120.0
#: Sweeps that try again a mark the board refused (at 30 s: about the lease, 300 s).
MARK_TRIES: Final = 10
#: Seconds between two takes of a stop another process holds (R7b-4: a held row is not asked
#: for at every request; its lease is ``LEASE``, the sweep asks every ``SWEEP_EVERY``), or
#: of one the board could not answer for (R7c-3).
HELD_RETRY: Final = 10.0


@dataclass(frozen=True, slots=True)
class Session:
    """One open emergency session of one caller (its identity, for the stop event) for one
    patient (``Patient/<id>``). ``owed``: its stop may be on the board (whoever takes it
    records it); ``taken``: the board's row this process took to record the stop;
    ``unproven``: why this process records a stop it did not take (the board's reason code:
    the row was missing, unreadable, or held under a lease no taker sets); ``pending``: its
    start is not yet on the ledger (honoured nowhere); ``retry_at``: when to ask the board
    again for a stop another process holds (or the board could not answer for)."""

    caller: str
    identity: Identity
    patient: str
    started: float
    ends: float
    owed: bool = False
    taken: Owed | None = None
    unproven: str | None = None
    pending: bool = False
    retry_at: float = 0.0


def requested_reason(headers: Mapping[str, str], caller: Caller) -> str | None:
    """The emergency reason the request gives, or None when it asks for nothing. Raises
    :class:`Forbidden` when the token does not allow break-the-glass, :class:`BadRequest` for
    an empty or oversize reason (the reason is audit evidence: it must say something)."""
    reason = headers.get(BREAK_GLASS_HEADER)
    if reason is None:
        return None
    if not caller.identity.break_the_glass:
        raise Forbidden("this token does not allow emergency access")
    reason = reason.strip()
    if not reason or len(reason) > _MAX_REASON or not reason.isprintable():
        raise BadRequest(f"{BREAK_GLASS_HEADER} must be 1..{_MAX_REASON} printable characters")
    return reason


def forbids_break_glass(policies: Iterable[Policy], now: datetime) -> bool:
    """True when an active consent in force at ``now`` denies the purpose BTG anywhere in its
    provision tree (the patient's "no break-the-glass")."""
    for policy in policies:
        if policy.status != "active":
            continue
        if policy.period is not None and not policy.period.contains(now):
            continue
        if _denies_btg(policy.root):
            return True
    return False


def _denies_btg(provision: Provision) -> bool:
    if provision.effect == DENY and provision.purposes.matches(BTG):
        return True
    return any(_denies_btg(child) for child in provision.children)


class BreakGlass:
    """Open emergency sessions, time-boxed to ``minutes`` (module docstring)."""

    def __init__(self, minutes: int, *, board: SessionBoard | None = None) -> None:
        if minutes <= 0:
            raise ValueError("a break-the-glass session lasts a positive number of minutes")
        self.seconds = minutes * 60
        self._sessions: dict[tuple[str, str], Session] = {}
        #: Sessions over whose stop this process is still to record (or prove recorded).
        self._closing: dict[tuple[str, str, float], Session] = {}
        self._board = board
        #: Marks "recorded" the board refused, tried again at each sweep (R7b-6: a row whose
        #: mark is lost lapses after its lease and is recorded again), with the tries left.
        self._marks: list[tuple[Callable[[], Awaitable[bool]], int]] = []

    async def active(self, caller: Caller, now: float, among: Iterable[str]) -> frozenset[str]:
        """The patients ``caller`` holds an open session for (in this process, or, of the
        patients ``among``, on the board when its token allows break-the-glass: the board
        keeps digests, it can only be asked about given patients)."""
        shared = frozenset[str]()
        if self._board is not None and caller.identity.break_the_glass:
            shared = await self._board.active(caller.binding, among, now)
        if not self._sessions:  # every request asks: the common answer costs nothing
            return shared
        return shared | frozenset(
            s.patient
            for s in self._sessions.values()
            if s.caller == caller.binding and s.ends > now and not s.pending
        )

    @property
    def shared(self) -> bool:
        """Whether the sessions are on a board (other processes honour them)."""
        return self._board is not None

    def holding(self) -> bool:
        """Whether this process holds any session (the per-request check, without a task)."""
        return bool(self._sessions or self._closing)

    def open_count(self, now: float) -> int:
        """How many sessions are open at ``now`` (for the metrics gauge)."""
        if not self._sessions:
            return 0
        return sum(1 for s in self._sessions.values() if s.ends > now)

    async def open(self, caller: Caller, patients: Iterable[str], now: float) -> list[Session]:
        """Open sessions, pending, for ``patients`` that have none; returns the newly opened
        ones: record their starts, then pass these very sessions to :meth:`begin` (else to
        :meth:`abandon`). Only for a request that gives the reason (the header): never a
        renewal. Raises :class:`~middleware.errors.ServiceUnavailable` when the board cannot
        take a claim, or when a session is being opened (pending) here or elsewhere, expired
        or not (R7c-1: a start append may outlast its session; a second session opened then
        would be confused with it); then nothing this call claimed is kept (R7b-1: not the
        first patients' claims either)."""
        opened: list[Session] = []
        board = self._board
        try:
            for patient in patients:
                key = (caller.binding, patient)
                current = self._sessions.get(key)
                if current is not None and current.pending:  # its start undecided
                    raise BeingOpened
                if current is not None and current.ends > now:
                    continue
                if current is not None:  # never continued (R7-1): its stop is still owed
                    self._close(current)
                ends = now + self.seconds
                # In memory (pending) before the claim: a claim whose answer is lost is
                # released by abandon() like one that answered.
                session = Session(caller.binding, caller.identity, patient, now, ends, pending=True)
                self._sessions[key] = session
                opened.append(session)
                if board is None:
                    continue
                try:
                    claimed = await board.claim(caller.binding, patient, ends, now)
                except BeingOpened:  # the row is another's: not ours to release
                    self._forget(session, opened)
                    raise
                if not claimed:  # started in another process, which records its start and stop
                    self._forget(session, opened)
        except BaseException:
            self.abandon(opened)
            raise
        return opened

    def _forget(self, session: Session, opened: list[Session]) -> None:
        """Drop ``session``, pending, which :meth:`open` did not claim on the board."""
        opened.remove(session)
        if self._sessions.get((session.caller, session.patient)) is session:
            del self._sessions[(session.caller, session.patient)]

    async def begin(self, sessions: Iterable[Session]) -> None:
        """The starts of ``sessions`` (as :meth:`open` returned them) are on the ledger:
        honoured here at once (before any await: a cancellation cannot separate the start
        from the session) and, once the board confirms them (the claim until their ``ends``,
        no other), by every process. Only these very sessions (R7c-1: never another opened
        since for the same caller and patient)."""
        begun: list[Session] = []
        for session in sessions:
            key = (session.caller, session.patient)
            if self._sessions.get(key) is session and session.pending:
                self._sessions[key] = replace(session, pending=False)
                begun.append(session)
        if self._board is not None:
            for session in begun:
                await self._board.confirm(session.caller, session.patient, session.ends)

    def abandon(self, sessions: Iterable[Session]) -> None:
        """Drop ``sessions`` (as :meth:`open` returned them), still pending: their start is not
        on the ledger. Not honoured here nor, pending on the board, by another process; the
        board's row (the claim until their ``ends``) is released (a release lost leaves an
        inert row)."""
        for session in sessions:
            key = (session.caller, session.patient)
            if self._sessions.get(key) is not session or not session.pending:
                continue
            del self._sessions[key]
            if self._board is not None:
                self._board.release(session.caller, session.patient, session.ends)

    def _close(self, session: Session) -> None:
        """Move ``session`` (over) from the open ones to those whose stop is owed."""
        if self._sessions.get((session.caller, session.patient)) is session:
            del self._sessions[(session.caller, session.patient)]
            if self._board is not None:
                self._board.release(session.caller, session.patient, session.ends)
        self._closing[(session.caller, session.patient, session.ends)] = session

    async def owe(self, opened: Session, stop: bytes) -> bool:
        """Leave the stop of ``opened`` (a session :meth:`open` returned, begun) on the board
        (``stop``: what a sweep needs to record it; its start is on the ledger). False when
        there is no board, the session is no longer open here, or the board cannot take it
        (it may have kept it all the same: the answer was lost); this process then takes the
        row or, finding none, records the stop alone. True once any process may."""
        key = (opened.caller, opened.patient)
        session = self._sessions.get(key)
        if self._board is None or session is None or session.ends != opened.ends:
            return False  # R7c-1: never another session's row (ends: the claim's own)
        stored = True
        try:
            await self._board.owe(session.caller, session.patient, session.ends, stop)
        except ServiceUnavailable:
            stored = False  # maybe stored: the take at expire() tells (no second stop)
        if self._sessions.get(key) is session:
            self._sessions[key] = replace(session, owed=True)
        return stored

    async def expire(self, now: float) -> list[Session]:
        """Close every session whose time is over and return those whose stop this process is
        to record: one not left on the board, one whose row it took, or one the board cannot
        prove recorded by another (``unproven`` says why). A row another process holds under
        a live lease, or a board that cannot answer, keeps the stop here for a later call.
        Pass each returned session to :meth:`settle`."""
        if not self.holding():
            return []
        for session in [s for s in self._sessions.values() if s.ends <= now and not s.pending]:
            self._close(session)
        over: list[Session] = []
        for key, session in list(self._closing.items()):
            found: Owed | str | None = None
            if session.owed:
                assert self._board is not None  # owed only through a board
                if now < session.retry_at:
                    continue  # held by another a moment ago (R7b-4): asked again later
                try:
                    found = await self._board.take(
                        session.caller, session.patient, session.ends, now
                    )
                except ServiceUnavailable:  # kept, asked again after HELD_RETRY (R7c-3:
                    # not a take, nor a pool reopened, at every request while it is down)
                    if self._closing.get(key) is session:
                        self._closing[key] = replace(session, retry_at=now + HELD_RETRY)
                    continue
                if found == HELD:  # being recorded by another; kept until the board proves it
                    if self._closing.get(key) is session:
                        self._closing[key] = replace(session, retry_at=now + HELD_RETRY)
                    continue
            if self._closing.get(key) is not session:
                continue  # closed meanwhile by a concurrent call
            del self._closing[key]
            if found == RECORDED_BY_OTHER:
                continue
            if isinstance(found, str):
                over.append(replace(session, unproven=found))
            else:
                over.append(replace(session, taken=found))
        return over

    async def settle(self, session: Session, *, recorded: bool) -> None:
        """After :meth:`expire`: the stop of ``session`` was ``recorded`` (its board row is
        marked so), or not (kept, with its row given back, for a later :meth:`expire`)."""
        key = (session.caller, session.patient, session.ends)
        if not recorded:
            self._closing.setdefault(key, replace(session, taken=None, unproven=None))
        if self._board is None:
            return
        board = self._board
        if session.taken is not None:
            taken = session.taken
            if not await board.settle(taken, recorded=recorded) and recorded:
                self._remark(lambda: board.settle(taken, recorded=True))
            kept = self._closing.get(key)
            if not recorded and kept is not None:  # our own row, given back: ask again now
                self._closing[key] = replace(kept, retry_at=0.0)
        elif recorded and session.owed:
            c, p, e = session.caller, session.patient, session.ends
            if not await board.recorded(c, p, e):
                self._remark(lambda: board.recorded(c, p, e))

    def _remark(self, mark: Callable[[], Awaitable[bool]]) -> None:
        self._marks.append((mark, MARK_TRIES))

    async def _retry_marks(self) -> None:
        """Try again the marks the board refused (each at most ``MARK_TRIES`` times)."""
        marks, self._marks = self._marks, []
        for mark, tries in marks:
            if not await mark() and tries > 1:
                self._marks.append((mark, tries - 1))

    async def overdue(self, now: float) -> list[Owed]:
        """Take the stops still owed ``GRACE`` seconds after their session ended (their opener
        is gone), for this process to record; pass each to :meth:`settle_owed`."""
        if self._board is None:
            return []
        if self._marks:
            await self._retry_marks()
        return await self._board.take_overdue(now - GRACE, now)

    async def settle_owed(self, owed: Owed, *, recorded: bool) -> None:
        """After :meth:`overdue`: forget ``owed`` once ``recorded``, else give it back."""
        board = self._board
        if board is not None and not await board.settle(owed, recorded=recorded) and recorded:
            self._remark(lambda: board.settle(owed, recorded=True))

    async def aclose(self) -> None:
        """Let go of the board (its queued releases finish first); idempotent."""
        if self._board is not None:
            await self._board.aclose()
