"""Key-event entries: a signing-key rotation recorded in the log itself.

A ``key-event`` leaf (:attr:`~middleware.ledger.leaf.EntryKind.KEY_EVENT`) commits, like every
leaf, to evidence kept beside the log; for a key event that evidence is the canonical JSON of
:class:`KeyEvent`: the log's origin, the retired key and the last tree size it signs, the
successor key and the first size it signs. Verifier keys are public, so key-event evidence
holds no PHI and exports always carry it.

Position rule (checked by the verifier): a key event at index ``i`` is appended alone, in a
batch whose checkpoint, for size ``i + 1``, the *retired* key signs: so the old key vouches
for the announcement of its successor. Hence ``retired_not_after == i + 1`` and
``successor_not_before == i + 2``. ``consentry keys rotate`` guarantees the position by making
its signer refuse any other size, which rolls the append back (see
:mod:`middleware.ledger.rotation`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from middleware.ledger.errors import MalformedError
from middleware.ledger.note import parse_vkey

__all__ = ["KEY_EVENT_TYPE", "KeyEvent", "parse_key_event"]

KEY_EVENT_TYPE = "consentry/key-event/v1"
_FIELDS = ("origin", "retired", "retired_not_after", "successor", "successor_not_before")


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One rotation; validated on construction (raises MalformedError)."""

    origin: str
    retired: str
    retired_not_after: int
    successor: str
    successor_not_before: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, str) for v in (self.origin, self.retired, self.successor)):
            raise MalformedError("a key event's origin and keys are strings")
        if not self.origin or "\n" in self.origin:
            raise MalformedError("a key event names the log's origin (one line)")
        parse_vkey(self.retired)
        parse_vkey(self.successor)
        if self.retired == self.successor:
            raise MalformedError("a key cannot succeed itself")
        for size in (self.retired_not_after, self.successor_not_before):
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**64:
                raise MalformedError("key-event sizes are tree sizes")
        if self.successor_not_before != self.retired_not_after + 1:
            raise MalformedError("the successor starts right after the retired key ends")

    @classmethod
    def at(cls, origin: str, retired: str, successor: str, index: int) -> KeyEvent:
        """The event for a key-event entry that will sit at ``index`` (the position rule)."""
        return cls(origin, retired, index + 1, successor, index + 2)

    def encode(self) -> bytes:
        """Canonical evidence bytes: compact JSON, keys sorted, ASCII only."""
        body: dict[str, Any] = {"type": KEY_EVENT_TYPE, **asdict(self)}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")

    def placed_at(self, index: int) -> bool:
        """True iff this event's sizes fit a key-event entry at ``index``."""
        return self.retired_not_after == index + 1


def parse_key_event(data: bytes) -> KeyEvent:
    """Parse key-event evidence; only the canonical encoding is accepted (MalformedError)."""
    try:
        body = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedError("key-event evidence is not ASCII JSON") from None
    if not isinstance(body, dict) or body.get("type") != KEY_EVENT_TYPE:
        raise MalformedError(f"key-event evidence is a {KEY_EVENT_TYPE} object")
    if sorted(body) != sorted(("type", *_FIELDS)):
        raise MalformedError("key-event evidence has missing or unknown fields")
    event = KeyEvent(**{name: body[name] for name in _FIELDS})
    if event.encode() != data:
        raise MalformedError("key-event evidence is not in canonical form")
    return event
