"""The audit index and the evidence-key table in SQLite: schema and the statements the SQLite
log store runs (inside its own transactions, on its worker thread).

Tables (beside the log, in the same file; none is under the log's append-only triggers):

``consentry_audit_index``
    one row per indexed ledger entry, keyed by ``idx`` (the ``INTEGER PRIMARY KEY``, so every
    secondary index ends in it and serves ``ORDER BY recorded_us, idx``): a column per
    :class:`~middleware.audit.row.AuditRow` field, its tuples as JSON arrays. Indexes on
    ``(recorded_us)``, ``(patient, recorded_us)``, ``(agent, recorded_us)``. A search by
    pseudonym goes through the log's index of chains instead, the leaves' partial index
    ``(pseudonym, idx)`` in the same file (``audit_index_query``): every row states its
    leaf's pseudonym (an append refuses a row that does not, ``reindex`` refuses it too,
    :func:`disagreeing`; shreds keep the pseudonym), so the index's own
    ``(pseudonym, recorded_us)``, a random page written by every append, is not kept (a
    chain's rows are sorted by time after the lookup; docs/audit.md, the writer's share). A
    file an earlier version wrote loses it when a writer opens it, once every row agrees with
    its leaf (``audit_index_upgrade``).
``consentry_audit_terms``
    the elements of the "contains" fields, one row each (``field``, ``term``, the row's
    ``recorded_us`` and ``idx``), indexed in that order: a query seeks to a term and a time
    range (a common purpose over one month reads that month's postings, not all of them). A
    purpose is filed by its bare code; a ``system|code`` search also checks the row's JSON.
    A reference equal to the row's own ``patient`` is not filed: an entity search matches
    ``patient = ? OR`` its postings (``audit_index_query``), so it finds the row through the
    patient index (a read of the patient's own resource saves a posting on a random page).
    Databases written before hold such postings too; they match nothing more.
``consentry_audit_keys``
    the evidence keys, wrapped, one per pseudonym: kept apart from the evidence and from the
    index, so deleting one row is the crypto-shred.
``consentry_audit_shredded``
    the tombstones: pseudonyms a shred recorded, each with the shred's ``link`` (the
    caller's keyed digest of the patient, for the accounting). An append writes their rows
    shredded and
    ``audit_key`` stores no key for them (:func:`tombstoned`, :func:`store_key`).

A full rebuild (``clear_index`` then ``reindex`` in chunks) drops the four secondary indexes
and builds them once at the end (:func:`build_indexes`, sorting), which cost about half as
much as inserting into them row by row (measured with five); the store builds them before its
next search, shred or close, and every store's open builds any that are missing. Meanwhile
the index stays correct, only unindexed.

A shred runs with ``PRAGMA secure_delete`` on (freed cells are overwritten with zeros, so the
wrapped key does not linger in free pages) and then truncates the WAL, which still holds the
pages written before (best effort: a reader still in the WAL delays it).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence

import msgspec

from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage.audit_index_match import disagreeing as match_disagreeing
from middleware.storage.audit_index_match import purpose_code
from middleware.storage.audit_index_match import tombstoned as match_tombstoned
from middleware.storage.audit_index_query import (
    TERM_ENTITY,
    TERM_PURPOSE_CODE,
    TERM_RESOURCE_TYPE,
    count_sql,
    json_array,
    json_array_cached,
    select_sql,
)
from middleware.storage.audit_index_unchanged import unchanged

__all__ = [
    "COLUMNS",
    "DROPPED",
    "INDEX_SCHEMA",
    "ROW_COLUMNS_DDL",
    "build_indexes",
    "clear_index",
    "count_rows",
    "decode_row",
    "disagreeing",
    "get_key",
    "leaf_pseudonyms",
    "read_row",
    "read_rows",
    "secure_transaction",
    "shred",
    "shred_entries",
    "shredded_chains",
    "store_key",
    "tombstoned",
    "write_rows",
]

#: The index's columns, in :class:`~middleware.audit.row.AuditRow`'s field order.
COLUMNS = (
    "idx, recorded_us, kind, flags, patient, pseudonym, agent, roles, organization, client, "
    "purposes, action, event_type, subtype, outcome, resource_types, entities, break_glass, "
    "request_id, shredded"
)
#: The columns of an index row as ``consentry_audit_index`` declares them.
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

#: The secondary indexes, by name (dropped for a bulk rebuild, then built again).
_SECONDARY = {
    "consentry_audit_index_time": "consentry_audit_index (recorded_us)",
    "consentry_audit_index_patient": "consentry_audit_index (patient, recorded_us)",
    "consentry_audit_index_agent": "consentry_audit_index (agent, recorded_us)",
    "consentry_audit_terms_lookup": "consentry_audit_terms (field, term, recorded_us, idx)",
}
_INDEXES = "\n".join(f"CREATE INDEX IF NOT EXISTS {n} ON {on};" for n, on in _SECONDARY.items())
#: The ``(pseudonym, recorded_us)`` index earlier versions kept (module docstring): dropped by
#: a writer's open once every row agrees with its leaf (``audit_index_upgrade``), never built
#: again.
DROPPED = "consentry_audit_index_pseudonym"

INDEX_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS consentry_audit_index ({ROW_COLUMNS_DDL});
CREATE TABLE IF NOT EXISTS consentry_audit_terms (
    field INTEGER NOT NULL,
    term TEXT NOT NULL,
    recorded_us INTEGER NOT NULL,
    idx INTEGER NOT NULL
);
{_INDEXES}
CREATE TABLE IF NOT EXISTS consentry_audit_keys (
    pseudonym BLOB PRIMARY KEY CHECK (length(pseudonym) = 16),
    wrapped BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consentry_audit_shredded (
    pseudonym BLOB PRIMARY KEY CHECK (length(pseudonym) = 16),
    link BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS consentry_audit_shredded_link ON consentry_audit_shredded (link);
"""

_COLUMNS = COLUMNS
_INSERT = (
    f"INSERT INTO consentry_audit_index ({_COLUMNS}) "  # noqa: S608  (constants)
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: A plain ``INSERT`` costs 12-15% less than ``INSERT OR REPLACE`` for a new row (batches of
#: 16, 20,000 rows indexed, interleaved: 13.1-21.4 against 15.5-24.0 us a row), so an
#: append's rows, known to be new, take :data:`_INSERT`; a rewrite replaces.
_UPSERT = _INSERT.replace("INSERT INTO", "INSERT OR REPLACE INTO", 1)


def _terms_of(entities: str) -> str:
    """Every term of the rows whose indexes are in the JSON array ``?1``, read from the rows
    themselves (references also meeting the SQL condition ``entities``): SQLite expands the
    JSON arrays (``json_each``) in C, which costs a fraction of binding one term row at a
    time from Python. A purpose's code is what follows its first ``|`` (a system URI cannot
    hold an unencoded ``|``; RFC 3986 section 2), as in
    :func:`~middleware.storage.audit_index_match.purpose_code`."""
    return f"""
SELECT {TERM_PURPOSE_CODE}, substr(j.value, instr(j.value, '|') + 1), i.recorded_us, i.idx
    FROM consentry_audit_index i, json_each(i.purposes) j
    WHERE i.idx IN (SELECT value FROM json_each(?1))
UNION ALL
SELECT {TERM_RESOURCE_TYPE}, j.value, i.recorded_us, i.idx
    FROM consentry_audit_index i, json_each(i.resource_types) j
    WHERE i.idx IN (SELECT value FROM json_each(?1))
UNION ALL
SELECT {TERM_ENTITY}, j.value, i.recorded_us, i.idx
    FROM consentry_audit_index i, json_each(i.entities) j
    WHERE i.idx IN (SELECT value FROM json_each(?1)){entities}
"""  # noqa: S608  (constants only)


_TERMS_OF = _terms_of("")
#: The terms filed (module docstring): :data:`_TERMS_OF` but a reference equal to the row's
#: patient. Removal (:data:`_DROP_TERMS`) reads every term: a row an earlier version wrote
#: has that posting too, and a stale one would match a search for it.
_FILED_TERMS = _terms_of(" AND j.value IS NOT i.patient")
_ADD_TERMS = f"INSERT INTO consentry_audit_terms (field, term, recorded_us, idx) {_FILED_TERMS}"
_TERM = "INSERT INTO consentry_audit_terms (field, term, recorded_us, idx) VALUES (?, ?, ?, ?)"
#: Up to this many rows (an append's batch: the writer's are at most 256), terms are bound
#: from Python: ``json_each`` costs a fixed ~0.1 ms a statement, which only a rebuild's
#: chunks amortise (measured per appended entry, batches of 16: 7 us against 14 us).
_SMALL = 256
_STORED = (
    f"SELECT {_COLUMNS} FROM consentry_audit_index "  # noqa: S608  (constants only)
    "WHERE idx IN (SELECT value FROM json_each(?))"
)
_DROP_TERMS = (
    f"DELETE FROM consentry_audit_terms WHERE (field, term, recorded_us, idx) IN ({_TERMS_OF})"  # noqa: S608
)

_decode = json.JSONDecoder().decode
_decode_fast = msgspec.json.Decoder().decode
#: Pseudonyms per tombstone probe (well under SQLite's bound-parameter limit).
_PROBE = 500


def _values(row: AuditRow) -> tuple[object, ...]:
    return (
        row.index,
        row.recorded_us,
        row.kind,
        row.flags,
        row.patient,
        row.pseudonym,
        row.agent,
        json_array_cached(row.roles),
        row.organization,
        row.client,
        json_array_cached(row.purposes),
        row.action,
        row.event_type,
        row.subtype,
        row.outcome,
        json_array_cached(row.resource_types),
        json_array(row.entities),
        int(row.break_glass),
        row.request_id,
        int(row.shredded),
    )


#: Decoded JSON arrays of the columns whose values repeat from row to row (roles, purposes,
#: resource types), as ``json_array_cached`` remembers them on the way in: decoding them
#: was about a third of reading a row (an export reads every row of its report).
_ARRAYS: dict[object, tuple[str, ...]] = {}
_ARRAYS_MAX = 4096


def _strings(value: object) -> tuple[str, ...]:
    """The JSON array ``value`` as a tuple, as ``json`` decodes it. msgspec decodes it in a
    tenth of the time (an index read decodes every row's entities); what msgspec refuses
    (a lone surrogate escape, a number out of range, anything malformed) goes to ``json``,
    which returns or raises what it always did (a property test compares them)."""
    text = str(value)
    try:
        return tuple(_decode_fast(text))
    except msgspec.MsgspecError:
        return tuple(_decode(text))


def _strings_cached(value: object) -> tuple[str, ...]:
    found = _ARRAYS.get(value)
    if found is None:
        if len(_ARRAYS) >= _ARRAYS_MAX:
            _ARRAYS.clear()
        found = _ARRAYS[value] = _strings(value)
    return found


def _row(v: Sequence[object]) -> AuditRow:
    """The row of a ``SELECT`` of :data:`_COLUMNS` (positional: the columns are AuditRow's
    fields in order, which a test checks; keywords cost a fifth of building the row)."""
    strings = _strings_cached
    return AuditRow(
        int(v[0]),  # type: ignore[call-overload]
        int(v[1]),  # type: ignore[call-overload]
        int(v[2]),  # type: ignore[call-overload]
        int(v[3]),  # type: ignore[call-overload]
        v[4],  # type: ignore[arg-type]
        v[5],  # type: ignore[arg-type]
        v[6],  # type: ignore[arg-type]
        strings(v[7]),
        v[8],  # type: ignore[arg-type]
        v[9],  # type: ignore[arg-type]
        strings(v[10]),
        str(v[11]),
        str(v[12]),
        v[13],  # type: ignore[arg-type]
        str(v[14]),
        strings(v[15]),
        _strings(v[16]),
        bool(v[17]),
        str(v[18]),
        bool(v[19]),
    )


#: :func:`_row`, for the upgrade of rows an earlier version staged (``audit_index_staged``).
decode_row = _row


def write_rows(c: sqlite3.Connection, rows: Sequence[AuditRow], *, fresh: bool = False) -> None:
    """Upsert ``rows`` by index, terms included, inside the caller's transaction. A row
    already stored exactly so is left alone: rebuilding an index that is right rewrites
    nothing (replacing a row and its terms costs about four times writing a new one).
    ``fresh``: the caller knows no row of these indexes is stored (an append writing the rows
    of entries it has just sequenced past the log's size, under the write lock), so the read
    of the stored rows is skipped: it is on the path of every audited request. A stored row
    at such an index (an index that disagrees with its log) then fails the insert
    (``sqlite3.IntegrityError``: the append is rolled back, nothing is replaced unseen)."""
    if not rows:
        return
    if fresh:
        c.executemany(_INSERT, [_values(r) for r in rows])
        c.executemany(_TERM, _term_rows(rows))
        return
    given = {r.index: r for r in rows}  # one row per index: the last given
    # Most rows of a rebuild are stored exactly so: SQLite compares them, the rest are read.
    same, present = unchanged(c, given, json.dumps(list(given)))
    differing = [i for i in present if i not in same]
    stored = {v[0]: _row(v) for v in c.execute(_STORED, (json.dumps(differing),))}
    changed = [r for i, r in given.items() if i not in same and stored.get(i) != r]
    if not changed:
        return
    replaced = [r.index for r in changed if r.index in stored]
    if replaced:  # their old terms go first (read from the old rows)
        c.execute(_DROP_TERMS, (json.dumps(replaced),))
    c.executemany(_UPSERT, [_values(r) for r in changed])
    if len(changed) > _SMALL:
        c.execute(_ADD_TERMS, (json.dumps([r.index for r in changed]),))
    else:
        c.executemany(_TERM, _term_rows(changed))


def _term_rows(rows: Sequence[AuditRow]) -> list[tuple[int, str, int, int]]:
    """The terms of ``rows`` built here, as :data:`_FILED_TERMS` selects them."""
    out: list[tuple[int, str, int, int]] = []
    for r in rows:
        at, index, patient = r.recorded_us, r.index, r.patient
        out += [(TERM_PURPOSE_CODE, purpose_code(p), at, index) for p in r.purposes]
        out += [(TERM_RESOURCE_TYPE, t, at, index) for t in r.resource_types]
        out += [(TERM_ENTITY, e, at, index) for e in r.entities if e != patient]
    return out


def read_rows(c: sqlite3.Connection, q: AuditQuery) -> list[AuditRow]:
    sql, args = select_sql(q, "sqlite", _COLUMNS)
    return [_row(v) for v in c.execute(sql, args)]


def count_rows(c: sqlite3.Connection, q: AuditQuery) -> int:
    sql, args = count_sql(q, "sqlite")
    return int(c.execute(sql, args).fetchone()[0])


_READ_ROW = f"SELECT {_COLUMNS} FROM consentry_audit_index WHERE idx = ?1"  # noqa: S608
#: A pseudonym's unshredded rows, found through the leaves' index of chains (module docstring).
_CHAIN_ROWS = (
    f"SELECT {_COLUMNS} FROM consentry_audit_index "  # noqa: S608  (constants only)
    "WHERE idx IN (SELECT idx FROM consentry_ledger_leaves WHERE pseudonym = ?1) "
    "AND pseudonym = ?1 AND shredded = 0"
)
_LEAF_PSEUDONYMS = (
    "SELECT idx, pseudonym FROM consentry_ledger_leaves "
    "WHERE idx IN (SELECT value FROM json_each(?))"
)


def leaf_pseudonyms(c: sqlite3.Connection, rows: Sequence[AuditRow]) -> dict[int, bytes | None]:
    """The pseudonym of each stored leaf of ``rows`` by ledger index (``None`` for a leaf
    without one; a missing leaf is absent). One indexed read."""
    wanted = json.dumps(sorted({r.index for r in rows}))
    found = c.execute(_LEAF_PSEUDONYMS, (wanted,))
    return {i: None if p is None else bytes(p) for i, p in found}


def disagreeing(c: sqlite3.Connection, rows: Sequence[AuditRow]) -> list[int]:
    """The indexes of ``rows`` whose leaf is missing or names another pseudonym (or none
    where the row names one), ascending; empty when every row states its leaf's pseudonym,
    which a search by pseudonym relies on (module docstring). One indexed read."""
    return match_disagreeing(rows, leaf_pseudonyms(c, rows))


def read_row(c: sqlite3.Connection, index: int) -> AuditRow | None:
    found = c.execute(_READ_ROW, (index,)).fetchone()
    return None if found is None else _row(found)


def _is_shredded(c: sqlite3.Connection, pseudonym: bytes) -> bool:
    sql = "SELECT 1 FROM consentry_audit_shredded WHERE pseudonym = ?"
    return c.execute(sql, (pseudonym,)).fetchone() is not None


def tombstoned(c: sqlite3.Connection, rows: Sequence[AuditRow]) -> list[AuditRow]:
    """``rows`` with those of shredded pseudonyms in their shredded form (an append's rows,
    inside its transaction): one statement probes the tombstones' primary key for every
    distinct pseudonym, about 1.2 us an entry in a batch of 16 patients (2.8 us with a probe
    per pseudonym)."""
    named = list({r.pseudonym for r in rows if r.pseudonym is not None and not r.shredded})
    found: set[bytes] = set()
    for start in range(0, len(named), _PROBE):  # one statement per chunk of pseudonyms
        chunk = named[start : start + _PROBE]
        sql = (
            "SELECT pseudonym FROM consentry_audit_shredded "  # noqa: S608  (placeholders)
            f"WHERE pseudonym IN ({', '.join('?' * len(chunk))})"
        )
        found.update(bytes(v[0]) for v in c.execute(sql, chunk))
    return match_tombstoned(rows, found)


def store_key(c: sqlite3.Connection, pseudonym: bytes, candidate: bytes) -> bytes:
    """The pseudonym's stored key, storing ``candidate`` first if there is none; for a
    shredded pseudonym nothing is stored and ``candidate`` is returned (a throwaway). Run
    under ``BEGIN IMMEDIATE`` (the file's write lock): atomic across processes."""
    if _is_shredded(c, pseudonym):
        return candidate
    c.execute(
        "INSERT INTO consentry_audit_keys (pseudonym, wrapped) VALUES (?, ?) "
        "ON CONFLICT (pseudonym) DO NOTHING",
        (pseudonym, candidate),
    )
    return get_key(c, pseudonym) or candidate


def get_key(c: sqlite3.Connection, pseudonym: bytes) -> bytes | None:
    sql = "SELECT wrapped FROM consentry_audit_keys WHERE pseudonym = ?"
    found = c.execute(sql, (pseudonym,)).fetchone()
    return None if found is None else bytes(found[0])


def shredded_chains(c: sqlite3.Connection, link: bytes) -> list[bytes]:
    sql = "SELECT pseudonym FROM consentry_audit_shredded WHERE link = ?"
    return [bytes(v[0]) for v in c.execute(sql, (link,))]


def shred(c: sqlite3.Connection, pseudonym: bytes, link: bytes | None = None) -> int:
    """Delete the pseudonym's key and replace its unshredded rows by their shredded form, in
    one transaction with ``secure_delete`` on; then truncate the WAL. Returns rows shredded.
    Runs on the worker thread outside any transaction (it brackets its own)."""
    with secure_transaction(c):
        c.execute("DELETE FROM consentry_audit_keys WHERE pseudonym = ?", (pseudonym,))
        c.execute(
            "INSERT INTO consentry_audit_shredded (pseudonym, link) VALUES (?, ?) "
            "ON CONFLICT (pseudonym) DO UPDATE SET link = coalesce(link, excluded.link)",
            (pseudonym, link),
        )
        rows = [_row(v).shred() for v in c.execute(_CHAIN_ROWS, (pseudonym,)).fetchall()]
        write_rows(c, rows)
    return len(rows)


def shred_entries(c: sqlite3.Connection, indexes: Sequence[int]) -> int:
    """Delete the evidence of ``indexes`` and shred their index rows, in one transaction with
    ``secure_delete`` on; then truncate the WAL. Returns how many evidence rows were deleted.
    Runs on the worker thread outside any transaction (it brackets its own)."""
    wanted = json.dumps(list(indexes))
    with secure_transaction(c):
        removed = c.execute(
            "DELETE FROM consentry_ledger_evidence WHERE idx IN (SELECT value FROM json_each(?))",
            (wanted,),
        ).rowcount
        sql = f"{_STORED} AND shredded = 0"
        write_rows(c, [_row(v).shred() for v in c.execute(sql, (wanted,)).fetchall()])
    return int(removed)


@contextlib.contextmanager
def secure_transaction(c: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction with ``secure_delete`` on (module docstring):
    committed when the block ends, rolled back when it raises; after a commit the WAL is
    truncated. For the worker thread outside any transaction (a shred, and the upgrades a
    writer's open runs: ``audit_index_upgrade``, ``audit_index_staged``)."""
    c.execute("PRAGMA secure_delete = ON")
    try:
        c.execute("BEGIN IMMEDIATE")
        try:
            yield
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
    finally:
        c.execute("PRAGMA secure_delete = OFF")
    _truncate_wal(c)


def _truncate_wal(c: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.OperationalError):  # committed; the truncate is a bonus
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def clear_index(c: sqlite3.Connection) -> None:
    """Empty the index and its terms and drop their secondary indexes, for a bulk rebuild
    (:func:`build_indexes` restores them). The keys stay: they are not derived data."""
    c.execute("DELETE FROM consentry_audit_terms")
    c.execute("DELETE FROM consentry_audit_index")
    for name in _SECONDARY:
        c.execute(f"DROP INDEX IF EXISTS {name}")


def build_indexes(c: sqlite3.Connection) -> None:
    """Create the secondary indexes that are missing (after :func:`clear_index`)."""
    for statement in _INDEXES.splitlines():
        c.execute(statement)
