"""Index rows an earlier version left staged in SQLite, moved into the indexed tables.

An earlier version could write an append's audit-index row into ``consentry_audit_staged``
(the index's columns, keyed by ledger index, no secondary index, no terms) and merge it into
``consentry_audit_index`` and ``consentry_audit_terms`` later. Staging is gone (it saved
writer CPU only while a merge held the write lock for tenths of a second; docs/audit.md, the
writer's share), and nothing reads that table any more, so a row left in it would be missing
from every search. :func:`adopt` moves such rows once, when a writer opens the file
(``SqliteLogStore.open``), in one ``BEGIN IMMEDIATE`` transaction:

* a staged row whose index an indexed row already holds is dropped (a reindex or shred wrote
  that one later: it wins, as the earlier merge decided);
* a row whose pseudonym is tombstoned, or whose evidence is gone (a shred or retention of a
  process that saw the indexed tables alone), moves in its shredded form
  (:meth:`~middleware.audit.row.AuditRow.shred`), so no shredded patient's PHI is filed;
* the rest move as an append writes them, terms included (``audit_index_sqlite.write_rows``);
* a row whose leaf is missing or names another pseudonym fails the open
  (:class:`~middleware.ledger.errors.VerificationError`, nothing moved): the append that
  staged it refused such rows, and a search by pseudonym finds rows through their leaves
  (``audit_index_sqlite.disagreeing``).

The table is emptied, not dropped: a process of the earlier version still running on the
same file (a rolling upgrade) reads and probes it on every search and append, and would fail
without it. Freed cells are zeroed (``secure_delete``) and, if a row moved shredded, the WAL
is truncated after, as a shred does. A file without the table (every file this version
created) costs one catalogue probe.
"""

from __future__ import annotations

import contextlib
import sqlite3

from middleware.ledger.errors import VerificationError
from middleware.storage import audit_index_sqlite as lite

__all__ = ["STAGED", "adopt"]

#: The table an earlier version staged index rows in.
STAGED = "consentry_audit_staged"
_PRESENT = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{STAGED}'"  # noqa: S608
#: The staged rows no indexed row has the index of, each with whether its evidence is gone.
_NEW = (
    f"SELECT {lite.COLUMNS}, NOT EXISTS (SELECT 1 FROM consentry_ledger_evidence e "  # noqa: S608
    f"WHERE e.idx = s.idx) FROM {STAGED} s "
    "WHERE s.idx NOT IN (SELECT idx FROM consentry_audit_index) ORDER BY s.idx"
)


def adopt(c: sqlite3.Connection) -> int:
    """Move every staged row into the indexed tables (module docstring) inside one
    transaction this function brackets; returns how many moved. Runs on the writer's thread
    outside any transaction. Nothing staged: no write, no lock taken."""
    if c.execute(_PRESENT).fetchone() is None:
        return 0
    if c.execute(f"SELECT 1 FROM {STAGED} LIMIT 1").fetchone() is None:  # noqa: S608
        return 0
    c.execute("PRAGMA secure_delete = ON")
    try:
        c.execute("BEGIN IMMEDIATE")
        try:
            found = c.execute(_NEW).fetchall()
            rows = [lite.decode_row(v[:-1]) for v in found]
            bad = lite.disagreeing(c, rows)
            if bad:
                raise VerificationError(f"staged index rows disagree with their leaves: {bad[:10]}")
            gone = {r.index for r, v in zip(rows, found, strict=True) if v[-1]}
            rows = [r.shred() if r.index in gone else r for r in lite.tombstoned(c, rows)]
            shredded = sum(r.shredded for r in rows)
            lite.write_rows(c, rows, fresh=True)  # no indexed row holds these indexes
            c.execute(f"DELETE FROM {STAGED}")  # noqa: S608
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
    finally:
        c.execute("PRAGMA secure_delete = OFF")
    if shredded:  # the WAL still holds the staged pages (as after a shred)
        with contextlib.suppress(sqlite3.OperationalError):
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return len(rows)
