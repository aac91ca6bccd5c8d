"""The log's identity, checked before the gateway signs anything: its origin and its key.

Every checkpoint a log stores carries its origin line and is signed by the log's key (C2SP
tlog-checkpoint); checkpoints are never updated or deleted (the store's contract, enforced by
triggers on SQL backends). So the latest stored checkpoint *is* the log's identity, kept with
the log on every backend, and it is what the next checkpoint must continue: the same origin,
and a signature by the key that will sign next, or, right after a rotation, by the retired
key of the key event that ends the log (:mod:`middleware.ledger.keyevent`), which names this
key as its successor.

A gateway that signed anything else would break the log for every verifier (``ledger
verify`` reports ``checkpoint-origin`` and ``unsigned-leaves``), so a mismatch stops start-up:
:func:`check_identity` raises :class:`LedgerIdentityError`, a
:class:`~middleware.errors.SettingsError` that names what disagrees and how to fix it.
:func:`judge_identity` is the pure decision; :func:`check_identity` fetches what it needs.
"""

from __future__ import annotations

from middleware.errors import SettingsError
from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError, VerificationError
from middleware.ledger.keyevent import KeyEvent, parse_key_event
from middleware.ledger.keyfile import LedgerKey
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.note import parse_note, verify_signatures
from middleware.storage.ledger_base import LogStore

__all__ = ["LedgerIdentityError", "check_identity", "final_key_event", "judge_identity"]

_FIX_KEY = "start with the key file that signed this log (ledger_key_file), or with another store"


class LedgerIdentityError(SettingsError):
    """The log in the store is not the log this key file signs; the gateway must not start."""


def judge_identity(
    latest: StoredCheckpoint | None, ledger_key: LedgerKey, handover: KeyEvent | None = None
) -> None:
    """Raise :class:`LedgerIdentityError` unless ``ledger_key`` may sign the log whose latest
    checkpoint is ``latest`` (``None``: an empty log, which any key may start).

    ``handover`` is the key event the log ends with, if it ends with one: its successor may
    sign after its retired key's last checkpoint.
    """
    if latest is None:
        return
    try:
        note = parse_note(latest.note)
        origin = parse_checkpoint(note.text).origin
    except LedgerError as exc:
        raise LedgerIdentityError(
            f"the log's latest checkpoint (size {latest.size}) cannot be read: {exc}; "
            "check it with `consentry ledger verify`"
        ) from exc
    if origin != ledger_key.origin:
        raise LedgerIdentityError(
            f"the log in the store has the origin {origin!r}, the key file is for "
            f"{ledger_key.origin!r}: {_FIX_KEY}"
            + ("" if ledger_key.stated else f" (or set ledger_origin = {origin!r})")
        )
    try:
        verify_signatures(note, [ledger_key.key.verifier()])
    except VerificationError:
        pass
    else:
        return
    vkey = ledger_key.key.vkey()
    if handover is not None and handover.successor == vkey and handover.origin == origin:
        return
    key = ledger_key.key
    if any((s.name, s.key_id) == (key.name, key.key_id) for s in note.signatures):
        raise LedgerIdentityError(
            f"the log's latest checkpoint (size {latest.size}) carries a signature by the key "
            f"in the key file that does not verify: the stored log was altered; check it with "
            "`consentry ledger verify`"
        )
    signers = ", ".join(f"{s.name}+{s.key_id:08x}" for s in note.signatures)
    raise LedgerIdentityError(
        f"the log's latest checkpoint (size {latest.size}) is signed by {signers}, not by "
        f"the key in the key file ({ledger_key.key.name}+{ledger_key.key.key_id:08x}): "
        f"{_FIX_KEY}; a new key takes over only through `consentry keys rotate`"
    )


async def check_identity(store: LogStore, ledger_key: LedgerKey) -> None:
    """:func:`judge_identity` on ``store``'s latest checkpoint and, when that is not signed by
    ``ledger_key``, on the key event the log ends with. Store errors propagate."""
    latest = await store.checkpoint()
    handover = None
    if latest is not None and latest.size > 0:
        try:
            judge_identity(latest, ledger_key)
        except LedgerIdentityError:
            handover = await final_key_event(store, latest.size)
            if handover is None:
                raise
    judge_identity(latest, ledger_key, handover)


async def final_key_event(store: LogStore, size: int) -> KeyEvent | None:
    """The key event at ``size - 1``, if the leaf there is one and its evidence is intact
    (the rotation the checkpoint of ``size`` ends with; also read by
    :mod:`~middleware.ledger.witnessed_store` for the log's earlier keys)."""
    (leaf,) = await store.leaves(size - 1, size)
    if decode_leaf(leaf).kind is not EntryKind.KEY_EVENT:
        return None
    evidence = await store.evidence(size - 1)
    if evidence is None:
        return None
    try:
        event = parse_key_event(evidence.data)
    except LedgerError:  # not a key event after all: no handover
        return None
    return event if event.placed_at(size - 1) else None
