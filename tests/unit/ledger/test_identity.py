"""``judge_identity``: which key and origin may continue a log, decided on its latest stored
checkpoint (and the key event that may end the log); each refusal says what disagrees."""

from __future__ import annotations

import pytest

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.identity import LedgerIdentityError, judge_identity
from middleware.ledger.keyevent import KeyEvent
from middleware.ledger.keyfile import LedgerKey
from middleware.ledger.signing import SigningKey

ORIGIN = "gw.example/ledger"
ROOT = bytes(range(32))
KEY = SigningKey.from_seed(ORIGIN, bytes([1]) * 32)
SUCCESSOR = SigningKey.from_seed(ORIGIN, bytes([2]) * 32)
STRANGER = SigningKey.from_seed(ORIGIN, bytes([3]) * 32)


def stored(key: SigningKey, origin: str = ORIGIN, size: int = 5) -> StoredCheckpoint:
    return StoredCheckpoint(size, ROOT, key.sign_checkpoint(Checkpoint(origin, size, ROOT)))


def forged(checkpoint: StoredCheckpoint) -> StoredCheckpoint:
    """One signature character changed past the key ID (the blob's first 4 bytes)."""
    text, _, signature = checkpoint.note.rpartition(" ")
    flipped = signature[:10] + ("B" if signature[10] == "A" else "A") + signature[11:]
    return StoredCheckpoint(checkpoint.size, checkpoint.root, f"{text} {flipped}")


HANDOVER = KeyEvent.at(ORIGIN, KEY.vkey(), SUCCESSOR.vkey(), 4)


@pytest.mark.parametrize(
    ("latest", "signer", "handover"),
    [
        (None, LedgerKey(STRANGER, "any.example/ledger"), None),
        (stored(KEY), LedgerKey(KEY, ORIGIN), None),
        (stored(KEY), LedgerKey(SUCCESSOR, ORIGIN), HANDOVER),
        (stored(SUCCESSOR), LedgerKey(SUCCESSOR, ORIGIN), HANDOVER),
    ],
    ids=["empty-log", "same-key-and-origin", "named-successor", "successor-signed-since"],
)
def test_who_may_continue(
    latest: StoredCheckpoint | None, signer: LedgerKey, handover: KeyEvent | None
) -> None:
    judge_identity(latest, signer, handover)


@pytest.mark.parametrize(
    ("latest", "signer", "handover", "message"),
    [
        # The origin is the log's name: never another, whatever the key.
        (stored(KEY), LedgerKey(KEY, "other.example/ledger"), None, f"origin '{ORIGIN}'"),
        (
            stored(KEY),
            LedgerKey(KEY, "other.example/ledger", stated=False),
            None,
            f"or set ledger_origin = '{ORIGIN}'",
        ),
        # Another key of the same origin, unless the log hands over to it.
        (stored(KEY), LedgerKey(STRANGER, ORIGIN), None, f"signed by {ORIGIN}+{KEY.key_id:08x}"),
        (stored(KEY), LedgerKey(STRANGER, ORIGIN), HANDOVER, "keys rotate"),
        (
            stored(KEY),
            LedgerKey(SUCCESSOR, ORIGIN),
            KeyEvent.at("other.example/ledger", KEY.vkey(), SUCCESSOR.vkey(), 4),
            "is signed by",
        ),
        (stored(SUCCESSOR), LedgerKey(KEY, ORIGIN), HANDOVER, "is signed by"),  # retired key
        # Our own name and key ID on a signature that does not verify: the log was altered.
        (forged(stored(KEY)), LedgerKey(KEY, ORIGIN), None, "does not verify"),
        (StoredCheckpoint(5, ROOT, "garbage"), LedgerKey(KEY, ORIGIN), None, "cannot be read"),
    ],
    ids=[
        "other-origin",
        "other-origin-unstated",
        "other-key",
        "other-key-not-the-successor",
        "handover-of-another-origin",
        "retired-key-after-handover",
        "forged-own-signature",
        "malformed-note",
    ],
)
def test_what_stops_start_up(
    latest: StoredCheckpoint,
    signer: LedgerKey,
    handover: KeyEvent | None,
    message: str,
) -> None:
    with pytest.raises(LedgerIdentityError) as refused:
        judge_identity(latest, signer, handover)
    assert message in str(refused.value)
