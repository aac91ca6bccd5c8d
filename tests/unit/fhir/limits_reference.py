"""Independent oracle for the JSON depth scan: ``middleware.fhir.limits.depth`` as it was
before its string and escape steps became C-level passes (at 14ab0fd: escapes removed by two
``replace`` passes, strings by one regular expression), kept verbatim but for its name.

The property tests compare the scan with this on random bytes and documents: the same bound,
so the same texts refused at every limit.
"""

from __future__ import annotations

import re
from itertools import accumulate, repeat
from operator import sub
from typing import Final

__all__ = ["reference_depth_bound"]

# A JSON string once its escapes are gone and only brackets and quotes are left. An
# unterminated string does not match: its brackets are counted, which can only raise the bound.
_STRING: Final = re.compile(rb'"[^"]*"')
_NOT_BRACKETS_OR_QUOTES: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_FOLD: Final = bytes.maketrans(b"{}", b"[]")
_SIGNS: Final = bytes.maketrans(b"[]", b"\x02\x00")
_PASSES: Final = 4  # enough to empty ordinary documents; the rest is summed
_BLOCK: Final = 1 << 20


def reference_depth_bound(data: bytes, limit: int = 256) -> int:
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
