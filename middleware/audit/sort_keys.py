"""The orders an audit index search can return its rows in (``AuditQuery.sort``), pure.

``date`` orders by ``(recorded_us, index)``; every other key by ``(value, index)``, where
``value`` is :func:`sort_value` of the row: the column's text, NULL read as the empty string
(so rows without an agent, patient or client come first ascending, last descending, and
ties, NULLs among them, are broken by the ledger index, which is unique: the order is total
and a keyset page boundary ``(value, index)`` is exact). Text compares by code point (Python's
``str`` order, SQLite's BINARY collation on UTF-8, PostgreSQL's ``COLLATE "C"``: the same order
on every backend). ``outcome`` compares as its number (``0 < 4 < 8 < 12``), by padding the
code to two characters. A ``-`` prefix reverses the whole order, index included.
"""

from __future__ import annotations

from typing import Final, Literal

from middleware.audit.row import AuditRow, SortKey

__all__ = ["SORT_COLUMNS", "descending", "sort_column", "sort_sql", "sort_value"]

#: The search's ``_sort`` names and the audit index column each orders by.
SORT_COLUMNS: Final = {
    "agent": "agent",
    "patient": "patient",
    "type": "event_type",
    "action": "action",
    "outcome": "outcome",
    "client": "client",
}


def descending(sort: SortKey) -> bool:
    """Whether ``sort`` is a descending order (``-`` prefix)."""
    return sort.startswith("-")


def sort_column(sort: SortKey) -> str | None:
    """The index column ``sort`` orders by, None for ``date`` (``recorded_us``)."""
    return SORT_COLUMNS.get(sort.lstrip("-"))


def sort_value(row: AuditRow, sort: SortKey) -> str:
    """The text ``row`` is ordered by under ``sort`` (not ``date``; module docstring)."""
    column = sort_column(sort)
    if column is None:
        raise ValueError("a date order has no text sort value")
    value = getattr(row, column) or ""
    if column == "outcome":
        return ("0" + value)[-2:]
    return str(value)


def sort_sql(sort: SortKey, dialect: Literal["sqlite", "postgres"]) -> str:
    """The SQL expression whose value :func:`sort_value` computes (not ``date``)."""
    column = sort_column(sort)
    if column is None:
        raise ValueError("a date order has no text sort expression")
    text = f"COALESCE({column}, '')"
    if column == "outcome":
        text = f"substr('0' || {text}, -2)" if dialect == "sqlite" else f"right('0' || {text}, 2)"
    return text if dialect == "sqlite" else f'({text} COLLATE "C")'
