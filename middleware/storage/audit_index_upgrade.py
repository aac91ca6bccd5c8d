"""The ``(pseudonym, recorded_us)`` index an earlier version kept, dropped once it is safe.

A search by pseudonym (and a shred's read) finds a chain's index rows through the leaves'
``(pseudonym, idx)`` index (``audit_index_sqlite``), so a row whose pseudonym is not its
leaf's would be missing from them: never in an accounting of shredded chains, and left with
its PHI by a shred. New code never writes such a row (an append and ``reindex`` refuse it,
staged adoption files it as below), but a file an earlier version wrote was never checked.
:func:`drop_old` checks it once, when a writer opens such a file, while that index still
exists (it covers ``(pseudonym, idx)``, so the check reads that index and one leaf per row,
not the rows), and in the same transaction, with ``secure_delete`` on:

* a row that disagrees with its leaf is replaced by its shredded form stating the leaf's
  pseudonym (no PHI left that a shred could miss), a row with no leaf (past the log's end) by
  its shredded form (``audit_index_match.agreeing``), and a warning names their ledger
  indexes (:func:`warn_repaired`): ``consentry audit reindex`` rebuilds those with a leaf
  from their entries' evidence, so they count in their patients' accounting again;
* then the index is dropped.

The open does not fail on such rows because ``consentry audit reindex``, the repair, opens the
log as a writer too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from middleware.logging import get_logger
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_match import agreeing
from middleware.storage.audit_index_sqlite import DROPPED

__all__ = ["drop_old", "warn_repaired"]

_PRESENT = f"SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '{DROPPED}'"  # noqa: S608
#: The indexes of the rows whose leaf is missing or names another pseudonym (or none where the
#: row names one), over the whole table (``IS`` compares NULLs too): it reads the old index
#: (covering ``(pseudonym, idx)``) and one leaf per row, not the rows (1.4-1.5 s CPU at 1M
#: rows). Only candidates: the rows found are decided and repaired by ``agreeing``, the
#: rule ``reindex`` refuses by (``audit_index_sqlite.disagreeing``).
_DISAGREEING = (
    "SELECT a.idx FROM consentry_audit_index a "
    "LEFT JOIN consentry_ledger_leaves l ON l.idx = a.idx "
    "WHERE l.idx IS NULL OR l.pseudonym IS NOT a.pseudonym"
)
#: How many ledger indexes a warning names (the count says how many there are).
_NAMED = 20


def drop_old(c: sqlite3.Connection) -> list[int]:
    """Repair the rows that disagree with their leaves and drop the earlier version's index
    (module docstring), in one ``audit_index_sqlite.secure_transaction``; returns the
    ledger indexes of the rows repaired, ascending, after logging them (:func:`warn_repaired`).
    Runs on the writer's thread outside any transaction. No such index: no write, no lock
    taken."""
    if c.execute(_PRESENT).fetchone() is None:
        return []
    with lite.secure_transaction(c):
        repaired = _repair(c) if c.execute(_PRESENT).fetchone() is not None else []
        c.execute(f"DROP INDEX IF EXISTS {DROPPED}")
    warn_repaired(repaired, reason="upgrade-row-disagrees-with-leaf")
    return repaired


def _repair(c: sqlite3.Connection) -> list[int]:
    found = [lite.read_row(c, index) for (index,) in c.execute(_DISAGREEING).fetchall()]
    rows = [r for r in found if r is not None]
    fixed, repaired = agreeing(rows, lite.leaf_pseudonyms(c, rows))
    wrong = set(repaired)
    lite.write_rows(c, [r for r in fixed if r.index in wrong])  # replaces each row, its terms
    return repaired


def warn_repaired(indexes: Sequence[int], *, reason: str) -> None:
    """Log (a warning; nothing when ``indexes`` is empty) that the index rows at ``indexes``
    (ledger indexes, ascending) disagreed with their leaves and were filed shredded, so they
    are missing from their patients' accounting until ``consentry audit reindex`` rebuilds
    them. ``reason`` is the reason code. Ledger indexes and a count name no one: no PHI."""
    if not indexes:
        return
    named = ",".join(str(i) for i in indexes[:_NAMED])
    get_logger("consentry.audit").warning(
        "audit index rows disagreeing with their leaves filed shredded; "
        "run `consentry audit reindex` to rebuild them from the ledger's evidence",
        reason=reason,
        count=len(indexes),
        ledger_indexes=named if len(indexes) <= _NAMED else f"{named},...",
    )
