"""The sealed contents of a board's owed-stop row, shared by both boards.

A row ``(id, ends) -> stop, taken_until`` holds one of two things, sealed
(:func:`~middleware.ledger.signing.seal`) under the board's stop key and bound to its row
(``id`` and ``ends`` inside the sealed bytes, checked on opening: a stop copied onto another
row does not open there):

* the stop the opener left (:func:`seal_stop`), while it is owed;
* once a taker recorded it, a mark saying so (:func:`seal_recorded`), with ``taken_until`` set
  to :data:`RECORDED` (no take selects it) until :data:`KEEP` seconds after ``ends``.

The opener holds its session's stop in memory and records it itself unless the board proves
that another did (:func:`verdict`: a row that opens to the mark). A row missing, unreadable or
under a lease no taker could have set is no proof (spec: review finding R7-3, fail closed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, Literal

from middleware.ledger.signing import seal, unseal
from middleware.logging import get_logger
from middleware.pipeline.breakglass import HELD, RECORDED_BY_OTHER, Owed

__all__ = [
    "KEEP",
    "LEASE",
    "RECORDED",
    "SKEW",
    "open_row",
    "opened",
    "opened_all",
    "seal_recorded",
    "seal_stop",
    "verdict",
]

#: Seconds a take holds an owed stop: far longer than a ledger append may take.
LEASE: Final = 300.0
#: Seconds the clocks of two processes may differ: a lease set by a taker whose clock runs
#: ahead ends up to this much after ``now + LEASE`` and is still a taker's (review R7b-5).
SKEW: Final = 60.0
#: ``taken_until`` of a recorded row: later than any ``now``, so no take selects it.
RECORDED: Final = 1e300
#: Seconds after ``ends`` a recorded row is kept (the opener's proof), then deleted.
KEEP: Final = 86400.0
_STOP: Final = b"S"
_MARK: Final = b"R"
_LOG: Final = get_logger("consentry.breakglass")


def _bound(kind: bytes, row_id: bytes, ends: float) -> bytes:
    return kind + struct.pack(">B", len(row_id)) + row_id + struct.pack(">d", ends)


def seal_stop(key: bytes, row_id: bytes, ends: float, stop: bytes) -> bytes:
    """``stop`` sealed for the row ``(row_id, ends)``."""
    return seal(key, _bound(_STOP, row_id, ends) + stop)


def seal_recorded(key: bytes, row_id: bytes, ends: float) -> bytes:
    """The mark that the stop of row ``(row_id, ends)`` is on the ledger."""
    return seal(key, _bound(_MARK, row_id, ends))


def open_row(key: bytes, row_id: bytes, ends: float, sealed: bytes) -> bytes | Literal[True] | None:
    """What the row holds: the stop (bytes), True for the recorded mark, None when it does
    not open under ``key`` for this row (sealed elsewhere, changed, moved)."""
    plain = unseal(key, sealed)
    if plain is None:
        return None
    if plain == _bound(_MARK, row_id, ends):
        return True
    head = _bound(_STOP, row_id, ends)
    return plain[len(head) :] if plain.startswith(head) else None


def verdict(
    key: bytes, row_id: bytes, ends: float, row: tuple[bytes, float] | None, now: float
) -> str:
    """Why a take of row ``(row_id, ends)`` took nothing, from the row as read after it
    (``(stop, taken_until)`` or None): :data:`RECORDED_BY_OTHER` (the mark: proof),
    :data:`HELD` (a readable stop under a lease a taker set, its clock up to :data:`SKEW`
    ahead: another records it now), else a reason code (``missing``, ``unreadable``,
    ``lease-out-of-range``): no proof."""
    if row is None:
        return "missing"
    opened = open_row(key, row_id, ends, row[0])
    if opened is None:
        return "unreadable"
    if opened is True:
        return RECORDED_BY_OTHER
    if now < row[1] <= now + LEASE + SKEW:
        return HELD
    return "lease-out-of-range"


def opened(key: bytes, row_id: bytes, ends: float, sealed: bytes) -> Owed | Literal[True] | None:
    """A row a sweep took, opened: its stop, True for one marked recorded, None (logged with
    its reason code, counted by the caller) for one that does not open: its take lapses,
    never guessed at."""
    stop = open_row(key, row_id, ends, sealed)
    if stop is None:
        _LOG.error("break-glass owed stop unreadable", reason="unreadable")
    return stop if stop is None or stop is True else Owed(row_id, ends, stop)


def opened_all(key: bytes, rows: Iterable[tuple[bytes, float, bytes]]) -> tuple[list[Owed], int]:
    """The rows a sweep took (``(id, ends, sealed stop)``), opened (:func:`opened`): the stops
    owed, and how many did not open (the boards count them); rows marked recorded are left
    out."""
    taken: list[Owed] = []
    unreadable = 0
    for row_id, ends, sealed in rows:
        owed = opened(key, row_id, ends, sealed)
        if isinstance(owed, Owed):
            taken.append(owed)
        elif owed is None:
            unreadable += 1
    return taken, unreadable
