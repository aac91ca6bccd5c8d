"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint): the note text.

A checkpoint body is at least three non-empty lines, each ending in a newline:

1. the origin, naming the log (non-empty; this ledger uses its key name, which the spec
   recommends: a schema-less URL without spaces or ``+``, but parsing accepts any origin);
2. the tree size in ASCII decimal, without leading zeros (``0`` for the empty tree);
3. the RFC 9162 root hash at that size, base64 (32 bytes);

then optional, opaque, non-empty extension lines. The body is what gets signed as a C2SP
signed note (:mod:`middleware.ledger.note`, :mod:`middleware.ledger.signing`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from middleware.ledger.errors import MalformedError
from middleware.ledger.merkle import HASH_SIZE
from middleware.ledger.note import b64decode_strict, check_note_text

__all__ = ["MAX_TREE_SIZE", "Checkpoint", "format_checkpoint", "parse_checkpoint"]

#: Tree sizes are uint64 in every C2SP and RFC 9162 encoding.
MAX_TREE_SIZE = 2**64 - 1
_SIZE = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's signed claim: at ``size`` leaves its root was ``root_hash``.

    Validated on construction (invalid values raise MalformedError), so every instance
    formats to a body :func:`parse_checkpoint` accepts and that parses back equal.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise MalformedError("a checkpoint origin is one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedError(f"tree size {self.size} is outside 0..2**64-1")
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedError(f"a root hash is {HASH_SIZE} bytes, not {len(self.root_hash)}")
        if any(not line or "\n" in line for line in self.extensions):
            raise MalformedError("checkpoint extension lines are non-empty single lines")
        check_note_text(self.body())

    def body(self) -> str:
        """The note text: origin, size, base64 root, extensions, each line newline-terminated."""
        return format_checkpoint(self)


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """The canonical note text of ``checkpoint`` (see the module docstring)."""
    root = base64.b64encode(checkpoint.root_hash).decode("ascii")
    lines = (checkpoint.origin, str(checkpoint.size), root, *checkpoint.extensions)
    return "".join(f"{line}\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text strictly; raises :class:`MalformedError`.

    Call it on the text of a note whose signatures have been verified, never before.
    """
    check_note_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedError("a checkpoint has an origin, a tree size and a root hash")
    if any(not line for line in lines):
        raise MalformedError("checkpoint lines are non-empty")
    origin, size, root, *extensions = lines
    if len(size) > 20 or not _SIZE.fullmatch(size):  # 2**64-1 has 20 digits
        raise MalformedError("a tree size is ASCII decimal without leading zeros")
    return Checkpoint(origin, int(size), b64decode_strict(root), tuple(extensions))
