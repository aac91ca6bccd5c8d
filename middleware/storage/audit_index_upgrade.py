"""The ``(pseudonym, recorded_us)`` index an earlier version kept, dropped once it is safe.

A search by pseudonym (and a shred's read) finds a chain's index rows through the leaves'
``(pseudonym, idx)`` index (``audit_index_sqlite``), so a row whose pseudonym is not its
leaf's would be missing from them: never in an accounting of shredded chains, and left with
its PHI by a shred. New code never writes such a row (an append, ``reindex`` and staged
adoption refuse it), but a file an earlier version wrote was never checked. :func:`drop_old`
checks it once, when a writer opens such a file, while that index still exists (it covers
``(pseudonym, idx)``, so the check reads that index and one leaf per row, not the rows), and
in the same transaction, with ``secure_delete`` on:

* a row that disagrees with its leaf is replaced by its shredded form stating the leaf's
  pseudonym (no PHI left that a shred could miss; ``consentry audit reindex`` rebuilds it
  from the ledger's evidence), a row with no leaf (past the log's end) by its shredded form;
* then the index is dropped.

The open does not fail on such rows (as staged adoption does) because ``consentry audit
reindex``, the repair, opens the log as a writer too.
"""

from __future__ import annotations

import contextlib
import sqlite3

from msgspec.structs import replace

from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_sqlite import DROPPED

__all__ = ["drop_old"]

_PRESENT = f"SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '{DROPPED}'"  # noqa: S608
#: Rows whose leaf is missing or names another pseudonym (or none where the row names one),
#: with the leaf's pseudonym and whether there is a leaf: ``audit_index_sqlite.disagreeing``
#: over the whole table (``IS`` compares NULLs too).
_DISAGREEING = (
    "SELECT a.idx, l.pseudonym, l.idx IS NOT NULL FROM consentry_audit_index a "
    "LEFT JOIN consentry_ledger_leaves l ON l.idx = a.idx "
    "WHERE l.idx IS NULL OR l.pseudonym IS NOT a.pseudonym"
)


def drop_old(c: sqlite3.Connection) -> int:
    """Repair the rows that disagree with their leaves and drop the earlier version's index
    (module docstring), in one ``BEGIN IMMEDIATE`` transaction this function brackets; returns
    how many rows were repaired. Runs on the writer's thread outside any transaction. No such
    index: no write, no lock taken."""
    if c.execute(_PRESENT).fetchone() is None:
        return 0
    c.execute("PRAGMA secure_delete = ON")
    try:
        c.execute("BEGIN IMMEDIATE")
        try:
            repaired = _repair(c) if c.execute(_PRESENT).fetchone() is not None else 0
            c.execute(f"DROP INDEX IF EXISTS {DROPPED}")
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
    finally:
        c.execute("PRAGMA secure_delete = OFF")
    if repaired:  # the WAL still holds the replaced pages (as after a shred)
        with contextlib.suppress(sqlite3.OperationalError):
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return repaired


def _repair(c: sqlite3.Connection) -> int:
    rows = []
    for index, pseudonym, has_leaf in c.execute(_DISAGREEING).fetchall():
        row = lite.read_row(c, index)
        if row is not None:  # no leaf (an index past the log's end): shredded as it stands
            stated = (
                (None if pseudonym is None else bytes(pseudonym)) if has_leaf else row.pseudonym
            )
            rows.append(replace(row, pseudonym=stated).shred())
    lite.write_rows(c, rows)  # replaces each row and its terms
    return len(rows)
