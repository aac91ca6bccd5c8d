"""Signing-key rotation recorded in the log: one key-event entry, at an exact position.

:func:`record_rotation` appends a key-event entry (:mod:`middleware.ledger.keyevent`) as a
batch of its own, signed by the *retired* key, so the checkpoint that first contains the
announcement is the old key's last one. The event names absolute sizes, so it must land at the
size read just before: the signer handed to the store refuses any other size, which rolls the
whole append back (every backend signs inside the append transaction, before it commits), and
the rotation retries with the new size. No other appender can slip in between, and the log
still never signs two roots for one size (the store's contract).

The entry's idempotency key is derived from the successor key, so re-running an interrupted
rotation returns the event already recorded instead of recording a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import LedgerError, MalformedError, VerificationError
from middleware.ledger.keyevent import KeyEvent, parse_key_event
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.storage.ledger_base import LogStore

__all__ = ["RotationError", "RotationResult", "record_rotation"]


class RotationError(LedgerError):
    """The rotation could not be recorded (the log kept moving, or disagrees with the key)."""


@dataclass(frozen=True, slots=True)
class RotationResult:
    """The key event and its ``index``; ``resumed`` when an earlier run had recorded it."""

    index: int
    event: KeyEvent
    resumed: bool


class _Moved(Exception):
    """Raised by the position-checking signer to roll an append back."""


async def record_rotation(
    store: LogStore,
    retired: SigningKey,
    successor: SigningKey,
    *,
    origin: str,
    recorded_us: int,
    attempts: int = 20,
) -> RotationResult:
    """Append the key event retiring ``retired`` for ``successor`` (see the module docstring).

    Raises :class:`RotationError` if the latest checkpoint is not the retired key's (the
    wrong key file, or the log's key was already rotated), if other appenders kept the log
    moving for ``attempts`` tries, or if an earlier run recorded a different event under the
    same successor.
    """
    latest = await store.checkpoint()
    if latest is not None:
        try:
            verify_checkpoint(latest.note, [retired.verifier()], origin=origin)
        except (MalformedError, VerificationError) as exc:
            raise RotationError(
                f"the latest checkpoint is not {origin}'s, signed by the key to retire: {exc}"
            ) from exc
    key = "consentry-key-event-" + hashlib.sha256(successor.vkey().encode()).hexdigest()[:32]
    for _ in range(attempts):
        size = (await store.state()).size
        event = KeyEvent.at(origin, retired.vkey(), successor.vkey(), size)
        entry = NewEntry.create(
            EntryKind.KEY_EVENT, event.encode(), recorded_us=recorded_us, idempotency_key=key
        )

        def sign(signed_size: int, root: bytes, expected: int = size + 1) -> str:
            if signed_size != expected:
                raise _Moved
            return retired.sign_checkpoint(Checkpoint(origin, signed_size, root))

        try:
            (result,) = await store.append([entry], sign=sign)
        except _Moved:
            continue
        if not result.duplicate:
            return RotationResult(result.index, event, resumed=False)
        return await _recorded(store, result.index, retired, successor)
    raise RotationError(f"the log kept growing; no rotation recorded after {attempts} tries")


async def _recorded(
    store: LogStore, index: int, retired: SigningKey, successor: SigningKey
) -> RotationResult:
    evidence = await store.evidence(index)
    if evidence is None:
        raise RotationError(f"the key event at {index} has lost its evidence")
    event = parse_key_event(evidence.data)
    if (event.retired, event.successor) != (retired.vkey(), successor.vkey()):
        raise RotationError(f"the key event at {index} records another rotation")
    return RotationResult(index, event, resumed=True)
