"""How deep a JSON text nests, measured before anything decodes it.

Decoders recurse once per nesting level (msgspec and the standard library's ``json`` both do),
so a body of a few thousand ``[`` raises :class:`RecursionError` deep inside the decoder, and a
tree that did decode can still exhaust the stack of any code that walks it. The gateway
therefore measures the nesting of every JSON text it is about to decode and refuses one that is
too deep *before* decoding it, in time linear in its size and with no recursion. Every step is
a C-level pass over bytes (``find``, ``translate``, ``replace``, ``split``, ``join``):

1. escaped quotes go: a decoder reads escapes left to right, two bytes each (RFC 8259 §7), so
   a ``"`` is escaped exactly when the escape that reaches it starts at the backslash before
   it; the escapes are found with ``find`` (a bounded number per byte; past that bound, by
   two ``replace`` passes that remove ``\\\\`` and then ``\\"``: the same quotes go);
2. one ``translate`` drops every byte but brackets and quotes and folds ``{`` / ``}`` onto
   ``[`` / ``]`` (a decoder that meets a ``]`` closing a ``{`` stops there, never deeper);
3. strings are cut out: with escapes gone, the quotes alternate opening and closing, so only
   the parity of the quotes before a bracket says whether it lies in a string. Removing
   ``""`` pairs keeps that parity (each run of quotes between two brackets shrinks to its
   parity), and what is left is split at its few remaining quotes, keeping every other piece.
   An unterminated string does not end: its brackets are counted, which can only raise the
   bound;
4. innermost pairs ``[]`` are removed, one nesting level per pass, for a few passes (ordinary
   documents shrink to little or nothing: every leaf object and array goes in the first);
5. the depth of what is left is its largest running sum (``[`` +1, ``]`` -1), computed by
   :func:`itertools.accumulate` a block at a time, stopping at the first block past the limit.

The bound this returns is never below the depth a decoder reaches on the same bytes, whether
they are valid JSON or not: every bracket open at some point is either closed later (its
pair's nesting is counted by the passes) or never closed (counted in what is left). Invalid
JSON is left to the decoder to refuse; only its depth is judged here.
"""

from __future__ import annotations

from itertools import accumulate, repeat
from operator import sub
from typing import Final

import msgspec

__all__ = [
    "DEFAULT_MAX_JSON_DEPTH",
    "HARD_MAX_JSON_DEPTH",
    "STORED_MAX_JSON_DEPTH",
    "JsonTooDeep",
    "check_depth",
    "depth",
]

#: The default of the ``max_json_depth`` setting: deeper than FHIR resources nest in practice
#: (a Bundle of Bundles of resources with contained resources and nested extensions stays
#: well below 40), far below any decoder's recursion limit.
DEFAULT_MAX_JSON_DEPTH: Final = 100
#: The most any decode in the gateway accepts, whatever is configured: well inside CPython's
#: default recursion limit (1,000 frames) with room for the frames of the code that walks
#: the decoded tree.
HARD_MAX_JSON_DEPTH: Final = 256
#: What the gateway reads back from its own consent store and ledger evidence: consents were
#: stored before any depth limit, and the structure check's recursion stopped them below
#: about 200 provisions (400 levels). Read back (to skip, deny or revoke them), never accepted.
STORED_MAX_JSON_DEPTH: Final = 512

# Escapes looked at one by one (``find``) before the two whole-text passes take over: a few per
# KiB in ordinary FHIR (narrative attributes, ``\u`` escapes), so a text full of escapes costs
# what it did before this bound existed, plus the bound's iterations.
_ESCAPES_FREE: Final = 64
_ESCAPES_SHIFT: Final = 6  # one more escape looked at per 64 bytes
_QUOTE: Final = 0x22
_NOT_BRACKETS_OR_QUOTES: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_FOLD: Final = bytes.maketrans(b"{}", b"[]")
_SIGNS: Final = bytes.maketrans(b"[]", b"\x02\x00")
_PASSES: Final = 4  # enough to empty ordinary documents; the rest is summed
_BLOCK: Final = 1 << 20
_SPLIT_BLOCK: Final = 1 << 16
#: Texts this short are judged by counting their opening brackets when that is enough.
_SMALL: Final = 1 << 12


class JsonTooDeep(msgspec.DecodeError):
    """A JSON text nests deeper than ``limit`` (its measured bound is at least ``depth``).

    A :class:`msgspec.DecodeError` (a :class:`ValueError`), so every caller that refuses
    malformed JSON refuses this too."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"JSON nests deeper than {limit} levels")
        self.depth = depth
        self.limit = limit


def depth(data: bytes, limit: int = HARD_MAX_JSON_DEPTH) -> int:
    """A bound of the nesting depth of ``data`` (``0`` for a scalar, ``1`` for ``[]``): never
    below the depth a decoder reaches on these bytes; for valid JSON at most ``limit`` deep,
    the exact depth. A value above ``limit`` means only "deeper than ``limit``" (or invalid
    and possibly so) and is returned as soon as it is known. Never raises, never recurses."""
    brackets = _outside_strings(_unescaped_quotes(data).translate(_FOLD, _NOT_BRACKETS_OR_QUOTES))
    if not brackets:
        return 0
    # The naive attack, ``[[[[...``, decided by one substring search.
    if b"[" * (limit + 1) in brackets:
        return limit + 1
    passes = 0
    while passes < _PASSES:
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            break
        brackets = inner
        passes += 1
        if b"[" * (limit + 1 - passes) in brackets:
            return limit + 1
    if not brackets:
        return passes
    # Each pass removed one level of matched pairs, and pairs enclosing one point have
    # different heights: at most ``passes`` removed brackets enclose any point, and the
    # brackets left enclose it at most their running sum there.
    signs = brackets.translate(_SIGNS)  # "[" -> 2, "]" -> 0: one above and below 1
    deepest = running = 0
    for start in range(0, len(signs), _BLOCK):
        block = signs[start : start + _BLOCK]
        sums = list(accumulate(map(sub, block, repeat(1)), initial=running))
        running = sums[-1]
        deepest = max(deepest, *sums)
        if passes + deepest > limit:
            break
    return passes + deepest


def check_depth(data: bytes, limit: int) -> None:
    """Raise :class:`JsonTooDeep` when ``data`` may nest deeper than ``limit``."""
    # A text with no more opening brackets than the limit cannot nest deeper: the bound of
    # depth() never exceeds the count of ``[`` and ``{`` outside strings (each pass removes
    # one at least; the running sum counts each left once). Counting is two C scans.
    if len(data) <= _SMALL and data.count(b"[") + data.count(b"{") <= limit:
        return
    found = depth(data, limit)
    if found > limit:
        raise JsonTooDeep(found, limit)


def _unescaped_quotes(data: bytes) -> bytes:
    """``data`` without its escaped quotes: what step 1 of the module docstring leaves.

    Every other byte a decoder reads in a string stays (the backslash of an escaped quote may
    go with it); only brackets and quotes matter to what follows. Past a bound of escapes
    (``_ESCAPES_FREE`` and one per ``2**_ESCAPES_SHIFT`` bytes), the same quotes are removed
    by removing every ``\\\\`` and then every ``\\"``, left to right.
    """
    find = data.find
    at = find(b"\\")
    if at < 0:
        return data
    budget = _ESCAPES_FREE + (len(data) >> _ESCAPES_SHIFT)
    last = len(data) - 1
    pieces: list[bytes] = []
    start = 0
    # ``at`` is always the first byte of an escape: the escape ``\\\\`` is skipped whole, so
    # the backslash it escapes never starts one.
    while 0 <= at < last:
        budget -= 1
        if budget < 0:
            return data.replace(b"\\\\", b"").replace(b'\\"', b"")
        if data[at + 1] == _QUOTE:
            pieces.append(data[start:at])
            start = at + 2
        at = find(b"\\", at + 2)
    if not pieces:
        return data
    pieces.append(data[start:])
    return b"".join(pieces)


def _outside_strings(marks: bytes) -> bytes:
    """The brackets of ``marks`` (only ``[``, ``]`` and unescaped ``"``) that lie outside
    strings, in order; an unterminated string's brackets included (step 3 of the module
    docstring)."""
    tail = b""
    if marks.count(b'"') & 1:  # the last quote opens a string that never ends
        last = marks.rfind(b'"')
        marks, tail = marks[:last], marks[last + 1 :]
    # A run of quotes between two brackets holds only empty strings; removing ``""`` pairs
    # leaves its parity, so every bracket keeps the parity of the quotes before it.
    marks = marks.replace(b'""', b"")
    if b'"' not in marks:
        return marks + tail
    kept: list[bytes] = []
    inside = 0
    # A block at a time: a text of quoted brackets splits into as many parts as it has bytes,
    # and joining them costs a buffer descriptor each.
    for start in range(0, len(marks), _SPLIT_BLOCK):
        parts = marks[start : start + _SPLIT_BLOCK].split(b'"')
        kept.append(b"".join(parts[inside::2]))
        inside ^= (len(parts) - 1) & 1
    kept.append(tail)
    return b"".join(kept)
