"""What :class:`~middleware.pipeline.breakglass.BreakGlass` needs of a session board, the
sessions open in any process of the gateway (read that module's docstring): the SQLite file of
one gateway's workers (:mod:`middleware.storage.breakglass_sqlite`) or the PostgreSQL table of
every replica (:mod:`middleware.storage.breakglass_postgres`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from middleware.errors import ServiceUnavailable

__all__ = ["HELD", "PENDING", "RECORDED_BY_OTHER", "BeingOpened", "Owed", "SessionBoard"]

#: :meth:`SessionBoard.take` took nothing: another process holds the row under a live lease.
HELD: Final = "held"
#: :meth:`SessionBoard.take` took nothing: the row, readable, is marked recorded.
RECORDED_BY_OTHER: Final = "recorded"
#: Seconds a pending claim (its start not yet on the ledger) blocks another claim of the same
#: session: far longer than a start append may take; after that the row is inert and replaced.
PENDING: Final = 60.0


class BeingOpened(ServiceUnavailable):
    """A session is pending (its start undecided), here or in another process: this request is
    refused (503, retry). Raised by :meth:`SessionBoard.claim` it says the row is another's:
    nothing of this call is on the board, nothing to release."""

    def __init__(self) -> None:
        super().__init__("an emergency session is being opened; retry")


@dataclass(frozen=True, slots=True)
class Owed:
    """A stop the board holds (its row, ``id`` and ``ends``), taken by one process to record:
    ``stop`` the bytes the opener left (:meth:`~middleware.pipeline.breakglass.BreakGlass.owe`),
    opened."""

    id: bytes
    ends: float
    stop: bytes


class SessionBoard(Protocol):
    """The sessions open in any process of the gateway (:mod:`middleware.pipeline.breakglass`)."""

    async def active(self, binding: str, patients: Iterable[str], now: float) -> frozenset[str]:
        """Which of ``patients`` ``binding`` holds an open session for whose start is on the
        ledger (:meth:`confirm`; none when unreadable)."""
        ...

    async def claim(self, binding: str, patient: str, ends: float, now: float) -> bool:
        """Record a session, pending, unless one is open; True when this call recorded it,
        False when a started one is open. Raises :class:`~middleware.errors.ServiceUnavailable`
        when it cannot tell; :class:`BeingOpened` when another's pending claim (under ``PENDING``
        seconds old) holds the session: its start is undecided."""
        ...

    async def confirm(self, binding: str, patient: str, ends: float) -> None:
        """Mark the session claimed until ``ends`` started (its start is on the ledger): from
        now on every process honours it. A failure is swallowed (it stays pending: honoured
        by its opener only)."""
        ...

    def release(self, binding: str, patient: str, ends: float) -> object:
        """Forget a closed session (only the one until ``ends``); may return before it is
        done (what it returns is not used)."""
        ...

    async def owe(self, binding: str, patient: str, ends: float, stop: bytes) -> None:
        """Keep ``stop`` (sealed) for the session until ``ends``, until a taker settles it.
        Raises :class:`~middleware.errors.ServiceUnavailable` when it cannot."""
        ...

    async def take(self, binding: str, patient: str, ends: float, now: float) -> Owed | str:
        """Take the session's owed stop; else why not: :data:`RECORDED_BY_OTHER` (proof),
        :data:`HELD`, or a reason code (no proof another records it). Raises
        ServiceUnavailable when it cannot tell."""
        ...

    async def recorded(self, binding: str, patient: str, ends: float) -> bool:
        """Mark the session's stop recorded (this process recorded it without a take);
        False when the board cannot be written (the opener's record stands; may be retried)."""
        ...

    async def take_overdue(self, before: float, now: float) -> list[Owed]:
        """Take the owed stops of sessions that ended at or before ``before`` and that no
        live take holds (a few at a time); none when the board cannot be written."""
        ...

    async def settle(self, owed: Owed, *, recorded: bool) -> bool:
        """Mark a taken stop ``recorded``, else give it back to be taken again; False when
        the board cannot be written (the take lapses after its lease: a mark is retried)."""
        ...

    async def aclose(self) -> None:
        """Finish queued releases and let go of the board (idempotent)."""
        ...
