"""Checking a witnessed checkpoint read back from the log's store before publishing it.

Gateway replicas keep the newest witnessed checkpoint in the log's store
(:mod:`middleware.storage.ledger_witnessed`) and publish what it holds. The store is not
trusted for that: whoever can write to the database (the triggers dropped) can put any row
there. :func:`refusal` publishes nothing a verifier would not accept from the log and the
gateway's witness policy (its ``witnesses`` and ``witness_quorum``):

1. the row's size is the size the note states (``kept-size``; a note that does not parse:
   ``kept-malformed``);
2. the log signed a checkpoint of that size with this very text, so the root is the log's root
   at that size (``kept-not-logged``);
3. the note is the log's note, byte for byte, with more signature lines after it, and the log's
   signature on it verifies with the key that signed the log at that size
   (``kept-log-signature``): the checkpoint row is in the same database, so a DBA replacing the
   signature line in both rows is caught only by the key. That key is the log's current key or,
   for a size signed before ``consentry keys rotate``, a key it retired: :func:`signer_at` walks
   the log's key events back from the current key, as the gateway's identity check reads the
   handover (:func:`~middleware.ledger.identity.final_key_event`: a key-event leaf with its
   evidence, at the position its sizes state). Like that check it trusts the key-event leaf as
   stored; whether the later checkpoints' roots commit to it is ``consentry ledger verify``'s
   work (``key-window`` and root findings);
4. a quorum of the configured witnesses cosigned it, every line by a configured witness's key
   verifies, none dated more than :data:`~middleware.ledger.quorum.FUTURE_SKEW` ahead of our
   clock (``kept-cosignature``; too few: ``kept-quorum``). Lines by keys not configured (a
   witness removed since) are ignored, as verifiers ignore them.

The reason codes are what :class:`~middleware.ledger.witnessing.Witnessing` logs and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from middleware.ledger.cosignature import verify_cosignatures
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError, VerificationError
from middleware.ledger.identity import final_key_event
from middleware.ledger.note import NoteVerifier, parse_note
from middleware.ledger.quorum import FUTURE_SKEW
from middleware.ledger.signing import Verifier, verify_checkpoint
from middleware.ledger.witnesses import with_cosignatures
from middleware.storage.ledger_base import LogStore, signed_as
from middleware.storage.ledger_witnessed import witnessed_size

__all__ = ["KeptWitnessed", "refusal", "signer_at"]

#: What publishing reads and writes: the log's store (its checkpoints, key events and rows).
KeptWitnessed: TypeAlias = LogStore


async def refusal(
    store: KeptWitnessed,
    kept: tuple[int, str],
    witnesses: Sequence[NoteVerifier],
    quorum: int,
    *,
    log: NoteVerifier,
    now: float,
) -> str | None:
    """Why the kept row ``(size, note)`` must not be published (a reason code, module
    docstring), or None when it may: ``quorum`` (at least 1) of ``witnesses`` cosigned it,
    and it is the log's checkpoint at that size, signed by ``log`` (the log's current key) or
    by the earlier key the log's key events name for that size (:func:`signer_at`).
    ``now``: POSIX seconds. The store's errors (reading the log's checkpoint) propagate."""
    size, note = kept
    try:
        parsed = parse_note(note)
        stated = witnessed_size(note)
    except LedgerError:
        return "kept-malformed"
    if stated != size:
        return "kept-size"
    logged = await signed_as(store, note)
    if logged is None:
        return "kept-not-logged"
    if with_cosignatures(logged.note, parsed.signatures) != note:
        return "kept-log-signature"
    if not _verifies(note, log):  # witness lines: other keys, ignored (signed-note)
        signer = await signer_at(store, log, size)  # a size signed before a rotation
        if signer is None or not _verifies(note, signer):
            return "kept-log-signature"
    try:
        verify_cosignatures(parsed, witnesses, quorum, not_after=int(now) + FUTURE_SKEW)
    except VerificationError as exc:
        return "kept-quorum" if exc.expected == quorum else "kept-cosignature"
    except LedgerError:
        return "kept-cosignature"
    return None


async def signer_at(store: LogStore, log: NoteVerifier, size: int) -> NoteVerifier | None:
    """The key that signed the log's checkpoint of ``size`` by the log's key events: ``log``
    (the current key) or a key retired, event by event, in its favour; None when the events
    name none (no rotation recorded, a chain broken, ``size`` not signed).

    Each key signs one run of checkpoints (the key windows ``ledger verify`` checks), found by
    a binary search over the store's checkpoints (a few signature checks); the checkpoint
    below a run is the retired key's last, ending with the key event naming the run's key as
    its successor. Reads every checkpoint: called only for a kept note the current key did
    not sign (one signed before a rotation), once per such note."""
    notes = await store.checkpoints()
    key, end = log, len(notes)
    while True:
        start = _run_start(notes, end, key)
        if start < end and notes[start].size <= size:
            return key
        if start == 0 or (start == end and key is not log):  # a retired key signs its last
            return None
        event = await final_key_event(store, notes[start - 1].size)
        if event is None:
            return None
        retired, successor = Verifier.from_vkey(event.retired), Verifier.from_vkey(event.successor)
        if (successor.name, successor.key_id) != (key.name, key.key_id):
            return None
        key, end = retired, start


def _run_start(notes: Sequence[StoredCheckpoint], end: int, key: NoteVerifier) -> int:
    """The first of ``notes[:end]`` of the run ``key`` signs up to ``end`` (``end``: none),
    assuming the checkpoints it signs are contiguous (a store where they are not fails the
    key-event checks after this, or the note's own signature check)."""
    low, high = 0, end
    while low < high:
        mid = (low + high) // 2
        if _verifies(notes[mid].note, key):
            high = mid
        else:
            low = mid + 1
    return low


def _verifies(note: str, key: NoteVerifier) -> bool:
    try:
        verify_checkpoint(note, [key])
    except LedgerError:
        return False
    return True
