"""CSV and NDJSON renderings of the accounting and the reports. Pure: text in, text out.

Every CSV has a header row and a fixed column order (the tuples below), and every row carries
the ``ledger_index`` it stands for, so an export can attach each row's inclusion proof. Times
are RFC 3339 UTC with microseconds (``2025-03-01T12:30:05.123000Z``); lists are joined with a
space (resource types, codes and references never contain one). CSV follows RFC 4180 (stdlib
:mod:`csv`, ``\\r\\n`` line ends). NDJSON is one JSON object per line (FHIR Bulk Data's format).

CSV formula injection (OWASP "CSV Injection"): agents, clients and reasons come from tokens
and requests, so a cell a spreadsheet would read as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is written with a ``'`` before it, and so is a cell
that already starts with ``'``, which keeps the escape reversible (:func:`csv_unescape`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence

from middleware.audit.accounting import Accounting
from middleware.audit.reports import DATE_RANGE_COLUMNS, AccessReport, UserReport
from middleware.audit.rfc3339 import format_us as rfc3339
from middleware.audit.row import AuditRow

__all__ = [
    "ACCESS_COLUMNS",
    "ACCOUNTING_COLUMNS",
    "ACCOUNTING_DETAIL_COLUMNS",
    "FORMULA_START",
    "access_csv",
    "accounting_csv",
    "csv_escape",
    "csv_unescape",
    "date_range_csv",
    "date_range_ndjson",
    "rfc3339",
    "user_csv",
]

ACCOUNTING_COLUMNS = (
    "ledger_index",
    "date",
    "recipient",
    "recipient_address",
    "agent",
    "organization",
    "client",
    "description",
    "purpose",
    "purpose_codes",
    "count",
    "last_date",
    "ledger_indexes",
)
ACCOUNTING_DETAIL_COLUMNS = (
    "ledger_index",
    "date",
    "entry",
    "recipient",
    "recipient_address",
    "agent",
    "organization",
    "client",
    "description",
    "purpose",
    "purpose_codes",
)
ACCESS_COLUMNS = (
    "ledger_index",
    "date",
    "patient",
    "agent",
    "organization",
    "client",
    "what",
    "action",
    "result",
    "purpose_codes",
    "break_glass",
)


#: First characters a spreadsheet takes as the start of a formula, and the escape itself.
FORMULA_START = frozenset("=+-@\t\r'")


def csv_escape(cell: str) -> str:
    """``cell`` as a CSV file holds it: with a ``'`` before a formula's first character
    (module docstring)."""
    return "'" + cell if cell[:1] in FORMULA_START else cell


def csv_unescape(cell: str) -> str:
    """The value :func:`csv_escape` wrote as ``cell``."""
    return cell[1:] if cell[:1] == "'" else cell


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([csv_escape(str(cell)) for cell in row] for row in rows)
    return out.getvalue()


def _opt(value: str | None) -> str:
    return "" if value is None else value


def accounting_csv(accounting: Accounting, *, detail: bool = False) -> str:
    """The accounting as CSV: one row per entry (a 164.528(b)(3) summary's ``count``,
    ``last_date`` and every ``ledger_indexes``), or with ``detail`` one row per disclosure
    (``entry`` numbers the entry it belongs to, from 1). The suspended are never listed."""
    if detail:
        return _csv(
            ACCOUNTING_DETAIL_COLUMNS,
            (
                (
                    d.index,
                    rfc3339(d.recorded_us),
                    n,
                    d.recipient.name,
                    _opt(d.recipient.address),
                    _opt(d.recipient.agent),
                    _opt(d.recipient.organization),
                    _opt(d.recipient.client),
                    " ".join(d.resource_types),
                    d.purpose_text,
                    " ".join(d.purposes),
                )
                for n, e in enumerate(accounting.entries, 1)
                for d in e.members
            ),
        )
    return _csv(
        ACCOUNTING_COLUMNS,
        (
            (
                e.first.index,
                rfc3339(e.first.recorded_us),
                e.first.recipient.name,
                _opt(e.first.recipient.address),
                _opt(e.first.recipient.agent),
                _opt(e.first.recipient.organization),
                _opt(e.first.recipient.client),
                " ".join(e.resource_types),
                e.first.purpose_text,
                " ".join(e.first.purposes),
                e.count,
                rfc3339(e.last_us),
                " ".join(str(i) for i in e.indexes),
            )
            for e in accounting.entries
        ),
    )


def access_csv(report: AccessReport | UserReport) -> str:
    """A patient access report or a user activity report as CSV, one row per access."""
    return _csv(
        ACCESS_COLUMNS,
        (
            (
                line.index,
                rfc3339(line.recorded_us),
                _opt(line.patient),
                _opt(line.agent),
                _opt(line.organization),
                _opt(line.client),
                " ".join(line.resource_types),
                line.action,
                line.result,
                " ".join(line.purposes),
                "true" if line.break_glass else "false",
            )
            for line in report.lines
        ),
    )


user_csv = access_csv


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _row_values(row: AuditRow) -> list[object]:
    return [getattr(row, name) for name in DATE_RANGE_COLUMNS]


def date_range_csv(rows: Iterable[AuditRow]) -> str:
    """The date-range report as CSV: every :data:`DATE_RANGE_COLUMNS` element, plus ``date``
    (RFC 3339 of ``recorded_us``) after it; ``index`` is the ledger index column."""
    header = [*DATE_RANGE_COLUMNS, "date"]
    return _csv(
        header,
        ([*(_cell(v) for v in _row_values(r)), rfc3339(r.recorded_us)] for r in rows),
    )


def date_range_ndjson(rows: Iterable[AuditRow]) -> str:
    """The date-range report as NDJSON: one object per row with every element (lists as JSON
    arrays, the pseudonym as hex, ``date`` as RFC 3339), keys in column order."""
    lines = []
    for row in rows:
        obj: dict[str, object] = {}
        for name, value in zip(DATE_RANGE_COLUMNS, _row_values(row), strict=True):
            if isinstance(value, bytes):
                obj[name] = value.hex()
            elif isinstance(value, tuple):
                obj[name] = list(value)
            else:
                obj[name] = value
        obj["date"] = rfc3339(row.recorded_us)
        lines.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
    return "".join(lines)
