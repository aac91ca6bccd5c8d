"""How deep a JSON text nests, measured before anything decodes it.

Decoders recurse once per nesting level (msgspec and the standard library's ``json`` both do),
so a body of a few thousand ``[`` raises :class:`RecursionError` deep inside the decoder, and a
tree that did decode can still exhaust the stack of any code that walks it. The gateway
therefore measures the nesting of every JSON text it is about to decode and refuses one that is
too deep *before* decoding it, in time linear in its size and with no recursion:

1. JSON strings are cut out, brackets inside string values do not count: escapes that could
   hide a quote (``\\\\`` and ``\\"``, RFC 8259 §7) are removed, every byte but brackets and
   quotes is dropped, and what lies between two quotes goes;
2. ``{`` / ``}`` are folded onto ``[`` / ``]`` (a decoder that meets a ``]`` closing a ``{``
   stops there, never deeper);
3. innermost pairs ``[]`` are removed, one nesting level per pass, for a few passes (ordinary
   documents shrink to little or nothing: every leaf object and array goes in the first);
4. the depth of what is left is its largest running sum (``[`` +1, ``]`` -1), computed by
   :func:`itertools.accumulate` a block at a time, stopping at the first block past the limit.

The bound this returns is never below the depth a decoder reaches on the same bytes, whether
they are valid JSON or not: every bracket open at some point is either closed later (its
pair's nesting is counted by the passes) or never closed (counted in what is left). Invalid
JSON is left to the decoder to refuse; only its depth is judged here.
"""

from __future__ import annotations

import re
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

# A JSON string once its escapes are gone and only brackets and quotes are left. An
# unterminated string does not match: its brackets are counted, which can only raise the bound.
_STRING: Final = re.compile(rb'"[^"]*"')
_NOT_BRACKETS_OR_QUOTES: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_FOLD: Final = bytes.maketrans(b"{}", b"[]")
_SIGNS: Final = bytes.maketrans(b"[]", b"\x02\x00")
_PASSES: Final = 4  # enough to empty ordinary documents; the rest is summed
_BLOCK: Final = 1 << 20


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
    if b"\\" in data:
        # Left to right, as a decoder reads escapes: "\\" first, so "\\\"" loses both.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _STRING.sub(b"", data.translate(None, _NOT_BRACKETS_OR_QUOTES))
    brackets = brackets.translate(_FOLD, b'"')
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
    found = depth(data, limit)
    if found > limit:
        raise JsonTooDeep(found, limit)
