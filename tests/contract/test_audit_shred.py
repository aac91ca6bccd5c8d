"""The shred's tombstone and retention's ``shred_entries`` (``LogStore`` contract), on memory,
SQLite and PostgreSQL: after ``shred(pseudonym)`` no append writes that pseudonym's PHI into
the index and ``audit_key`` stores no key for it, whichever store object (process) appends;
``shred_entries`` removes evidence and shreds rows while the log still verifies; the
``pseudonym`` criterion finds a chain's rows, shredded ones included on request.

Expected answers are the rows of ``test_audit_index.SPECS`` worked out by hand (patient 1 is
pseudonym ``PA``: entries 0, 1 and 4)."""

from __future__ import annotations

import pytest

from middleware.audit.row import AuditQuery
from middleware.storage.ledger_base import LogStore
from tests.contract.backends import Backend
from tests.contract.helpers import PSEUDONYMS, SIGN, assert_consistent
from tests.contract.test_audit_index import EXPECTED, PA, PB, ROWS, _filled, _indexes, audit_entry

# --- the tombstone ---------------------------------------------------------------------------


async def test_an_append_after_a_shred_writes_the_pseudonyms_row_shredded(
    backend: Backend,
) -> None:
    """A second store object (another gateway process, whose caches still hold the
    pseudonym) appends a full row of the shredded patient: the index gets ``row.shred()``;
    another patient's row in the same batch stays whole."""
    shredder, gateway = await backend.open(), await backend.open()
    try:
        await _filled(shredder)
        await shredder.shred(PA)
        (late, other) = await gateway.append(
            [audit_entry(ROWS[4]), audit_entry(ROWS[5])], sign=SIGN
        )
        stored = await gateway.audit_row(late.index)
        assert stored == ROWS[4].at(late.index).shred()
        assert stored is not None
        assert "Patient/1" not in repr(stored)
        assert await gateway.audit_row(other.index) == ROWS[5].at(other.index)
        assert await _indexes(gateway, AuditQuery(patient="Patient/1")) == []
        await assert_consistent(gateway)
    finally:
        await shredder.close()
        await gateway.close()


async def test_a_shredded_pseudonym_never_gets_a_key_again(backend: Backend) -> None:
    """``audit_key`` after a shred stores nothing and hands back the candidate (a throwaway:
    each call its own), from any store object; other pseudonyms are unaffected."""
    shredder, gateway = await backend.open(), await backend.open()
    try:
        await shredder.audit_key(PA, b"key-a")
        await shredder.shred(PA)
        assert await gateway.audit_key(PA, b"fresh-1") == b"fresh-1"
        assert await gateway.audit_key(PA, b"fresh-2") == b"fresh-2"
        assert await gateway.audit_key_get(PA) is None
        assert await shredder.audit_key_get(PA) is None
        assert await gateway.audit_key(PB, b"key-b") == b"key-b"
        assert await gateway.audit_key(PB, b"other") == b"key-b"
    finally:
        await shredder.close()
        await gateway.close()


async def test_the_tombstone_outlives_a_rebuild_of_the_index(store: LogStore) -> None:
    """``clear_index`` empties derived data only: the tombstone (like the keys) stays."""
    await store.shred(PA)
    await store.clear_index()
    (result,) = await store.append([audit_entry(ROWS[0])], sign=SIGN)
    assert await store.audit_row(result.index) == ROWS[0].at(result.index).shred()
    assert await store.audit_key(PA, b"k") == b"k"
    assert await store.audit_key_get(PA) is None


# --- the pseudonym criterion -----------------------------------------------------------------

Q = AuditQuery
PSEUDONYM_QUERIES = [
    ("chain", False, Q(pseudonym=PA), [0, 1, 4]),
    ("other-chain", False, Q(pseudonym=PB), [2, 5]),
    ("unknown", False, Q(pseudonym=PSEUDONYMS[3]), []),
    ("with-time", False, Q(pseudonym=PA, since_us=150), [1, 4]),
    ("shredded-hidden", True, Q(pseudonym=PA), []),
    ("shredded-included", True, Q(pseudonym=PA, include_shredded=True), [0, 1, 4]),
    ("shredded-kind", True, Q(pseudonym=PA, include_shredded=True, kinds=frozenset({4})), []),
    ("shredded-phi-criterion", True, Q(pseudonym=PA, include_shredded=True, agent="x"), []),
    ("shredded-others-whole", True, Q(pseudonym=PB), [2, 5]),
]


@pytest.mark.parametrize(
    ("shred", "query", "expected"),
    [q[1:] for q in PSEUDONYM_QUERIES],
    ids=[q[0] for q in PSEUDONYM_QUERIES],
)
async def test_the_pseudonym_criterion_selects_one_chain(
    store: LogStore, shred: bool, query: AuditQuery, expected: list[int]
) -> None:
    await _filled(store)
    if shred:
        await store.shred(PA)
    assert await _indexes(store, query) == expected
    assert await store.audit_count(query) == len(expected)


# --- retention: shred_entries ----------------------------------------------------------------


async def test_shred_entries_removes_evidence_and_shreds_rows_and_the_log_verifies(
    store: LogStore,
) -> None:
    await _filled(store)
    leaves = await store.leaves(0, 6)
    assert await store.shred_entries([4, 0, 4]) == 2
    assert [await store.evidence(n) is None for n in range(6)] == [
        True, False, False, False, True, False
    ]  # fmt: skip
    assert await store.audit_row(0) == EXPECTED[0].shred()
    assert await store.audit_row(4) == EXPECTED[4].shred()
    assert [await store.audit_row(n) for n in (1, 2, 3, 5)] == [EXPECTED[n] for n in (1, 2, 3, 5)]
    assert await store.leaves(0, 6) == leaves
    await assert_consistent(store)
    assert await store.shred_entries([0, 4, 99]) == 0, "nothing left to remove"


async def test_shred_entries_refuses_a_negative_index(store: LogStore) -> None:
    await _filled(store)
    with pytest.raises(ValueError, match="index"):
        await store.shred_entries([1, -1])
    assert await store.evidence(1) is not None


# --- the link: finding a patient's shredded chains -------------------------------------------


async def test_shredded_chains_are_found_by_the_link_given_to_the_shred(backend: Backend) -> None:
    """Two chains shredded under one link (the same patient shredded twice) and one under
    another are found apart, from another store object; a shred without a link is found by
    none, and a second shred does not lose the first link."""
    first, other = await backend.open(), await backend.open()
    try:
        await first.shred(PA, link=b"patient-1")
        await first.shred(PB, link=b"patient-2")
        await first.shred(PSEUDONYMS[3], link=b"patient-1")
        await first.shred(PSEUDONYMS[4])
        await first.shred(PA)
        assert sorted(await other.shredded_chains(b"patient-1")) == sorted([PA, PSEUDONYMS[3]])
        assert await other.shredded_chains(b"patient-2") == [PB]
        assert await other.shredded_chains(b"nobody") == []
    finally:
        await first.close()
        await other.close()
