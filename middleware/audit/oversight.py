"""What a compliance reviewer reads at a glance, from audit index rows (pure: no I/O, no clock).

* :func:`access_lines`: the rows that are accesses, by the access report's rule
  (:mod:`middleware.audit.reports`: data released, a write the upstream answered, a refused
  attempt), as :class:`~middleware.audit.reports.AccessLine` values.
* :func:`summarize`: the overview of a period: accesses per day (per week or month over long
  periods) split into business hours, after hours and break-the-glass, counted as the PDF
  reports' activity chart counts them (:func:`middleware.audit.charts.buckets`); the users
  with the most accesses; the totals.
* :func:`awaiting_review`: the break-the-glass accesses without a recorded review
  (:mod:`middleware.audit.reviews`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from middleware.audit.charts import buckets
from middleware.audit.reports import AccessLine, AfterHours, access_line, access_result
from middleware.audit.reviews import Review
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryKind

__all__ = [
    "ACCESS_KINDS",
    "Overview",
    "access_lines",
    "awaiting_review",
    "overview_json",
    "summarize",
]

#: The entry kinds an access line can come from.
ACCESS_KINDS = frozenset(
    {int(EntryKind.DISCLOSURE), int(EntryKind.ACCESS_OUTCOME), int(EntryKind.ACCESS_DECISION)}
)


def access_lines(rows: Iterable[AuditRow]) -> list[AccessLine]:
    """The accesses among ``rows`` (module docstring), in the rows' order; shredded rows
    (their evidence erased: nobody, nothing) are left out."""
    lines: list[AccessLine] = []
    for row in rows:
        result = None if row.shredded else access_result(row)
        if result is None:
            continue
        lines.append(access_line(row, result))
    return lines


@dataclass(frozen=True, slots=True)
class Overview:
    """A period at a glance: ``unit`` (day, week or month) and per bucket ``(label,
    business, after_hours, break_glass)``; ``users`` as ``(agent, accesses)``, most first;
    the totals; ``truncated`` when only the latest accesses of the period were counted."""

    since_us: int
    until_us: int
    unit: str
    buckets: tuple[tuple[str, int, int, int], ...]
    users: tuple[tuple[str, int], ...]
    accesses: int
    after_hours: int
    break_glass: int
    refused: int
    truncated: bool


def summarize(
    lines: Sequence[AccessLine],
    *,
    since_us: int,
    until_us: int,
    after: AfterHours,
    top: int = 10,
    truncated: bool = False,
) -> Overview:
    """The :class:`Overview` of ``lines`` (each counted once per bucket: break-the-glass
    first, then after hours, else business hours, as the PDF chart counts)."""
    ordered = sorted(lines, key=lambda line: (line.recorded_us, line.index))
    unit, labels, business, late, glass = buckets(ordered, after)
    users = Counter(line.agent or "(unknown)" for line in ordered)
    ranked = sorted(users.items(), key=lambda item: (-item[1], item[0]))[:top]
    return Overview(
        since_us=since_us,
        until_us=until_us,
        unit=unit,
        buckets=tuple(zip(labels, business, late, glass, strict=True)),
        users=tuple(ranked),
        accesses=len(ordered),
        after_hours=sum(
            1 for line in ordered if not line.break_glass and after.contains(line.recorded_us)
        ),
        break_glass=sum(1 for line in ordered if line.break_glass),
        refused=sum(1 for line in ordered if line.result == "refused"),
        truncated=truncated,
    )


def overview_json(view: Overview, *, awaiting: int, window: str) -> dict[str, object]:
    """The JSON the ``$overview`` operation answers (:mod:`middleware.audit.oversight_http`)."""
    return {
        "since_us": view.since_us,
        "until_us": view.until_us,
        "unit": view.unit,
        "buckets": [
            {"label": label, "business": b, "after_hours": a, "break_glass": g}
            for label, b, a, g in view.buckets
        ],
        "users": [{"agent": agent, "accesses": n} for agent, n in view.users],
        "totals": {
            "accesses": view.accesses,
            "after_hours": view.after_hours,
            "break_glass": view.break_glass,
            "refused": view.refused,
            "awaiting_review": awaiting,
        },
        "after_hours_window": window,
        "truncated": view.truncated,
    }


def awaiting_review(lines: Iterable[AccessLine], reviews: Mapping[int, Review]) -> list[AccessLine]:
    """The break-the-glass accesses among ``lines`` that no review names, in their order."""
    return [line for line in lines if line.break_glass and line.index not in reviews]
