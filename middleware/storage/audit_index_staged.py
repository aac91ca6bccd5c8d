"""The audit index's staging table in SQLite: where an append writes its rows, and the merge
that moves them into the indexed tables.

An append's index row used to go into ``consentry_audit_index`` and its terms into
``consentry_audit_terms`` at once: each row then dirtied its own page in every secondary index
(a patient's, a pseudonym's, the terms' postings), and every dirty page is a WAL frame at the
``COMMIT`` the request waits for, about half of that commit's cost. Staged, the row goes into
``consentry_audit_staged`` instead, the same columns keyed by the ledger index and nothing
else, so an append touches the table's last page only. :func:`merge_slice` later moves the
staged rows of the lowest indexes into the indexed tables, a slice a transaction (the log
store runs slices in the background once the staging holds ``SqliteLogStore.merge_at`` rows,
and on close: :mod:`~middleware.storage.ledger_sqlite_merge`); :func:`merge` moves all of
them inside the transaction of every other write to the index. The random index pages a
merge dirties are shared by the many rows it moves.

A process of a version that knows no staging table, on the same file, sees only the indexed
tables: its shred and retention miss the staged rows. The merge therefore rewrites a staged
row shredded when its pseudonym is tombstoned or its evidence is gone (:data:`_SHRED`), and
drops a staged row whose index an indexed row holds (its reindex wrote it: the indexed one
is kept).

Readers see both tables as one: every search reads both (``audit_index_query``), and
:func:`~middleware.storage.audit_index_sqlite.read_row` looks in both (in a file without the
table, :func:`present`, the indexed tables alone). Every other write to
the index (a shred, retention, a reindex) merges first, in its own transaction, so it finds
every row where it always looked; ``clear_index`` empties both. A crash between an append and
the merge loses nothing: the staged rows are committed with their entries, found by every
search, and merged by the next write or close.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from middleware.storage.audit_index_query import (
    TERM_ENTITY,
    TERM_PURPOSE_CODE,
    TERM_RESOURCE_TYPE,
)

__all__ = [
    "COLUMNS",
    "ROW_COLUMNS_DDL",
    "STAGED_SCHEMA",
    "Merged",
    "merge",
    "merge_slice",
    "present",
    "staged_count",
]

#: The index's columns, in :class:`~middleware.audit.row.AuditRow`'s field order.
COLUMNS = (
    "idx, recorded_us, kind, flags, patient, pseudonym, agent, roles, organization, client, "
    "purposes, action, event_type, subtype, outcome, resource_types, entities, break_glass, "
    "request_id, shredded"
)

#: The columns of an index row, as both ``consentry_audit_index`` and the staging declare
#: them (one list, so the two tables cannot drift apart).
ROW_COLUMNS_DDL = """
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    recorded_us INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    patient TEXT,
    pseudonym BLOB,
    agent TEXT,
    roles TEXT NOT NULL,
    organization TEXT,
    client TEXT,
    purposes TEXT NOT NULL,
    action TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subtype TEXT,
    outcome TEXT NOT NULL,
    resource_types TEXT NOT NULL,
    entities TEXT NOT NULL,
    break_glass INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    shredded INTEGER NOT NULL
"""
#: The staged rows: ``consentry_audit_index``'s columns, no secondary index, no terms.
STAGED_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS consentry_audit_staged ({ROW_COLUMNS_DDL});
"""


def _moves(new: str) -> tuple[str, str]:
    """The merge's two statements: the terms of the staged rows that meet ``new`` (an SQL
    condition on the staged row ``i``, ``:hi`` the slice's last index), filed as
    ``audit_index_sqlite`` files an append's (purpose codes, resource types, references but
    the row's own patient), then the rows."""
    terms = f"""
INSERT INTO consentry_audit_terms (field, term, recorded_us, idx)
SELECT {TERM_PURPOSE_CODE}, substr(j.value, instr(j.value, '|') + 1), i.recorded_us, i.idx
    FROM consentry_audit_staged i, json_each(i.purposes) j WHERE {new}
UNION ALL
SELECT {TERM_RESOURCE_TYPE}, j.value, i.recorded_us, i.idx
    FROM consentry_audit_staged i, json_each(i.resource_types) j WHERE {new}
UNION ALL
SELECT {TERM_ENTITY}, j.value, i.recorded_us, i.idx
    FROM consentry_audit_staged i, json_each(i.entities) j
    WHERE {new} AND j.value IS NOT i.patient
"""  # noqa: S608  (constants only)
    rows = (
        f"INSERT INTO consentry_audit_index ({COLUMNS}) "  # noqa: S608  (constants only)
        f"SELECT {COLUMNS} FROM consentry_audit_staged i WHERE {new} ORDER BY idx"
    )
    return terms, rows


#: The slice's staged rows: none has an indexed twin (:data:`_OVERLAP` is false).
_MOVE_ALL = _moves("i.idx <= :hi")
#: The slice's staged rows no indexed row has the index of; the indexed twin (a row a
#: reindex or shred wrote since, by a process that does not merge first) is kept and the
#: staged one dropped. A probe per row.
_MOVE_NEW = _moves("i.idx <= :hi AND i.idx NOT IN (SELECT idx FROM consentry_audit_index)")
#: Could a staged row have an indexed twin? Not if every staged index is past the indexed
#: ones, as an append's always are (two seeks, not a probe per row).
_OVERLAP = (
    "SELECT (SELECT min(idx) FROM consentry_audit_staged) "
    "<= (SELECT max(idx) FROM consentry_audit_index)"
)
#: The last index of a slice of at most ``:rows`` staged rows (the lowest indexes).
_SLICE_END = (
    "SELECT max(idx) FROM (SELECT idx FROM consentry_audit_staged ORDER BY idx LIMIT :rows)"
)
#: The slice's rows a shred or retention has reached behind the staging's back (an older
#: process on the same file, whose shred sees the indexed tables alone): a tombstoned
#: pseudonym, or the entry's evidence deleted. They are rewritten in the shape
#: ``AuditRow.shred`` gives (``shredded_row``: the leaf's fields, every PHI field empty; a
#: test compares the two) before they move, so no merge files a shredded patient's PHI.
_SHRED = """
UPDATE consentry_audit_staged SET
    patient = NULL, agent = NULL, roles = '[]', organization = NULL, client = NULL,
    purposes = '[]', action = '', event_type = '', subtype = NULL, outcome = '',
    resource_types = '[]', entities = '[]', request_id = '', shredded = 1
WHERE idx <= :hi AND shredded = 0 AND (
    pseudonym IN (SELECT pseudonym FROM consentry_audit_shredded)
    OR NOT EXISTS (
        SELECT 1 FROM consentry_ledger_evidence e WHERE e.idx = consentry_audit_staged.idx
    )
)
"""


class Merged(NamedTuple):
    """What one :func:`merge_slice` did: staged rows moved (or dropped for an indexed twin),
    and how many of them it wrote shredded (:data:`_SHRED`: the caller then truncates the
    WAL, as a shred does)."""

    moved: int
    shredded: int


def present(c: sqlite3.Connection) -> bool:
    """Has the file a staging table? One written before staging existed has none until a
    writer opens it (the schema script creates it); a reader that runs no script (a store
    opened without replay) then searches the indexed tables alone."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'consentry_audit_staged'"
    return c.execute(sql).fetchone() is not None


def staged_count(c: sqlite3.Connection) -> int:
    """How many rows are staged (an open store's count to merge at)."""
    return int(c.execute("SELECT count(*) FROM consentry_audit_staged").fetchone()[0])


def merge_slice(c: sqlite3.Connection, rows: int | None = None) -> Merged:
    """Move the ``rows`` staged rows of the lowest indexes (``None``: every staged row) into
    the indexed tables, terms included, inside the caller's transaction: a slice bounds how
    long the write lock is held. Rows a shred or retention reached meanwhile move shredded
    (:data:`_SHRED`). Nothing staged: one probe, no write. The connection's
    ``secure_delete`` is as it was (a shred's is on)."""
    limit = -1 if rows is None else rows  # LIMIT -1: no limit
    hi = c.execute(_SLICE_END, {"rows": limit}).fetchone()[0]
    if hi is None:
        return Merged(0, 0)
    terms, move = _MOVE_NEW if c.execute(_OVERLAP).fetchone()[0] else _MOVE_ALL
    # Freed cells are zeroed (no measurable cost): else a copy of a row a later shred
    # erases, or of a row's PHI the shredding rewrite replaced, would linger in free pages.
    was = c.execute("PRAGMA secure_delete").fetchone()[0]
    c.execute("PRAGMA secure_delete = ON")
    try:
        shredded = c.execute(_SHRED, {"hi": hi}).rowcount
        c.execute(terms, {"hi": hi})  # first: the rows they come from are still new
        c.execute(move, {"hi": hi})
        moved = c.execute("DELETE FROM consentry_audit_staged WHERE idx <= ?", (hi,)).rowcount
    finally:
        c.execute(f"PRAGMA secure_delete = {int(was)}")
    return Merged(int(moved), int(shredded))


def merge(c: sqlite3.Connection) -> int:
    """Move every staged row (:func:`merge_slice` of them all) inside the caller's
    transaction, as every other write to the index does first; returns how many moved."""
    return merge_slice(c).moved
