"""SQLite's searchable terms (``consentry_audit_terms``): which postings a row files.

A reference equal to the row's own patient is not filed (an entity search reads the patient
column for it); the postings built in Python for an append and those SQL expands for a rebuild
are the same; and a row replaced on a database an earlier version wrote (which filed that
posting) leaves no stale posting behind.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_query import TERM_ENTITY
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.storage.ledger_sqlite_schema import SCHEMA
from tests.contract.helpers import PSEUDONYMS
from tests.contract.test_audit_index import with_leaves

REFS = ["Patient/1", "Patient/2", "Observation/1", "Condition/3"]


def _row(index: int, patient: str | None, entities: tuple[str, ...]) -> AuditRow:
    return AuditRow(
        index=index,
        recorded_us=100 * index,
        kind=3,
        flags=1,
        patient=patient,
        pseudonym=PSEUDONYMS[0],
        agent="Practitioner/a",
        roles=("doctor",),
        organization=None,
        client="app",
        purposes=("urn:a|TREAT", "urn:b|TREAT", "ETREAT"),
        action="R",
        event_type="rest",
        subtype="read",
        outcome="0",
        resource_types=tuple(sorted({e.partition("/")[0] for e in entities})),
        entities=entities,
        break_glass=False,
        request_id=f"r{index}",
    )


_ROWS = st.lists(
    st.tuples(
        st.sampled_from([None, "Patient/1", "Patient/2"]),
        st.lists(st.sampled_from(REFS), unique=True, max_size=4).map(tuple),
    ),
    max_size=12,
).map(lambda specs: [_row(n, p, e) for n, (p, e) in enumerate(specs)])


def _memory() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.executescript(SCHEMA)
    return c


def _postings(c: sqlite3.Connection) -> list[tuple[int, str, int, int]]:
    return sorted(c.execute("SELECT field, term, recorded_us, idx FROM consentry_audit_terms"))


@settings(max_examples=200, deadline=None)
@given(rows=_ROWS)
def test_python_and_sql_file_the_same_postings(rows: list[AuditRow]) -> None:
    """Property: an append's postings (bound from Python) are those a rebuild expands in SQL,
    and no entity posting repeats the row's patient."""
    c = _memory()
    c.executemany(lite._UPSERT, [lite._values(r) for r in rows])
    c.execute(lite._ADD_TERMS, (json.dumps([r.index for r in rows]),))
    by_sql = _postings(c)
    assert by_sql == sorted(lite._term_rows(rows))
    patients = {r.index: r.patient for r in rows}
    assert not [t for t in by_sql if t[0] == TERM_ENTITY and t[1] == patients[t[3]]]


async def test_a_row_found_by_its_patient_reference_files_no_posting_for_it(
    tmp_path: Path,
) -> None:
    store = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        row = _row(0, "Patient/1", ("Patient/1", "Observation/1"))
        await with_leaves(store, [row])
        await store.reindex([row])
        assert await store.audit_rows(AuditQuery(entity="Patient/1")) == [row]
        assert await store.audit_rows(AuditQuery(entity="Observation/1")) == [row]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "log.db") as c:
        entities = [t for t in _postings(c) if t[0] == TERM_ENTITY]
    assert entities == [(TERM_ENTITY, "Observation/1", 0, 0)]


async def test_replacing_a_row_an_earlier_version_wrote_drops_its_patient_posting(
    tmp_path: Path,
) -> None:
    """The earlier version filed ``Patient/1`` for a row of Patient/1; the row is rewritten
    as Patient/2's (a reindex after a correction): a search for Patient/1 finds nothing."""
    store = await SqliteLogStore.open(tmp_path / "log.db")
    try:
        old = _row(0, "Patient/1", ("Patient/1",))
        await with_leaves(store, [old])
        await store.reindex([old])
        with sqlite3.connect(tmp_path / "log.db") as c:  # the earlier version's posting
            c.execute(lite._TERM, (TERM_ENTITY, "Patient/1", 0, 0))
        assert await store.audit_rows(AuditQuery(entity="Patient/1")) == [old]
        new = replace(old, patient="Patient/2", entities=("Patient/2",))
        await store.reindex([new])
        assert await store.audit_rows(AuditQuery(entity="Patient/1")) == []
        assert await store.audit_rows(AuditQuery(entity="Patient/2")) == [new]
    finally:
        await store.close()
