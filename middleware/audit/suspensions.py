"""The 164.528(a)(2) suspensions recorded on the ledger, and the reader that finds them.

``consentry audit suspend`` appends an ``ADMIN`` entry (kind 6, no pseudonym) whose plain
canonical JSON evidence is :func:`suspension_evidence` (``type`` :data:`SUSPEND_TYPE`: the
agency, the end of the period the agency specified, oral or written, the reason and the
operator; no PHI). ``--lift`` appends one of ``type`` :data:`LIFT_TYPE` naming the ledger
index of the suspension it ends. The suspension starts when its entry was recorded (the leaf's
time), so it cannot be backdated.

:func:`parse_suspensions` is pure: from the admin entries (index, recorded time, evidence)
it returns the :class:`~middleware.audit.accounting.Suspension` values, a lifted one ending
when its lift was recorded. Other admin entries (shred, retention) and evidence that is not
JSON are skipped. :class:`SuspensionLog` reads them from a ledger store: leaves in ranges
(never the whole ledger at once), the evidence of admin entries only, and it remembers how far
it has read, so the gateway's ``$accounting`` reads only what was appended since its last call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import Final, Protocol

from middleware.audit.accounting import Suspension
from middleware.audit.admin_json import canonical, parse_object
from middleware.ledger.entry import Evidence
from middleware.ledger.leaf import EntryKind, decode_leaf

__all__ = [
    "LIFT_TYPE",
    "SUSPEND_TYPE",
    "SuspensionLog",
    "SuspensionSource",
    "lift_evidence",
    "parse_suspensions",
    "still_needed",
    "suspension_evidence",
]

#: The ``type`` of a suspension's admin evidence.
SUSPEND_TYPE: Final = "consentry/audit-suspension"
#: The ``type`` of the admin evidence that lifts a suspension early.
LIFT_TYPE: Final = "consentry/audit-suspension-lift"
_RANGE: Final = 4096


def suspension_evidence(
    *, agency: str, end_us: int, oral: bool, reason: str, operator: str
) -> bytes:
    """The admin evidence of a suspension of accountings of disclosures to ``agency`` until
    ``end_us`` (exclusive, microseconds since the epoch)."""
    return canonical(
        {
            "type": SUSPEND_TYPE,
            "agency": agency,
            "end_us": end_us,
            "oral": oral,
            "reason": reason,
            "operator": operator,
        }
    )


def lift_evidence(*, suspension: int, reason: str, operator: str) -> bytes:
    """The admin evidence that ends the suspension recorded at ledger index ``suspension``."""
    return canonical(
        {"type": LIFT_TYPE, "suspension": suspension, "reason": reason, "operator": operator}
    )


def parse_suspensions(entries: Iterable[tuple[int, int, bytes]]) -> list[Suspension]:
    """The suspensions among admin ``entries`` (``(index, recorded_us, evidence)``), in
    ledger order; a lift recorded later ends its suspension at the lift's time. Entries of
    other types, or malformed ones, are skipped (they suspend nothing)."""
    found: dict[int, Suspension] = {}
    for index, recorded_us, data in sorted(entries):
        body = parse_object(data)
        if body is None:
            continue
        if body.get("type") == SUSPEND_TYPE:
            agency, end, oral = body.get("agency"), body.get("end_us"), body.get("oral")
            reason = body.get("reason")
            if (
                isinstance(agency, str)
                and agency
                and type(end) is int
                and isinstance(oral, bool)
                and isinstance(reason, str)
            ):
                found[index] = Suspension(recorded_us, end, agency, reason, index, oral=oral)
        elif body.get("type") == LIFT_TYPE:
            lifted = body.get("suspension")
            target = found.get(lifted) if type(lifted) is int else None
            if target is not None and recorded_us < target.end_us:
                found[target.ledger_index] = replace(target, end_us=max(recorded_us, 0))
    return list(found.values())


def still_needed(entries: Iterable[tuple[int, int, bytes]], *, as_of_us: int) -> set[int]:
    """The indexes among admin ``entries`` whose evidence retention must keep at ``as_of_us``:
    a suspension whose specified end is still ahead, and the lifts naming one. Removing it
    would end the suspension early (164.528(a)(2): "for the time specified by such agency"),
    or, for a lift, revive a suspension the agency ended."""
    ahead: set[int] = set()
    lifts: dict[int, int] = {}
    for index, _, data in entries:
        body = parse_object(data)
        if body is None:
            continue
        end, lifted = body.get("end_us"), body.get("suspension")
        if body.get("type") == SUSPEND_TYPE and type(end) is int and end > as_of_us:
            ahead.add(index)
        elif body.get("type") == LIFT_TYPE and type(lifted) is int:
            lifts[index] = lifted
    return ahead | {index for index, target in lifts.items() if target in ahead}


class SuspensionSource(Protocol):
    """What :class:`SuspensionLog` reads of a ledger store (``LogStore``)."""

    async def size(self) -> int: ...

    async def leaves(self, start: int, end: int) -> list[bytes]: ...

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]: ...


class SuspensionLog:
    """The suspensions on a ledger, read incrementally (module docstring).

    One instance per store; :meth:`current` is safe to call concurrently."""

    def __init__(self, *, step: int = _RANGE) -> None:
        """``step``: leaves read at a time."""
        self._step = step
        self._read = 0
        self._admin: list[tuple[int, int, bytes]] = []
        self._lock = asyncio.Lock()

    async def current(self, store: SuspensionSource) -> list[Suspension]:
        """Every suspension recorded on ``store`` so far (whether in force or not: the
        accounting decides that at its own time)."""
        return parse_suspensions(await self._entries(store))

    async def still_needed(self, store: SuspensionSource, *, as_of_us: int) -> set[int]:
        """:func:`still_needed` of the admin entries on ``store`` (for retention)."""
        return still_needed(await self._entries(store), as_of_us=as_of_us)

    async def _entries(self, store: SuspensionSource) -> list[tuple[int, int, bytes]]:
        async with self._lock:
            size = await store.size()
            while self._read < size:
                end = min(self._read + self._step, size)
                admin = [
                    (self._read + offset, decode_leaf(data))
                    for offset, data in enumerate(await store.leaves(self._read, end))
                ]
                admin = [(i, leaf) for i, leaf in admin if leaf.kind == EntryKind.ADMIN]
                if admin:
                    # Only the admin entries' evidence; a range of one or a few entries.
                    stored = await store.evidence_range(admin[0][0], admin[-1][0] + 1)
                    self._admin += [
                        (i, leaf.recorded_us, stored[i].data)
                        for i, leaf in admin
                        if i in stored and SUSPEND_TYPE.encode() in stored[i].data
                    ]
                self._read = end
            return list(self._admin)
