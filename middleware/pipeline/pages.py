"""Full pages: withheld entries must not show as short pages (no count oracle).

When the filter removes entries from a page of search or history results, the page the
client gets would be shorter than the one it asked for, telling it that *something* matched
and was withheld. The flow therefore refills the page from the next upstream pages until it
holds as many matches as the client's ``_count`` (or, without one, as the upstream's page
held) or the result ends, and continues the next page exactly where this one stopped: the
sealed cursor holds the upstream link *and* how many of that page's matches were already
released (the ``skip``).

Pure helpers for that: reading a page's matches and ``next`` link, taking ``n`` matches off
a list of entries (``include`` and ``outcome`` entries travel with the page they came on), and
encoding the skip into the cursor's link. The refill's bound is the walk's hard limit of
counting (:class:`~middleware.pipeline.guards.GuardPolicy` ``count_max_pages`` and
``count_max_walked``), not a few pages: a page left short after a few pages would tell, by its
``next`` cursor where a patient without records gets none, that hidden matches follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "MAX_COUNT",
    "is_match",
    "next_link",
    "requested_count",
    "skip_matches",
    "split_skip",
    "take",
    "with_skip",
]

#: The largest ``_count`` read as asked: more than any page an upstream serves.
MAX_COUNT: Final = 1_000_000
_SKIP: Final = "#consentry-skip="


def is_match(entry: Any) -> bool:
    """True for an entry that counts towards a page: a search match (``search.mode`` match or
    absent) or a history entry."""
    if not isinstance(entry, dict):
        return False
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, dict) else None
    return mode in (None, "match")


def next_link(bundle: dict[str, Any]) -> str | None:
    """The upstream ``next`` link of a page, or None."""
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if (
            isinstance(link, dict)
            and str(link.get("relation", "")).lower() == "next"
            and isinstance(link.get("url"), str)
            and link["url"]
        ):
            return str(link["url"])
    return None


def requested_count(params: Sequence[tuple[str, str]]) -> int | None:
    """The client's ``_count`` (the last one), when it is a non-negative integer in ASCII
    digits (at most :data:`MAX_COUNT`: a larger one asks for everything, as that does)."""
    values = [v for n, v in params if n == "_count"]
    if not values or not _digits(values[-1]):
        return None
    # int() refuses more than 4,300 digits (CPython's int_max_str_digits); no page is that big.
    significant = values[-1].lstrip("0")
    if len(significant) > len(str(MAX_COUNT)):
        return MAX_COUNT
    return min(int(significant or "0"), MAX_COUNT)


def take(entries: list[Any], need: int) -> tuple[list[Any], int, bool]:
    """The first ``need`` matches of ``entries`` with every non-match entry; returns them, how
    many matches were taken, and whether matches were left over."""
    kept: list[Any] = []
    taken = 0
    left = False
    for entry in entries:
        if is_match(entry):
            if taken == need:
                left = True
                continue
            taken += 1
        kept.append(entry)
    return kept, taken, left


def skip_matches(entries: list[Any], skip: int) -> list[Any]:
    """``entries`` without their first ``skip`` matches (released on an earlier page)."""
    out: list[Any] = []
    for entry in entries:
        if skip and is_match(entry):
            skip -= 1
            continue
        out.append(entry)
    return out


def with_skip(link: str, skip: int) -> str:
    """``link`` carrying a skip count (sealed in a cursor: never sent upstream as such)."""
    return f"{link}{_SKIP}{skip}" if skip else link


def split_skip(link: str) -> tuple[str, int]:
    """The upstream link and the skip a cursor's link carries (0 when none)."""
    base, marker, count = link.rpartition(_SKIP)
    if not marker or not _digits(count) or len(count) > len(str(MAX_COUNT)):
        return link, 0
    return base, int(count)


def _digits(value: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``²`` and other scripts' digits, some of
    which ``int`` refuses."""
    return value.isascii() and value.isdigit()
