"""Audit reports over audit index rows. Pure: no I/O, no clock (``as_of_us`` comes in).

* :func:`access_report`: every read and write of one patient's record (date, time, who, which
  organization, what, action, result), three years back by default; what the patient sees
  as "who looked at my record".
* :func:`user_activity`: every access by one agent in a period (which patients, what, when),
  and :func:`patients_touched`, the patients of such a report with counts.
* :func:`date_range`: every row of a period with every :class:`AuditRow` element as a column,
  sortable on any column (ONC 170.315(d)(3): audit reports sortable by each element).

Which rows an access report shows: ``DISCLOSURE`` (data released), ``ACCESS_OUTCOME`` (a write
the upstream answered) and, with ``include_refused``, ``ACCESS_DECISION`` entries without the
permit flag (refused attempts). A permitted write also has a permitted decision entry, which is
not shown again. Consent, admin and key entries are not accesses. Shredded rows show as periods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

from middleware.audit.accounting import ShreddedPeriod, periods_of, years_before
from middleware.audit.row import ROW_FIELDS, AuditRow
from middleware.ledger.leaf import EntryFlag, EntryKind

__all__ = [
    "DATE_RANGE_COLUMNS",
    "AccessLine",
    "AccessReport",
    "AfterHours",
    "UserReport",
    "access_line",
    "access_result",
    "access_report",
    "action_text",
    "date_range",
    "format_time",
    "patients_touched",
    "user_activity",
]

#: The date-range report's columns: every AuditRow element, in its order.
DATE_RANGE_COLUMNS: tuple[str, ...] = ROW_FIELDS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUBTYPES = {
    "read": "read",
    "vread": "read a version",
    "search-type": "searched",
    "search-system": "searched",
    "search-compartment": "searched",
    "history-instance": "read the history",
    "history-type": "read the history",
    "history-system": "read the history",
    "create": "created",
    "update": "updated",
    "patch": "changed",
    "delete": "deleted",
    "operation": "ran an operation",
    "batch": "sent a batch",
    "transaction": "sent a transaction",
}
_ACTIONS = {"C": "created", "R": "read", "U": "updated", "D": "deleted", "E": "ran an operation"}


def format_time(us: int, zone: tzinfo = UTC) -> str:
    """``YYYY-MM-DD HH:MM:SS`` of ``us`` microseconds since the epoch in ``zone``."""
    return (_EPOCH + timedelta(microseconds=us)).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def action_text(row: AuditRow) -> str:
    """What was done, in plain words (from the restful subtype, else the BALP action)."""
    if row.subtype in _SUBTYPES:
        return _SUBTYPES[row.subtype]
    return _ACTIONS.get(row.action, row.action or "unknown")


@dataclass(frozen=True, slots=True)
class AfterHours:
    """The after-hours window: from ``start`` to ``end`` local time in ``zone`` (wrapping
    midnight when ``start`` > ``end``), plus whole Saturdays and Sundays when ``weekends``."""

    start: time = time(19, 0)
    end: time = time(7, 0)
    zone: tzinfo = UTC
    weekends: bool = False

    @classmethod
    def parse(cls, text: str, zone: tzinfo = UTC, *, weekends: bool = False) -> AfterHours:
        """``HH:MM-HH:MM`` (ValueError otherwise; equal ends mean no after-hours time)."""
        try:
            first, second = text.split("-")
            return cls(
                time.fromisoformat(first.strip()),
                time.fromisoformat(second.strip()),
                zone,
                weekends,
            )
        except ValueError:
            raise ValueError(f"expected HH:MM-HH:MM, got {text!r}") from None

    def contains(self, us: int) -> bool:
        """Whether the instant ``us`` falls after hours."""
        local = (_EPOCH + timedelta(microseconds=us)).astimezone(self.zone)
        if self.weekends and local.weekday() >= 5:
            return True
        now = local.time().replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end


@dataclass(frozen=True, slots=True)
class AccessLine:
    """One access: ledger ``index``, time, who (agent, organization, client), the patient,
    what (resource types), the action in words, the result (``released``, ``written``,
    ``failed``, ``refused``), purposes and the break-the-glass flag."""

    index: int
    recorded_us: int
    patient: str | None
    agent: str | None
    organization: str | None
    client: str | None
    resource_types: tuple[str, ...]
    action: str
    result: str
    purposes: tuple[str, ...]
    break_glass: bool


@dataclass(frozen=True, slots=True)
class AccessReport:
    """The accesses to ``patient``'s record from ``since_us`` to ``until_us`` (inclusive)."""

    patient: str
    since_us: int
    until_us: int
    lines: tuple[AccessLine, ...]
    shredded_periods: tuple[ShreddedPeriod, ...]


@dataclass(frozen=True, slots=True)
class UserReport:
    """Everything ``agent`` accessed from ``since_us`` to ``until_us`` (inclusive)."""

    agent: str
    since_us: int
    until_us: int
    lines: tuple[AccessLine, ...]


def access_result(row: AuditRow) -> str | None:
    """The access result of ``row``, or None when the row is not an access to show."""
    if row.kind == EntryKind.DISCLOSURE:
        return "released"
    if row.kind == EntryKind.ACCESS_OUTCOME:
        return "written" if row.outcome == "0" else "failed"
    if row.kind == EntryKind.ACCESS_DECISION and not row.flags & EntryFlag.PERMIT:
        return "refused"
    return None


def access_line(row: AuditRow, result: str) -> AccessLine:
    """The :class:`AccessLine` of ``row``, an access with ``result``."""
    return AccessLine(
        index=row.index,
        recorded_us=row.recorded_us,
        patient=row.patient,
        agent=row.agent,
        organization=row.organization,
        client=row.client,
        resource_types=row.resource_types,
        action=action_text(row),
        result=result,
        purposes=row.purposes,
        break_glass=row.break_glass,
    )


def access_report(
    rows: Iterable[AuditRow],
    *,
    patient: str,
    as_of_us: int,
    lookback_years: int = 3,
    since_us: int | None = None,
    until_us: int | None = None,
    include_refused: bool = True,
    pseudonym: bytes | None = None,
) -> AccessReport:
    """Every read and write of ``patient``'s record in the period (see the module doc), in
    time order. Rows about another patient never appear; shredded rows become periods (only
    those of ``pseudonym`` when it is given)."""
    since = years_before(as_of_us, lookback_years) if since_us is None else since_us
    until = as_of_us if until_us is None else until_us
    lines: list[AccessLine] = []
    runs: list[list[AuditRow]] = [[]]
    for row in sorted(rows, key=lambda r: (r.recorded_us, r.index)):
        if not since <= row.recorded_us <= until:
            continue
        if row.shredded:
            if pseudonym is None or row.pseudonym == pseudonym:
                runs[-1].append(row)
            continue
        if row.patient != patient:
            continue
        if runs[-1]:
            runs.append([])
        result = access_result(row)
        if result is None or (result == "refused" and not include_refused):
            continue
        lines.append(access_line(row, result))
    periods = periods_of(runs)
    return AccessReport(patient, since, until, tuple(lines), periods)


def user_activity(
    rows: Iterable[AuditRow], *, agent: str, since_us: int, until_us: int
) -> UserReport:
    """Every access by ``agent`` in the period (refused attempts included), in time order."""
    lines = [
        access_line(row, result)
        for row in sorted(rows, key=lambda r: (r.recorded_us, r.index))
        if row.agent == agent
        and since_us <= row.recorded_us <= until_us
        and (result := access_result(row)) is not None
    ]
    return UserReport(agent, since_us, until_us, tuple(lines))


def patients_touched(report: UserReport) -> list[tuple[str, int, int, int]]:
    """``(patient, accesses, first_us, last_us)`` for each patient of ``report``, most
    accesses first (lines without a patient are left out)."""
    seen: dict[str, list[int]] = {}
    for line in report.lines:
        if line.patient is not None:
            seen.setdefault(line.patient, []).append(line.recorded_us)
    rows = [(p, len(times), min(times), max(times)) for p, times in seen.items()]
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows


def date_range(
    rows: Iterable[AuditRow],
    *,
    since_us: int,
    until_us: int,
    sort: str = "recorded_us",
    descending: bool = False,
) -> list[AuditRow]:
    """Every row recorded in the period, sorted on ``sort`` (one of
    :data:`DATE_RANGE_COLUMNS`; ties by time then index). ValueError on another column."""
    if sort not in DATE_RANGE_COLUMNS:
        raise ValueError(f"cannot sort on {sort!r}")
    chosen = [r for r in rows if since_us <= r.recorded_us <= until_us]
    chosen.sort(key=lambda r: (r.recorded_us, r.index), reverse=descending)

    def key(row: AuditRow) -> tuple[bool, str]:
        value = getattr(row, sort)
        text = value.hex() if isinstance(value, bytes) else value
        if isinstance(value, int | bool):
            text = f"{int(value):020d}"
        elif isinstance(value, tuple):
            text = " ".join(value)
        return (value is None, "" if text is None else str(text))

    chosen.sort(key=key, reverse=descending)  # stable: equal keys keep time order
    return chosen
