"""Break-the-glass reviews recorded on the ledger, and the reader that finds them.

Every emergency-override access is tagged for review after the fact
(:data:`middleware.audit.alerts.REVIEW_TAG`). A reviewer marks one reviewed through
``POST {base}/AuditEvent/$review`` (:mod:`middleware.audit.oversight_http`): the gateway appends
an ``ADMIN`` entry (kind 6, no pseudonym, as a 164.528(a)(2) suspension is recorded:
:mod:`middleware.audit.suspensions`) whose plain canonical JSON evidence is
:func:`review_evidence`: ``type`` :data:`REVIEW_TYPE`, the ledger index of the reviewed
access, who reviewed it (from the reviewer's verified token, never from the form) and the
reviewer's note. The review's time is the leaf's own time, so it cannot be backdated.

:func:`parse_reviews` is pure: from admin entries (index, recorded time, evidence) it returns
the first review of each reviewed entry; other admin entries and malformed evidence are
skipped. :class:`ReviewLog` reads them from a ledger store in ranges of leaves (never the whole
ledger at once), only the admin entries' evidence, and remembers how far it has read, so each
call reads only what was appended since the last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from middleware.audit.admin_json import canonical, parse_object
from middleware.ledger.entry import Evidence
from middleware.ledger.leaf import EntryKind, decode_leaf

__all__ = [
    "MAX_NOTE",
    "REVIEW_TYPE",
    "Review",
    "ReviewLog",
    "ReviewSource",
    "parse_reviews",
    "review_evidence",
]

#: The ``type`` of a break-the-glass review's admin evidence.
REVIEW_TYPE: Final = "consentry/break-glass-review"
#: Longest note a reviewer may write, in characters.
MAX_NOTE: Final = 1000
_RANGE: Final = 4096


@dataclass(frozen=True, slots=True)
class Review:
    """The review of the access at ledger index ``entry``: recorded at ledger index
    ``ledger_index`` at ``recorded_us``, by ``reviewer``, with ``note``."""

    entry: int
    ledger_index: int
    recorded_us: int
    reviewer: str
    note: str


def review_evidence(*, entry: int, reviewer: str, note: str) -> bytes:
    """The admin evidence of the review of the access at ledger index ``entry``."""
    body = {"type": REVIEW_TYPE, "entry": entry, "reviewer": reviewer, "note": note}
    return canonical(body)


def parse_reviews(entries: Iterable[tuple[int, int, bytes]]) -> dict[int, Review]:
    """The reviews among admin ``entries`` (``(index, recorded_us, evidence)``), keyed by the
    reviewed entry's index; the first review recorded of an entry stands (a later one of the
    same entry is not a second opinion the queue could show). Malformed ones are skipped."""
    found: dict[int, Review] = {}
    for index, recorded_us, data in sorted(entries):
        body = parse_object(data)
        if body is None or body.get("type") != REVIEW_TYPE:
            continue
        entry, reviewer, note = body.get("entry"), body.get("reviewer"), body.get("note")
        if type(entry) is int and isinstance(reviewer, str) and isinstance(note, str):
            found.setdefault(entry, Review(entry, index, recorded_us, reviewer, note))
    return found


class ReviewSource(Protocol):
    """What :class:`ReviewLog` reads of a ledger store (``LogStore``)."""

    async def size(self) -> int: ...

    async def leaves(self, start: int, end: int) -> list[bytes]: ...

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]: ...


class ReviewLog:
    """The reviews on a ledger, read incrementally (module docstring). One instance per
    store; :meth:`current` is safe to call concurrently."""

    def __init__(self, *, step: int = _RANGE) -> None:
        """``step``: leaves read at a time."""
        self._step = step
        self._read = 0
        self._admin: list[tuple[int, int, bytes]] = []
        self._lock = asyncio.Lock()

    async def current(self, store: ReviewSource) -> dict[int, Review]:
        """Every review recorded on ``store`` so far, by reviewed entry."""
        marker = REVIEW_TYPE.encode()
        async with self._lock:
            size = await store.size()
            while self._read < size:
                end = min(self._read + self._step, size)
                leaves = await store.leaves(self._read, end)
                admin = [
                    self._read + offset
                    for offset, data in enumerate(leaves)
                    if decode_leaf(data).kind == EntryKind.ADMIN
                ]
                if admin:
                    stored = await store.evidence_range(admin[0], admin[-1] + 1)
                    self._admin += [
                        (i, decode_leaf(leaves[i - self._read]).recorded_us, stored[i].data)
                        for i in admin
                        if i in stored and marker in stored[i].data
                    ]
                self._read = end
            return parse_reviews(self._admin)
