"""Reading every audit index row a query matches, page by page.

The index pages by keyset (:class:`~middleware.audit.row.AuditQuery` ``after``: the
``(recorded_us, index)`` of the last row read), so a long read neither skips nor repeats a row
when entries are appended meanwhile, and no page costs more than ``limit`` rows.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Protocol

from middleware.audit.row import AuditQuery, AuditRow
from middleware.audit.sort_keys import sort_column, sort_value

__all__ = ["RowSource", "after", "all_rows", "pages"]


class RowSource(Protocol):
    """What paging needs of an audit index (:class:`~middleware.storage.ledger_base.LogStore`)."""

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]: ...


async def pages(index: RowSource, query: AuditQuery) -> AsyncGenerator[list[AuditRow], None]:
    """The pages of ``query`` (``query.limit`` rows each, from its ``after``), in its order;
    the last page is the first one shorter than ``query.limit`` (possibly empty)."""
    while True:
        page = await index.audit_rows(query)
        yield page
        if len(page) < query.limit:
            return
        query = after(query, page[-1])


def after(query: AuditQuery, last: AuditRow) -> AuditQuery:
    """``query`` paged on past ``last`` in its order (``after`` and ``after_value``)."""
    value = "" if sort_column(query.sort) is None else sort_value(last, query.sort)
    return replace(query, after=(last.recorded_us, last.index), after_value=value)


async def all_rows(index: RowSource, query: AuditQuery) -> list[AuditRow]:
    """Every row ``query`` matches from its ``after`` on, read ``query.limit`` at a time."""
    out: list[AuditRow] = []
    async for page in pages(index, query):
        out += page
    return out
