"""The row columns of each export kind, computed from one entry's audit row (pure).

The exporter writes them from the audit index; the offline verifier computes them again from
the entry's opened facts (``facts.row_of``) and compares. Access and user reports carry the
report's own columns (``report_csv.ACCESS_COLUMNS`` but the ledger index, which every line
carries anyway), computed by the report's own functions (``reports.access_report``,
``reports.user_activity``), so a person reads the export as the report and a verifier checks
each cell. The other kinds (the accounting, whose lines summarise several entries, and the
date-range report) carry every audit-row element (:data:`~middleware.audit.export.ROW_COLUMNS`).

A columns function returns None for an entry the report would not show (an access report
shows released data, writes and refused attempts, not a permitted decision entry).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence

from middleware.audit.export import ROW_COLUMNS, row_columns
from middleware.audit.report_csv import ACCESS_COLUMNS, access_csv, csv_unescape
from middleware.audit.reports import AccessReport, UserReport, access_report, user_activity
from middleware.audit.row import AuditRow

__all__ = ["ColumnsOf", "access_cells", "columns_for"]

#: An entry's cells for one export kind, or None when the report does not show it.
ColumnsOf = Callable[[AuditRow], Sequence[str] | None]

_ACCESS_NAMES: tuple[str, ...] = tuple(c for c in ACCESS_COLUMNS if c != "ledger_index")
_INDEX_AT = ACCESS_COLUMNS.index("ledger_index")


def access_cells(row: AuditRow) -> tuple[str, ...] | None:
    """The access-report cells of ``row`` (as ``report_csv.access_csv`` writes its line),
    without the ledger index; None when the report does not show the entry."""
    at = row.recorded_us
    report: AccessReport | UserReport
    if row.patient is not None:
        report = access_report([row], patient=row.patient, as_of_us=at, since_us=at, until_us=at)
    elif row.agent is not None:
        report = user_activity([row], agent=row.agent, since_us=at, until_us=at)
    else:
        return None
    if not report.lines:
        return None
    cells = list(csv.reader(io.StringIO(access_csv(report))))[1]
    del cells[_INDEX_AT]
    return tuple(csv_unescape(c) for c in cells)  # the values; a CSV export escapes its own


def columns_for(report: str) -> tuple[tuple[str, ...], ColumnsOf]:
    """The column names and the columns function of an export ``report`` kind."""
    if report in ("access-report", "user-report"):
        return _ACCESS_NAMES, access_cells
    return ROW_COLUMNS, row_columns
