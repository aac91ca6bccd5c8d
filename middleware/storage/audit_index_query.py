"""An :class:`~middleware.audit.row.AuditQuery` as parameterised SQL, for SQLite and PostgreSQL.

The rules are :mod:`middleware.storage.audit_index_match`'s; this module spells them in SQL.
Every value is a bound parameter (``?`` in SQLite, ``$n`` in PostgreSQL); only constants are
formatted into the text. "Contains" criteria (purpose, resource type, entity) read a child
table in SQLite (``consentry_audit_terms``, one row per element, indexed by field and term;
purposes by their bare code) and GIN-indexed arrays in PostgreSQL (``@>``). The paging key
``after`` becomes a range on ``recorded_us`` the time indexes can seek to, plus the tie-break
on ``idx``; under another ``sort`` it is ``(value, idx)`` past the last row's, a row-value
comparison (:mod:`middleware.audit.sort_keys`: the same expression orders the rows). A pseudonym is
found in SQLite through the log's own index of chains (the leaves' ``(pseudonym, idx)``, in
the same file): every index row states its leaf's pseudonym (an append refuses a row that
does not, ``reindex`` too: ``audit_index_sqlite.disagreeing``); the row's column is compared
as well.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Literal

from middleware.audit.row import AuditQuery
from middleware.audit.sort_keys import descending, sort_column, sort_sql
from middleware.storage.audit_index_match import has_phi_criteria, purpose_code

__all__ = [
    "TERM_ENTITY",
    "TERM_PURPOSE",
    "TERM_PURPOSE_CODE",
    "TERM_RESOURCE_TYPE",
    "Dialect",
    "count_sql",
    "json_array",
    "json_array_cached",
    "select_sql",
]

Dialect = Literal["sqlite", "postgres"]

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: Characters a JSON string must escape besides ``"`` (RFC 8259 section 7).
_ESCAPED = re.compile(r"[\\\x00-\x1f]").search


def json_array(items: tuple[str, ...]) -> str:
    """``items`` as a compact JSON array, exactly as :data:`_encode` (``json``, compact,
    UTF-8 as is) writes it: strings that need no escaping (nearly all) are joined directly,
    about ten times faster (a third of a rebuild's CPU went to the JSON encoder)."""
    if not items:
        return "[]"
    joined = '","'.join(items)
    if joined.count('"') == 2 * (len(items) - 1) and _ESCAPED(joined) is None:
        return f'["{joined}"]'
    return _encode(items)


#: Roles, purposes and resource types repeat: their encodings are remembered.
json_array_cached = functools.lru_cache(maxsize=4096)(json_array)


#: The ``field`` values of SQLite's ``consentry_audit_terms`` rows.
TERM_PURPOSE = 1
TERM_PURPOSE_CODE = 2
TERM_RESOURCE_TYPE = 3
TERM_ENTITY = 4

#: PostgreSQL array column of each term field.
_PG_ARRAYS = {
    TERM_PURPOSE: "purposes",
    TERM_PURPOSE_CODE: "purpose_codes",
    TERM_RESOURCE_TYPE: "resource_types",
    TERM_ENTITY: "entities",
}

_TABLE = "consentry_audit_index"
#: A chain's indexes in SQLite: the leaves' partial index ``(pseudonym, idx)`` holds them in
#: order, so the audit index needs no ``(pseudonym, recorded_us)`` index of its own.
_CHAIN = "SELECT idx FROM consentry_ledger_leaves WHERE pseudonym ="


class _Where:
    """Collects clauses and their arguments, numbering PostgreSQL's parameters."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.clauses: list[str] = []
        self.args: list[object] = []

    def param(self, value: object) -> str:
        self.args.append(value)
        return "?" if self.dialect == "sqlite" else f"${len(self.args)}"

    def add(self, clause: str) -> None:
        self.clauses.append(clause)

    def contains(self, field: int, term: str, q: AuditQuery) -> str:
        if self.dialect == "sqlite":  # the postings carry the row's time: seek to the range
            sql = f"WHERE field = {field} AND term = {self.param(term)}"
            if q.since_us is not None:
                sql += f" AND recorded_us >= {self.param(q.since_us)}"
            if q.until_us is not None:
                sql += f" AND recorded_us <= {self.param(q.until_us)}"
            return f"idx IN (SELECT idx FROM consentry_audit_terms {sql})"  # noqa: S608
        return f"{_PG_ARRAYS[field]} @> ARRAY[{self.param(term)}::text]"

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def _where(q: AuditQuery, dialect: Dialect, *, paged: bool) -> _Where:
    w = _Where(dialect)
    false = "0" if dialect == "sqlite" else "false"
    if q.since_us is not None:
        w.add(f"recorded_us >= {w.param(q.since_us)}")
    if q.until_us is not None:
        w.add(f"recorded_us <= {w.param(q.until_us)}")
    if q.kinds:
        kinds = sorted(q.kinds)
        if dialect == "sqlite":
            w.add(f"kind IN ({', '.join(w.param(k) for k in kinds)})")
        else:
            w.add(f"kind = ANY({w.param(kinds)}::integer[])")
    if q.pseudonym is not None:
        w.add(f"pseudonym = {w.param(q.pseudonym)}")
        if dialect == "sqlite":  # found through the leaves' index (module docstring)
            w.add(f"idx IN ({_CHAIN} {w.param(q.pseudonym)})")
    if paged and q.after is not None:
        at, index = q.after
        more, most = ("<", "<=") if descending(q.sort) else (">", ">=")
        if sort_column(q.sort) is None:
            w.add(
                f"recorded_us {most} {w.param(at)} "
                f"AND (recorded_us {more} {w.param(at)} OR idx {more} {w.param(index)})"
            )
        else:  # (value, idx) past the last row's: no index serves it (appends stay cheap)
            key = sort_sql(q.sort, dialect)
            w.add(f"({key}, idx) {more} ({w.param(q.after_value)}, {w.param(index)})")
    if has_phi_criteria(q) or not q.include_shredded:
        w.add(f"shredded = {false}")
    for column, value in (
        ("patient", q.patient),
        ("agent", q.agent),
        ("event_type", q.event_type),
        ("subtype", q.subtype),
        ("action", q.action),
        ("outcome", q.outcome),
        ("client", q.client),
    ):
        if value is not None:
            w.add(f"{column} = {w.param(value)}")
    if q.entity is not None:
        w.add(f"(patient = {w.param(q.entity)} OR {w.contains(TERM_ENTITY, q.entity, q)})")
    if q.purpose is not None:
        if dialect == "postgres":
            field = TERM_PURPOSE if "|" in q.purpose else TERM_PURPOSE_CODE
            w.add(w.contains(field, q.purpose, q))
        else:  # SQLite files bare codes only; the exact element is checked on the row
            w.add(w.contains(TERM_PURPOSE_CODE, purpose_code(q.purpose), q))
            if "|" in q.purpose:
                exact = w.param(q.purpose)
                w.add(f"EXISTS (SELECT 1 FROM json_each(purposes) WHERE value = {exact})")  # noqa: S608
    if q.resource_type is not None:
        w.add(w.contains(TERM_RESOURCE_TYPE, q.resource_type, q))
    if q.break_glass is not None:
        flag = int(q.break_glass) if dialect == "sqlite" else q.break_glass
        w.add(f"break_glass = {w.param(flag)}")
    return w


def select_sql(q: AuditQuery, dialect: Dialect, columns: str) -> tuple[str, list[object]]:
    """``SELECT columns`` of the page ``q`` asks for, and its arguments."""
    w = _where(q, dialect, paged=True)
    order = "DESC" if descending(q.sort) else "ASC"
    if sort_column(q.sort) is None:
        sql = f"SELECT {columns} FROM {_TABLE}{w.sql()}"  # noqa: S608  (constants, placeholders)
        sql += f" ORDER BY recorded_us {order}, idx {order} LIMIT {w.param(q.limit)}"
        return sql, w.args
    # No index serves this order: every matching row is sorted. Sorting ledger indexes alone,
    # then reading the page's rows, keeps each sorted record small (a wide row per record made
    # a descending sort over a million rows several times slower).
    by = f"ORDER BY {sort_sql(q.sort, dialect)} {order}, idx {order}"
    page = f"SELECT idx FROM {_TABLE}{w.sql()} {by} LIMIT {w.param(q.limit)}"  # noqa: S608
    return f"SELECT {columns} FROM {_TABLE} WHERE idx IN ({page}) {by}", w.args  # noqa: S608


def count_sql(q: AuditQuery, dialect: Dialect) -> tuple[str, list[object]]:
    """``SELECT count(*)`` of every row ``q`` matches (``after``, ``limit`` and ``sort``
    ignored: the total an ITI-81 searchset reports), and its arguments."""
    w = _where(q, dialect, paged=False)
    sql = f"SELECT count(*) FROM {_TABLE}{w.sql()}"  # noqa: S608
    return sql, w.args
