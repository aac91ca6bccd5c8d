"""Index rows an earlier version left staged in SQLite, moved into the indexed tables.

An earlier version could write an append's audit-index row into ``consentry_audit_staged``
(the index's columns, keyed by ledger index, no secondary index, no terms) and merge it into
``consentry_audit_index`` and ``consentry_audit_terms`` later. Staging is gone (it saved
writer CPU only while a merge held the write lock for tenths of a second; docs/audit.md, the
writer's share), and nothing reads that table any more, so a row left in it would be missing
from every search. :func:`adopt` moves such rows once, when a writer opens the file
(``SqliteLogStore.open``), in one ``BEGIN IMMEDIATE`` transaction
(``audit_index_sqlite.secure_transaction``):

* a staged row whose index an indexed row already holds is dropped (a reindex or shred wrote
  that one later: it wins, as the earlier merge decided);
* a row whose pseudonym is tombstoned, or whose evidence is gone (a shred or retention of a
  process that saw the indexed tables alone), moves in its shredded form
  (:meth:`~middleware.audit.row.AuditRow.shred`), so no shredded patient's PHI is filed;
* the rest move as an append writes them, terms included (``audit_index_sqlite.write_rows``);
* a row whose leaf is missing or names another pseudonym (the append that staged it refused
  such rows; an edited or foreign row) cannot move as it stands, since a search by pseudonym
  finds rows through their leaves (``audit_index_sqlite.disagreeing``): it moves as the
  upgrade of the earlier index files one (``audit_index_upgrade``), shredded, stating its
  leaf's pseudonym, and a warning names its ledger index so that ``consentry audit
  reindex`` rebuilds it from its evidence. The open does not fail: that repair opens the log
  as a writer too.

The table is emptied, not dropped: a process of the earlier version still running on the
same file (a rolling upgrade) reads and probes it on every search and append, and would fail
without it. Freed cells are zeroed (``secure_delete``) and the WAL is truncated after, as a
shred does. A file without the table (every file this version created) costs one catalogue
probe.
"""

from __future__ import annotations

import sqlite3

from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_match import agreeing
from middleware.storage.audit_index_upgrade import warn_repaired

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
    transaction this function brackets; returns how many moved, after logging those filed
    shredded for disagreeing with their leaves (``audit_index_upgrade.warn_repaired``). Runs
    on the writer's thread outside any transaction. Nothing staged: no write, no lock taken."""
    if c.execute(_PRESENT).fetchone() is None:
        return 0
    if c.execute(f"SELECT 1 FROM {STAGED} LIMIT 1").fetchone() is None:  # noqa: S608
        return 0
    with lite.secure_transaction(c):
        found = c.execute(_NEW).fetchall()
        staged = [lite.decode_row(v[:-1]) for v in found]
        rows, repaired = agreeing(staged, lite.leaf_pseudonyms(c, staged))
        gone = {r.index for r, v in zip(rows, found, strict=True) if v[-1]}
        rows = [r.shred() if r.index in gone else r for r in lite.tombstoned(c, rows)]
        lite.write_rows(c, rows, fresh=True)  # no indexed row holds these indexes
        c.execute(f"DELETE FROM {STAGED}")  # noqa: S608
    warn_repaired(repaired, reason="staged-row-disagrees-with-leaf")
    return len(rows)
