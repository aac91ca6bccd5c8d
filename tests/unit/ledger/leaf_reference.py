"""Independent oracles for the leaf checks: the readers as they were before ``leaf.leaf_link``
became the one check (``decode_leaf`` and ``replay.chain_fields`` at 1b69a72), kept
verbatim but for their names and their own copies of the layout and the defined flag bits.

The property tests compare ``leaf_link``, ``leaf_fields`` and ``decode_leaf`` with these on
random bytes: the same accepted leaves, the same fields, the same ``MalformedError`` text.
A new kind (an ``EntryKind`` member) is followed here too; a new flag bit must be added to
:data:`FLAG_BITS` by hand, which is the point: the test then says the readers accept it.
"""

from __future__ import annotations

import struct

from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import (
    LEAF_SIZE,
    LEAF_TAG,
    LEAF_VERSION,
    NO_INDEX,
    PSEUDONYM_SIZE,
    EntryFlag,
    EntryKind,
    Leaf,
)

__all__ = ["FLAG_BITS", "reference_chain_fields", "reference_decode_leaf"]

#: The flag bits version 1 defines (leaf.py's ``_KNOWN_FLAG_BITS`` before it was derived).
FLAG_BITS = int(EntryFlag.PERMIT | EntryFlag.BREAK_THE_GLASS | EntryFlag.NARROWED)
_LAYOUT = struct.Struct(">4sBBHQ16sQQ32s")
_NO_PATIENT = bytes(PSEUDONYM_SIZE)


def reference_decode_leaf(data: bytes) -> Leaf:
    """``decode_leaf`` before it was built on ``leaf_link``."""
    if len(data) != LEAF_SIZE:
        raise MalformedError(f"a leaf is {LEAF_SIZE} bytes, not {len(data)}")
    tag, version, kind, flags, recorded, pseudonym, previous, consent, commitment = _LAYOUT.unpack(
        data
    )
    if tag != LEAF_TAG:
        raise MalformedError("not a Consentry ledger leaf (bad tag)")
    if version != LEAF_VERSION:
        raise MalformedError(f"unsupported leaf version {version}")
    try:
        entry_kind = EntryKind(kind)
    except ValueError:
        raise MalformedError(f"unknown entry kind {kind}") from None
    if flags & ~FLAG_BITS:
        raise MalformedError(f"undefined flag bits in {flags:#06x}")
    return Leaf(
        kind=entry_kind,
        recorded_us=recorded,
        pseudonym=None if pseudonym == _NO_PATIENT else pseudonym,
        commitment=commitment,
        previous=None if previous == NO_INDEX else previous,
        consent=None if consent == NO_INDEX else consent,
        flags=EntryFlag(flags),
    )


_FIELDS = struct.Struct(f">5sBH8x{PSEUDONYM_SIZE}sQ40x")
_HEAD = LEAF_TAG + bytes([LEAF_VERSION])
_KINDS = frozenset(int(k) for k in EntryKind)


def reference_chain_fields(leaf: bytes) -> tuple[bytes | None, int] | None:
    """``replay.chain_fields``: the pseudonym (None: no patient) and the raw ``previous``
    field (NO_INDEX: none) of ``leaf``; None when ``decode_leaf`` would refuse the bytes."""
    try:
        head, kind, flags, pseudonym, previous = _FIELDS.unpack(leaf)
    except struct.error:
        return None
    if head != _HEAD or kind not in _KINDS or flags & ~FLAG_BITS:
        return None
    if pseudonym == _NO_PATIENT:
        return None if previous != NO_INDEX else (None, previous)
    return pseudonym, previous
