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
   signature on it verifies with the log's key (``kept-log-signature``): the checkpoint row is
   in the same database, so a DBA replacing the signature line in both rows is caught only by
   the key;
4. a quorum of the configured witnesses cosigned it, every line by a configured witness's key
   verifies, none dated more than :data:`~middleware.ledger.quorum.FUTURE_SKEW` ahead of our
   clock (``kept-cosignature``; too few: ``kept-quorum``). Lines by keys not configured (a
   witness removed since) are ignored, as verifiers ignore them.

The reason codes are what :class:`~middleware.ledger.witnessing.Witnessing` logs and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.cosignature import verify_cosignatures
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError, VerificationError
from middleware.ledger.note import NoteVerifier, parse_note
from middleware.ledger.quorum import FUTURE_SKEW
from middleware.ledger.signing import verify_checkpoint
from middleware.ledger.witnesses import with_cosignatures

__all__ = ["KeptWitnessed", "refusal"]


class KeptWitnessed(Protocol):
    """What publishing reads and writes of the log store
    (:class:`~middleware.storage.ledger_base.LogStore`)."""

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None: ...

    async def witnessed(self) -> tuple[int, str] | None: ...

    async def keep_witnessed(self, note: str) -> bool: ...


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
    and it is the log's checkpoint at that size, signed by ``log`` (the log's key).
    ``now``: POSIX seconds. The store's errors (reading the log's checkpoint) propagate."""
    size, note = kept
    try:
        parsed = parse_note(note)
        stated = parse_checkpoint(parsed.text).size
    except LedgerError:
        return "kept-malformed"
    if stated != size:
        return "kept-size"
    logged = await store.checkpoint(size)
    if logged is None or parse_note(logged.note).text != parsed.text:
        return "kept-not-logged"
    if with_cosignatures(logged.note, parsed.signatures) != note:
        return "kept-log-signature"
    try:
        verify_checkpoint(note, [log])  # witness lines: other keys, ignored (signed-note)
    except LedgerError:
        return "kept-log-signature"
    try:
        verify_cosignatures(parsed, witnesses, quorum, not_after=int(now) + FUTURE_SKEW)
    except VerificationError as exc:
        return "kept-quorum" if exc.expected == quorum else "kept-cosignature"
    except LedgerError:
        return "kept-cosignature"
    return None
