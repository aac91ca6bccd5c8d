"""The SQLite schema of the log store (tables are described in ``ledger_base``).

Triggers make the log append-only at the SQL level, so an ``UPDATE`` or ``DELETE`` typed into
``sqlite3`` by hand aborts. SQLite's ``INSERT OR REPLACE`` deletes a conflicting row *without*
firing delete triggers (unless ``PRAGMA recursive_triggers`` is on, a per-connection setting a
DBA's shell does not have), so inserts are checked too: a leaf must take the next index, a
checkpoint a size not signed yet, and a witnessed checkpoint
(:mod:`~middleware.storage.ledger_witnessed`) a size above every one kept. The evidence table
has no triggers on purpose (crypto-shredding deletes or overwrites evidence; the leaf keeps
the commitment), and neither have the audit index and key tables
(:data:`~middleware.storage.audit_index_sqlite.INDEX_SCHEMA`: derived data that shred and
reindex rewrite, and the keys a shred deletes).

The script brackets itself in ``BEGIN IMMEDIATE`` ... ``COMMIT`` so two processes creating
the same file do not interleave.
"""

from __future__ import annotations

from middleware.ledger.merkle import EMPTY_ROOT
from middleware.storage.audit_index_sqlite import INDEX_SCHEMA

__all__ = ["CONSENT_LEAF", "SCHEMA"]

#: The leaves of ``consent`` and ``consent-revoke`` entries: their kind byte (offset 5,
#: ``middleware.ledger.leaf``) is 1 or 2. A query must spell the predicate exactly so for
#: SQLite to use the partial index built on it.
CONSENT_LEAF = "substr(leaf, 6, 1) IN (x'01', x'02')"


def _append_only(table: str) -> str:
    return f"""
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'consentry ledger: {table} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'consentry ledger: {table} is append-only'); END;
"""


SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS consentry_ledger_leaves (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    leaf BLOB NOT NULL,
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    pseudonym BLOB CHECK (pseudonym IS NULL OR length(pseudonym) = 16),
    idem_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS consentry_ledger_leaves_pseudonym
    ON consentry_ledger_leaves (pseudonym, idx) WHERE pseudonym IS NOT NULL;
CREATE INDEX IF NOT EXISTS consentry_ledger_leaves_consent
    ON consentry_ledger_leaves (idx) WHERE {CONSENT_LEAF};
CREATE TABLE IF NOT EXISTS consentry_ledger_evidence (
    idx INTEGER PRIMARY KEY REFERENCES consentry_ledger_leaves (idx),
    salt BLOB,
    data BLOB
);
CREATE TABLE IF NOT EXISTS consentry_ledger_checkpoints (
    size INTEGER PRIMARY KEY CHECK (size >= 0),
    root BLOB NOT NULL CHECK (length(root) = 32),
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consentry_ledger_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL CHECK (size >= 0),
    compact BLOB NOT NULL,
    root BLOB NOT NULL CHECK (length(root) = 32)
);
INSERT OR IGNORE INTO consentry_ledger_state (id, size, compact, root)
    VALUES (1, 0, x'', x'{EMPTY_ROOT.hex()}');
CREATE TABLE IF NOT EXISTS consentry_ledger_heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    beats INTEGER NOT NULL
);
INSERT OR IGNORE INTO consentry_ledger_heartbeat (id, beats) VALUES (1, 0);
{_append_only("consentry_ledger_leaves")}
CREATE TRIGGER IF NOT EXISTS consentry_ledger_leaves_in_order
BEFORE INSERT ON consentry_ledger_leaves
WHEN NEW.idx IS NOT (SELECT coalesce(max(idx) + 1, 0) FROM consentry_ledger_leaves)
BEGIN SELECT RAISE(ABORT, 'consentry ledger: leaves take the next index'); END;
{_append_only("consentry_ledger_checkpoints")}
CREATE TRIGGER IF NOT EXISTS consentry_ledger_checkpoints_once
BEFORE INSERT ON consentry_ledger_checkpoints
WHEN EXISTS (SELECT 1 FROM consentry_ledger_checkpoints WHERE size = NEW.size)
BEGIN SELECT RAISE(ABORT, 'consentry ledger: a size is signed once'); END;
CREATE TABLE IF NOT EXISTS consentry_ledger_witnessed (
    size INTEGER PRIMARY KEY CHECK (size >= 0),
    note TEXT NOT NULL
);
{_append_only("consentry_ledger_witnessed")}
CREATE TRIGGER IF NOT EXISTS consentry_ledger_witnessed_grows
BEFORE INSERT ON consentry_ledger_witnessed
WHEN EXISTS (SELECT 1 FROM consentry_ledger_witnessed WHERE size >= NEW.size)
BEGIN SELECT RAISE(ABORT, 'consentry ledger: witnessed checkpoints only grow'); END;
{INDEX_SCHEMA}
COMMIT;
"""  # noqa: S608  (built from constants only)
