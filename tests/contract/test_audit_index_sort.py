"""The audit index's orders other than by date (``AuditQuery.sort``: agent, patient, type,
action, outcome, client, ascending and descending), on memory, SQLite and PostgreSQL alike:
the order of the six rows of :data:`~tests.contract.test_audit_index.SPECS` worked out by hand
(NULL as the empty text, first ascending; ties by ledger index), keyset pages that walk every
row once across ties, outcome compared as a number, text by code point on every backend, and
the SQL backends agreeing with the plain-Python rules on random rows."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import get_args

import pytest

from middleware.audit.paging import after
from middleware.audit.row import AuditQuery, SortKey
from middleware.storage.audit_index_match import select_rows
from middleware.storage.ledger_base import LogStore
from tests.contract.test_audit_index import (
    PA,
    PB,
    SPECS,
    V3,
    _filled,
    _indexes,
    make_row,
    with_leaves,
)

#: Row n of SPECS: agent a b a - a c; patient 1 1 2 - 1 2; client app1 app1 app2 - app2 app1;
#: action R R C E R R; type rest rest rest DCM rest rest; outcome 0 0 4 8 0 0.
ORDERS = {
    "date": [0, 1, 2, 3, 4, 5],
    "agent": [3, 0, 2, 4, 1, 5],
    "patient": [3, 0, 1, 4, 2, 5],
    "type": [3, 0, 1, 2, 4, 5],  # "http://dicom..." < "http://terminology..."
    "action": [2, 3, 0, 1, 4, 5],
    "outcome": [0, 1, 4, 5, 2, 3],
    "client": [3, 0, 1, 5, 2, 4],
}
SORTS: list[SortKey] = list(get_args(SortKey))


def _expected(sort: SortKey) -> list[int]:
    order = ORDERS[sort.lstrip("-")]
    return order[::-1] if sort.startswith("-") else order


def test_every_sort_key_has_a_worked_order() -> None:
    assert {s.lstrip("-") for s in SORTS} == set(ORDERS)


@pytest.mark.parametrize("sort", SORTS)
async def test_rows_come_in_the_order_asked_for(store: LogStore, sort: SortKey) -> None:
    await _filled(store)
    assert await _indexes(store, AuditQuery(sort=sort)) == _expected(sort)


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("size", [1, 2, 4])
async def test_keyset_pages_walk_every_row_once_across_ties(
    store: LogStore, sort: SortKey, size: int
) -> None:
    """Pages of 1 and 2 end inside runs of equal values (three rows of agent a, four of
    action R): the next page starts after (value, index), neither skipping nor repeating."""
    await _filled(store)
    walked: list[int] = []
    query = AuditQuery(sort=sort, limit=size)
    while page := await store.audit_rows(query):
        assert len(page) <= size
        walked += [r.index for r in page]
        query = after(query, page[-1])
    assert walked == _expected(sort)


async def test_a_sort_keeps_the_criteria(store: LogStore) -> None:
    await _filled(store)
    query = AuditQuery(sort="-agent", patient="Patient/1")
    assert await _indexes(store, query) == [1, 4, 0]


async def test_outcome_sorts_as_a_number_and_text_by_code_point(store: LogStore) -> None:
    """ "12" after "8" (not before "4", as text would put it); "Z" before "a" before "é" on
    every backend (a locale collation in PostgreSQL would put "a" first)."""
    base = SPECS[0]
    specs = [
        base._replace(outcome="12", agent="Practitioner/é"),
        base._replace(outcome="4", agent="Practitioner/a"),
        base._replace(outcome="0", agent="Practitioner/Z"),
        base._replace(outcome="8", agent="Practitioner/a"),
    ]
    rows = [make_row(s, index=n) for n, s in enumerate(specs)]
    await with_leaves(store, rows)
    await store.reindex(rows)
    assert await _indexes(store, AuditQuery(sort="outcome")) == [2, 1, 3, 0]
    assert await _indexes(store, AuditQuery(sort="agent")) == [2, 1, 3, 0]
    assert await _indexes(store, AuditQuery(sort="-agent")) == [0, 3, 1, 2]


async def test_sql_backends_agree_with_the_rules_on_every_sort(store: LogStore) -> None:
    """Property (seeded): on 200 random rows, random sorted searches with random keyset
    places answer as :func:`select_rows` (the memory store's rules) does."""
    rng = random.Random(7)
    pick = rng.choice
    rows = []
    for n in range(200):
        patient, pseudonym = pick([("Patient/1", PA), ("Patient/2", PB), (None, None)])
        spec = pick(SPECS)._replace(
            t=rng.randrange(0, 10) * 10,
            patient=patient,
            pseudonym=pseudonym,
            agent=pick(["Practitioner/a", "Practitioner/b", "Z#sub", None]),
            client=pick(["app1", "app2", None]),
            outcome=pick(["0", "4", "8", "12"]),
            action=pick(["C", "R", "E"]),
            purposes=(f"{V3}|TREAT",) if n % 2 else (),
        )
        rows.append(make_row(spec, index=n))
    await with_leaves(store, rows)
    await store.reindex(rows)
    for _ in range(200):
        sort: SortKey = pick(SORTS)
        query = AuditQuery(
            sort=sort,
            since_us=pick([None, 30]),
            patient=pick([None, "Patient/1"]),
            purpose=pick([None, "TREAT"]),
            after=pick([None, (50, 60), (50, 140)]),
            after_value=pick(["", "Practitioner/a", "Patient/1", "app1", "R", "08", "zzz"]),
            limit=pick([3, 50, 300]),
        )
        assert await store.audit_rows(query) == select_rows(rows, query), query
        unpaged = replace(query, after=None, limit=300)
        assert await store.audit_count(query) == len(select_rows(rows, unpaged)), query
