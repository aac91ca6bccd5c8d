"""``signed_as``: the checkpoint a store signed that a note states, whatever signatures the
note adds (a witnessed checkpoint's cosignatures), and never one of another text."""

from __future__ import annotations

import asyncio
from typing import cast

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_base import LogStore, signed_as

_KEY = SigningKey.generate("log.example/ledger")
_OTHER = SigningKey.generate("witness.example/w1")


class _Checkpoints:
    """What ``signed_as`` reads of a store: its checkpoint by size."""

    def __init__(self, *stored: StoredCheckpoint) -> None:
        self.by_size = {one.size: one for one in stored}

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        return None if size is None else self.by_size.get(size)


def _signed(size: int, root: bytes) -> StoredCheckpoint:
    note = _KEY.sign_checkpoint(Checkpoint("log.example/ledger", size, root))
    return StoredCheckpoint(size, root, note)


def _run(store: _Checkpoints, note: str) -> StoredCheckpoint | None:
    return asyncio.run(signed_as(cast("LogStore", store), note))


def test_the_stored_checkpoint_of_the_same_text_is_found_with_more_signatures() -> None:
    stored = _signed(4, b"\x01" * 32)
    text, _, lines = stored.note.partition("\n\n")
    more = _OTHER.sign_note(text + "\n").partition("\n\n")[2]
    assert _run(_Checkpoints(stored), stored.note) == stored
    assert _run(_Checkpoints(stored), f"{text}\n\n{lines}{more}") == stored


def test_a_note_of_another_root_at_a_stored_size_is_not_the_stored_one() -> None:
    """A fork: the same size and key, another root. Taking it for the stored checkpoint
    would let a receipt or an export carry a tree the log never had."""
    stored = _signed(4, b"\x01" * 32)
    assert _run(_Checkpoints(stored), _signed(4, b"\x02" * 32).note) is None


def test_a_size_the_store_never_signed_is_none() -> None:
    assert _run(_Checkpoints(_signed(4, b"\x01" * 32)), _signed(5, b"\x01" * 32).note) is None
