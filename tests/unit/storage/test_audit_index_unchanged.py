"""``write_rows``' unchanged-row check (``audit_index_unchanged``) against what it replaced:
reading every stored row back into an ``AuditRow`` and comparing.

The fast path may only say "the same" when the stored row reads as the given row; it should
say so for every row ``write_rows`` itself stored; and an upsert through it leaves the tables
exactly as the old upsert did, writing exactly as much (nothing for rows already right).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from middleware.audit.row import ROW_FIELDS, AuditRow
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_unchanged import rendered, unchanged
from middleware.storage.ledger_sqlite_schema import SCHEMA

_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
_SOME = st.sampled_from(["a", "Patient/1", "é", 'q"', "b\\", "\n", ""])
_WORD = _TEXT | _SOME
_WORDS = st.lists(_WORD, max_size=3).map(tuple)
_ROW = st.builds(
    AuditRow,
    index=st.integers(0, 30),
    recorded_us=st.integers(0, 2**62),
    kind=st.integers(1, 7),
    flags=st.integers(0, 7),
    patient=st.none() | _WORD,
    pseudonym=st.none() | st.binary(min_size=16, max_size=16) | st.just(b"\x01" * 16),
    agent=st.none() | _WORD,
    roles=_WORDS,
    organization=st.none() | _WORD,
    client=st.none() | _WORD,
    purposes=_WORDS,
    action=_WORD,
    event_type=_WORD,
    subtype=st.none() | _WORD,
    outcome=_WORD,
    resource_types=_WORDS,
    entities=_WORDS,
    break_glass=st.booleans(),
    request_id=_WORD,
    shredded=st.booleans(),
)
_ROWS = st.lists(_ROW, max_size=12)


def _db() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.executescript(SCHEMA)
    return c


def _mutated(row: AuditRow, data: st.DataObject) -> AuditRow:
    """``row``, or a copy with one field drawn anew (often, but not always, different)."""
    field = data.draw(st.sampled_from([None, *ROW_FIELDS[1:]]))
    if field is None:
        return row
    return replace(row, **{field: getattr(data.draw(_ROW), field)})


def _tables(c: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    rows = c.execute(f"SELECT {lite._COLUMNS} FROM consentry_audit_index ORDER BY idx")
    terms = c.execute("SELECT * FROM consentry_audit_terms ORDER BY 1, 2, 3, 4")
    return rows.fetchall(), terms.fetchall()


def _old_write_rows(c: sqlite3.Connection, rows: Sequence[AuditRow]) -> None:
    """``write_rows`` before the fast path (the reference): every stored row read back."""
    given = {r.index: r for r in rows}
    stored = {v[0]: lite._row(v) for v in c.execute(lite._STORED, (json.dumps(list(given)),))}
    changed = [r for i, r in given.items() if stored.get(i) != r]
    if not changed:
        return
    replaced = [r.index for r in changed if r.index in stored]
    if replaced:
        c.execute(lite._DROP_TERMS, (json.dumps(replaced),))
    c.executemany(lite._UPSERT, [lite._values(r) for r in changed])
    if len(changed) > lite._SMALL:
        c.execute(lite._ADD_TERMS, (json.dumps([r.index for r in changed]),))
    else:
        c.executemany(lite._TERM, lite._term_rows(changed))


@settings(max_examples=200)
@given(_ROW)
def test_rendered_is_the_stored_values_with_the_pseudonym_null(row: AuditRow) -> None:
    """The spelled-out rendering is ``_values`` (what ``write_rows`` binds), pseudonym null."""
    values = list(lite._values(row))
    values[5] = None
    assert rendered(row) == msgspec.json.encode(values)


@settings(max_examples=200, deadline=None)
@given(rows=_ROWS)
def test_every_row_write_rows_stored_is_known_the_same(rows: list[AuditRow]) -> None:
    """Property: SQLite renders a row ``write_rows`` stored as Python renders the row (else
    the fast path would only cost, never save)."""
    c = _db()
    last = {r.index: r for r in rows}
    lite.write_rows(c, list(last.values()), fresh=True)
    indexes = json.dumps(list(last))
    assert unchanged(c, last, indexes) == (set(last), set(last))


@settings(max_examples=150, deadline=None)
@given(stored=_ROWS, data=st.data())
def test_the_same_only_when_the_stored_row_reads_as_the_given_one(
    stored: list[AuditRow], data: st.DataObject
) -> None:
    """Property (the fast path's safety): every index it calls the same reads back as the
    given row; ``stored`` names exactly the given indexes that have a row."""
    c = _db()
    kept = {r.index: r for r in stored}
    lite.write_rows(c, list(kept.values()), fresh=True)
    given_rows = [_mutated(r, data) for r in data.draw(_ROWS)] + [
        _mutated(r, data) for r in kept.values()
    ]
    wanted = {r.index: r for r in given_rows}
    same, present = unchanged(c, wanted, json.dumps(list(wanted)))
    assert present == set(wanted) & set(kept)
    for index in same:
        assert lite.read_row(c, index) == wanted[index]


@settings(max_examples=150, deadline=None)
@given(stored=_ROWS, data=st.data())
def test_write_rows_leaves_what_the_old_upsert_left(
    stored: list[AuditRow], data: st.DataObject
) -> None:
    """Property (equivalence with the old upsert): same rows, same postings, and as many
    changes (none for a batch that is all right)."""
    given_rows = [_mutated(r, data) for r in data.draw(_ROWS)] + [_mutated(r, data) for r in stored]
    new, old = _db(), _db()
    for c in (new, old):
        lite.write_rows(c, list({r.index: r for r in stored}.values()), fresh=True)
    before = (new.total_changes, old.total_changes)
    lite.write_rows(new, given_rows)
    _old_write_rows(old, given_rows)
    assert _tables(new) == _tables(old)
    assert new.total_changes - before[0] == old.total_changes - before[1]


def _plain(index: int) -> AuditRow:
    return AuditRow(
        index=index, recorded_us=7, kind=3, flags=1, patient="Patient/1", pseudonym=None,
        agent=None, roles=("médecin",), organization=None, client=None, purposes=(),
        action="R", event_type="rest", subtype="read", outcome="0", resource_types=(),
        entities=(), break_glass=False, request_id="r",
    )  # fmt: skip


def test_a_blob_where_text_belongs_is_compared_in_full_and_replaced() -> None:
    """SQLite's JSON cannot hold a blob: every given index is then read and compared as
    before, and the stored row is replaced by the given one."""
    c = _db()
    row = _plain(1)
    lite.write_rows(c, [row], fresh=True)
    c.execute("UPDATE consentry_audit_index SET patient = ? WHERE idx = 1", (b"Patient/1",))
    assert unchanged(c, {1: row}, "[1]") == (set(), {1})
    lite.write_rows(c, [row])
    assert lite.read_row(c, 1) == row


@pytest.mark.parametrize(
    "blob",
    [b"Patient/1", b"\x97Patient/1"],  # the second reads as JSONB text "Patient/1" (3.45+)
    ids=["plain", "jsonb-like"],
)
@pytest.mark.parametrize("typed", [True, False], ids=["typed", "plain"])
def test_a_blob_in_a_text_column_is_never_the_same(blob: bytes, typed: bool) -> None:
    """Whatever this SQLite's ``json_array`` makes of a blob (an error before 3.45, the JSON
    a JSONB-like blob encodes from 3.45), the row with it is never "the same": it is read in
    full and replaced. The typed rendering (SQLite 3.45+) excludes it by its type and still
    recognises the batch's other rows; the plain one (older SQLite) reads the whole batch."""
    c = _db()
    rows = [_plain(1), _plain(2)]
    lite.write_rows(c, rows, fresh=True)
    c.execute("UPDATE consentry_audit_index SET patient = ? WHERE idx = 1", (blob,))
    same, stored = unchanged(c, {1: rows[0], 2: rows[1]}, "[1, 2]", typed=typed)
    assert 1 not in same
    assert stored == {1, 2}
    if typed:
        assert same == {2}
    lite.write_rows(c, rows)
    assert lite.read_row(c, 1) == rows[0]


def test_an_equal_row_stored_with_other_escapes_is_not_rewritten() -> None:
    """A row an older encoder stored (ASCII escapes) renders otherwise but reads as the
    given row: not the same bytes, so it is read, found equal and left alone."""
    c = _db()
    row = _plain(1)
    lite.write_rows(c, [row], fresh=True)
    c.execute("UPDATE consentry_audit_index SET roles = ? WHERE idx = 1", (json.dumps(row.roles),))
    assert unchanged(c, {1: row}, "[1]") == (set(), {1})
    changes = c.total_changes
    lite.write_rows(c, [row])
    assert c.total_changes == changes
