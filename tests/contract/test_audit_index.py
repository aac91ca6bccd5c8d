"""The audit index and evidence-key contract (``LogStore.audit_*``, ``shred``, ``reindex``), run
on memory, SQLite and PostgreSQL alike: rows written with their entries, searches by every
criterion with keyset paging, the key table's race, the crypto-shred, and rebuilding.

The expected answers in the query table are worked out by hand from :data:`SPECS` (the
``AuditQuery`` docstring applied to six rows), not computed by the code under test."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from dataclasses import replace
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace as struct_replace

from middleware.audit.row import NO_INDEX_YET, AuditQuery, AuditRow
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.storage.audit_index_match import select_rows
from middleware.storage.audit_index_query import json_array
from middleware.storage.ledger_base import LogStore
from tests.contract.backends import Backend, SqliteBackend
from tests.contract.helpers import PSEUDONYMS, SIGN, assert_consistent

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type|rest"
DCM = "http://dicom.nema.org/resources/ontology/DCM|110113"
PA, PB = PSEUDONYMS[0], PSEUDONYMS[1]
AD, ADMIN, DISC = EntryKind.ACCESS_DECISION, EntryKind.ADMIN, EntryKind.DISCLOSURE


class Spec(NamedTuple):
    """One test row, before it has an index."""

    t: int
    kind: EntryKind
    patient: str | None
    pseudonym: bytes | None
    agent: str | None
    client: str | None
    purposes: tuple[str, ...]
    action: str
    event_type: str
    subtype: str | None
    outcome: str
    resource_types: tuple[str, ...]
    entities: tuple[str, ...]
    break_glass: bool


#: Row n is ledger entry n.
SPECS = [
    Spec(100, AD, "Patient/1", PA, "Practitioner/a", "app1", (f"{V3}|TREAT",), "R", REST, "read",
         "0", ("Observation",), ("Observation/1",), False),
    Spec(200, AD, "Patient/1", PA, "Practitioner/b", "app1", (f"{V3}|HPAYMT",), "R", REST,
         "search-type", "0", ("Observation", "Condition"), ("Observation/2", "Condition/3"), False),
    Spec(200, AD, "Patient/2", PB, "Practitioner/a", "app2", ("urn:other|TREAT",), "C", REST,
         "create", "4", ("Condition",), ("Condition/9",), True),
    Spec(300, ADMIN, None, None, None, None, (), "E", DCM, None, "8", (), (), False),
    Spec(400, DISC, "Patient/1", PA, "Practitioner/a", "app2", (f"{V3}|ETREAT",), "R", REST,
         "read", "0", ("Patient",), ("Patient/1",), True),
    Spec(500, AD, "Patient/2", PB, "Practitioner/c", "app1", (f"{V3}|TREAT", f"{V3}|HOPERAT"),
         "R", REST, "vread", "0", ("Observation",), ("Observation/7", "Patient/1"), False),
]  # fmt: skip


def make_row(s: Spec, *, index: int = NO_INDEX_YET) -> AuditRow:
    return AuditRow(
        index=index,
        recorded_us=s.t,
        kind=int(s.kind),
        flags=int(_flags(s.break_glass)),
        patient=s.patient,
        pseudonym=s.pseudonym,
        agent=s.agent,
        roles=("doctor", 'x\x1f,"]') if s.agent else (),  # separators and quotes survive
        organization="Organization/o1" if s.agent else None,
        client=s.client,
        purposes=s.purposes,
        action=s.action,
        event_type=s.event_type,
        subtype=s.subtype,
        outcome=s.outcome,
        resource_types=s.resource_types,
        entities=s.entities,
        break_glass=s.break_glass,
        request_id=f"req-{s.t}-{s.agent}",
    )


def _flags(break_glass: bool) -> EntryFlag:
    return EntryFlag.PERMIT | (EntryFlag.BREAK_THE_GLASS if break_glass else EntryFlag.NONE)


def audit_entry(row: AuditRow, *, key: str | None = None) -> NewEntry:
    """An entry whose leaf says what ``row`` says (time, kind, flags, pseudonym)."""
    return NewEntry.create(
        EntryKind(row.kind),
        b"ciphertext " + row.request_id.encode(),
        recorded_us=row.recorded_us,
        pseudonym=row.pseudonym,
        flags=EntryFlag(row.flags),
        idempotency_key=key,
        row=row,
    )


ROWS = [make_row(spec) for spec in SPECS]
EXPECTED = [row.at(n) for n, row in enumerate(ROWS)]


async def with_leaves(store: LogStore, rows: list[AuditRow]) -> None:
    """Append the entries ``rows`` describe (the next indexes of the log, in order), without
    index rows: a ``reindex`` indexes entries of the log, and SQLite refuses a row whose leaf
    is missing or names another pseudonym (a search by pseudonym reads the leaves' index)."""
    size = await store.size()
    assert [r.index for r in rows] == list(range(size, size + len(rows)))
    await store.append([replace(audit_entry(r), row=None) for r in rows], sign=SIGN)


async def _filled(store: LogStore) -> LogStore:
    await store.append([audit_entry(r) for r in ROWS[:3]], sign=SIGN)
    await store.append([audit_entry(r) for r in ROWS[3:]], sign=SIGN)
    return store


async def _indexes(store: LogStore, query: AuditQuery) -> list[int]:
    return [r.index for r in await store.audit_rows(query)]


# --- values survive the store whatever they hold ---------------------------------------------

#: Any text but lone surrogates (not UTF-8) and NUL (PostgreSQL text cannot hold it).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
STRINGS = st.lists(TEXT, max_size=4).map(tuple)


@given(items=STRINGS)
def test_json_arrays_are_written_as_the_json_module_writes_them(items: tuple[str, ...]) -> None:
    assert json_array(items) == json.dumps(items, ensure_ascii=False, separators=(",", ":"))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(roles=STRINGS, purposes=STRINGS, entities=STRINGS, agent=TEXT)
async def test_any_text_round_trips_through_the_index(
    store: LogStore,
    roles: tuple[str, ...],
    purposes: tuple[str, ...],
    entities: tuple[str, ...],
    agent: str,
) -> None:
    row = struct_replace(
        EXPECTED[0], roles=roles, purposes=purposes, entities=entities, agent=agent
    )
    if await store.size() == 0:  # the store lives across the examples
        await with_leaves(store, [row])
    await store.reindex([row])
    assert await store.audit_row(0) == row
    assert await store.audit_rows(AuditQuery(agent=agent)) == [row]
    for purpose in purposes:
        assert await store.audit_rows(AuditQuery(purpose=purpose)) == [row]
    for entity in entities:
        assert await store.audit_rows(AuditQuery(entity=entity)) == [row]


# --- rows are written with their entries ----------------------------------------------------


async def test_each_entry_row_is_stored_at_its_index_field_for_field(store: LogStore) -> None:
    await _filled(store)
    for n, expected in enumerate(EXPECTED):
        assert await store.audit_row(n) == expected
    assert await store.audit_row(6) is None
    assert await store.audit_rows(AuditQuery()) == EXPECTED


async def test_an_entry_without_a_row_indexes_nothing(store: LogStore) -> None:
    await store.append([replace(audit_entry(ROWS[0]), row=None), audit_entry(ROWS[1])], sign=SIGN)
    assert await store.audit_row(0) is None
    assert await store.audit_row(1) == ROWS[1].at(1)


# --- searches: one criterion at a time, then together ---------------------------------------

Q = AuditQuery
QUERIES = [
    ("everything", Q(), [0, 1, 2, 3, 4, 5]),
    ("since-inclusive", Q(since_us=200), [1, 2, 3, 4, 5]),
    ("until-inclusive", Q(until_us=200), [0, 1, 2]),
    ("between", Q(since_us=200, until_us=300), [1, 2, 3]),
    ("empty-window", Q(since_us=201, until_us=299), []),
    ("patient", Q(patient="Patient/1"), [0, 1, 4]),
    ("unknown-patient", Q(patient="Patient/9"), []),
    ("agent", Q(agent="Practitioner/a"), [0, 2, 4]),
    ("entity-or-patient", Q(entity="Patient/1"), [0, 1, 4, 5]),
    ("entity", Q(entity="Condition/3"), [1]),
    ("event-type", Q(event_type=DCM), [3]),
    ("subtype", Q(subtype="read"), [0, 4]),
    ("action", Q(action="C"), [2]),
    ("outcome", Q(outcome="0"), [0, 1, 4, 5]),
    ("client", Q(client="app2"), [2, 4]),
    ("purpose-system-code", Q(purpose=f"{V3}|TREAT"), [0, 5]),
    ("purpose-bare-code-any-system", Q(purpose="TREAT"), [0, 2, 5]),
    ("purpose-other-system", Q(purpose="urn:other|TREAT"), [2]),
    ("purpose-second-element", Q(purpose="HOPERAT"), [5]),
    ("purpose-code-is-not-a-prefix", Q(purpose="TREA"), []),
    ("resource-type", Q(resource_type="Condition"), [1, 2]),
    ("break-glass", Q(break_glass=True), [2, 4]),
    ("not-break-glass", Q(break_glass=False), [0, 1, 3, 5]),
    ("one-kind", Q(kinds=frozenset({ADMIN})), [3]),
    ("two-kinds", Q(kinds=frozenset({AD, DISC})), [0, 1, 2, 4, 5]),
    ("patient-and-bare-purpose", Q(patient="Patient/1", purpose="TREAT"), [0]),
    ("agent-since", Q(agent="Practitioner/a", since_us=200), [2, 4]),
    ("patient-break-glass", Q(patient="Patient/1", break_glass=True), [4]),
    ("kind-and-resource-type", Q(kinds=frozenset({AD}), resource_type="Observation"), [0, 1, 5]),
    ("descending", Q(sort="-date"), [5, 4, 3, 2, 1, 0]),
    ("limit", Q(limit=2), [0, 1]),
    ("descending-limit", Q(sort="-date", limit=3), [5, 4, 3]),
    ("after-tie", Q(after=(200, 1)), [2, 3, 4, 5]),
    ("after-descending-tie", Q(sort="-date", after=(200, 2)), [1, 0]),
    ("after-and-criteria", Q(patient="Patient/1", after=(100, 0)), [1, 4]),
    ("after-the-end", Q(after=(500, 5)), []),
]


@pytest.mark.parametrize(
    ("query", "expected"), [q[1:] for q in QUERIES], ids=[q[0] for q in QUERIES]
)
async def test_a_search_returns_the_rows_every_criterion_holds_for(
    store: LogStore, query: AuditQuery, expected: list[int]
) -> None:
    await _filled(store)
    assert await _indexes(store, query) == expected
    unpaged = replace(query, after=None, limit=100)
    assert await store.audit_count(query) == len(await store.audit_rows(unpaged))


@pytest.mark.parametrize("sort", ["date", "-date"])
@pytest.mark.parametrize("size", [1, 2, 4])
async def test_keyset_pages_walk_every_row_once_in_order(
    store: LogStore, sort: str, size: int
) -> None:
    await _filled(store)
    walked: list[int] = []
    query = AuditQuery(sort=sort, limit=size)  # type: ignore[arg-type]
    while page := await store.audit_rows(query):
        assert len(page) <= size
        walked += [r.index for r in page]
        query = replace(query, after=(page[-1].recorded_us, page[-1].index))
    forward = [0, 1, 2, 3, 4, 5]
    assert walked == (forward if sort == "date" else forward[::-1])


async def test_a_count_ignores_paging(store: LogStore) -> None:
    await _filled(store)
    query = AuditQuery(patient="Patient/1", after=(100, 0), limit=1, sort="-date")
    assert await store.audit_count(query) == 3


async def test_sql_backends_agree_with_the_rules_on_random_rows_and_queries(
    store: LogStore,
) -> None:
    """Property (seeded): on 300 random rows every store answers 300 random searches as the
    plain-Python rules do (``select_rows``, which the memory store runs)."""
    rng = random.Random(12)
    pick = rng.choice
    rows = []
    for n in range(300):  # more than one append batch: reindex expands terms in SQL
        patient, pseudonym = pick([("Patient/1", PA), ("Patient/2", PB), (None, None)])
        spec = pick(SPECS)._replace(
            t=rng.randrange(0, 40) * 10,
            patient=patient,
            pseudonym=pseudonym,
            agent=pick(["Practitioner/a", "Practitioner/b", None]),
            purposes=tuple(rng.sample([f"{V3}|TREAT", "urn:o|TREAT", f"{V3}|HPAYMT"], k=n % 3)),
            resource_types=tuple(rng.sample(["Observation", "Condition", "Patient"], k=n % 4)),
            entities=tuple(rng.sample(["Patient/1", "Condition/3", "Observation/1"], k=n % 3)),
            break_glass=rng.random() < 0.3,
        )
        row = make_row(spec, index=n)
        rows.append(row.shred() if rng.random() < 0.1 else row)
    await with_leaves(store, rows)
    await store.reindex(rows)
    for _ in range(300):
        fields: dict[str, object] = {
            "since_us": pick([None, 0, 100, 250]),
            "until_us": pick([None, 390, 200]),
            "patient": pick([None, None, "Patient/1"]),
            "agent": pick([None, None, "Practitioner/b"]),
            "entity": pick([None, None, "Patient/1", "Condition/3"]),
            "purpose": pick([None, None, "TREAT", f"{V3}|TREAT", "HPAYMT"]),
            "resource_type": pick([None, None, "Condition"]),
            "break_glass": pick([None, None, True, False]),
            "kinds": pick([frozenset(), frozenset({int(AD)})]),
            "pseudonym": pick([None, None, PA, PB]),
            "include_shredded": pick([False, True]),
            "sort": pick(["date", "-date"]),
            "after": pick([None, (200, 50), (200, 150)]),
            "limit": pick([3, 100, 500]),
        }
        query = AuditQuery(**fields)  # type: ignore[arg-type]
        assert await store.audit_rows(query) == select_rows(rows, query), query
        unpaged = replace(query, after=None, limit=500)
        assert await store.audit_count(query) == len(select_rows(rows, unpaged)), query


# --- the rows are written in the append's transaction ---------------------------------------


async def test_an_append_that_fails_writes_no_row(store: LogStore) -> None:
    def broken(size: int, root_hash: bytes) -> str:
        raise RuntimeError("HSM unplugged")

    with pytest.raises(RuntimeError):
        await store.append([audit_entry(r) for r in ROWS], sign=broken)
    assert await store.audit_count(AuditQuery(include_shredded=True)) == 0
    await store.append([audit_entry(ROWS[1])], sign=SIGN)
    assert await store.audit_rows(AuditQuery()) == [ROWS[1].at(0)]


async def test_a_duplicate_writes_no_row(store: LogStore) -> None:
    first, retry = ROWS[0], struct_replace(ROWS[0], agent="Practitioner/z", request_id="retry")
    await store.append([audit_entry(first, key="k")], sign=SIGN)
    results = await store.append(
        [audit_entry(retry, key="k"), audit_entry(ROWS[1]), audit_entry(retry, key="k")],
        sign=SIGN,
    )
    assert [(r.index, r.duplicate) for r in results] == [(0, True), (1, False), (0, True)]
    assert await store.audit_rows(AuditQuery()) == [first.at(0), ROWS[1].at(1)]


@pytest.mark.parametrize(
    "wrong",
    [
        {"recorded_us": 101},
        {"kind": int(ADMIN)},
        {"flags": int(EntryFlag.NONE)},
        {"pseudonym": PB},
        {"index": 7},
    ],
    ids=["time", "kind", "flags", "pseudonym", "index"],
)
async def test_a_row_that_disagrees_with_its_leaf_fails_the_append(
    store: LogStore, wrong: dict[str, object]
) -> None:
    good = audit_entry(ROWS[0])
    bad = replace(good, row=struct_replace(ROWS[0], **wrong))
    with pytest.raises(MalformedError):
        await store.append([audit_entry(ROWS[1]), bad], sign=SIGN)
    assert await store.size() == 0
    assert await store.audit_count(AuditQuery(include_shredded=True)) == 0


# --- evidence keys --------------------------------------------------------------------------


async def test_the_first_key_stored_for_a_pseudonym_is_kept(store: LogStore) -> None:
    assert await store.audit_key_get(PA) is None
    assert await store.audit_key(PA, b"wrapped-1") == b"wrapped-1"
    assert await store.audit_key(PA, b"wrapped-2") == b"wrapped-1"
    assert await store.audit_key(PB, b"\x00" * 40) == b"\x00" * 40
    assert await store.audit_key_get(PA) == b"wrapped-1"


@pytest.mark.parametrize(
    ("pseudonym", "candidate"),
    [(b"short", b"k"), (PA + b"x", b"k"), (PA, b"")],
    ids=["short-pseudonym", "long-pseudonym", "empty-key"],
)
async def test_a_malformed_key_request_is_refused(
    store: LogStore, pseudonym: bytes, candidate: bytes
) -> None:
    with pytest.raises(ValueError, match=r"pseudonym|key"):
        await store.audit_key(pseudonym, candidate)


async def test_stores_racing_for_one_key_all_get_the_same_one(backend: Backend) -> None:
    """Two store objects (two connections; on SQLite two threads on one file) race 20 times
    each for one pseudonym's key: one candidate wins and every caller gets it."""
    stores = [await backend.open() for _ in range(2)]
    try:
        pseudonym = PSEUDONYMS[4]
        got = await asyncio.gather(
            *(s.audit_key(pseudonym, f"candidate-{n}".encode()) for n in range(20) for s in stores)
        )
        assert len(set(got)) == 1
        assert await stores[1].audit_key_get(pseudonym) == got[0]
    finally:
        for s in stores:
            await s.close()


# --- crypto-shred ---------------------------------------------------------------------------


async def test_a_shred_deletes_the_key_and_every_phi_field_of_the_pseudonym(
    store: LogStore,
) -> None:
    await _filled(store)
    await store.audit_key(PA, b"key-a")
    await store.audit_key(PB, b"key-b")
    leaves, evidence = await store.leaves(0, 6), [await store.evidence(n) for n in range(6)]
    assert await store.shred(PA) == 3
    assert await store.audit_key_get(PA) is None
    assert await store.audit_key_get(PB) == b"key-b"
    for n in (0, 1, 4):
        shredded = await store.audit_row(n)
        assert shredded is not None
        assert shredded == EXPECTED[n].shred()
        assert (shredded.patient, shredded.agent, shredded.entities, shredded.purposes) == (
            None,
            None,
            (),
            (),
        )
        assert "Patient/1" not in repr(shredded)
        assert "Practitioner" not in repr(shredded)
    assert [await store.audit_row(n) for n in (2, 3, 5)] == [EXPECTED[n] for n in (2, 3, 5)]
    # The log is untouched: leaves, evidence (ciphertext), roots, chains.
    assert await store.leaves(0, 6) == leaves
    assert [await store.evidence(n) for n in range(6)] == evidence
    await assert_consistent(store)
    assert await store.shred(PA) == 0, "a second shred finds nothing left"


SHREDDED_QUERIES = [
    ("hidden-by-default", Q(), [2, 3, 5]),
    ("included", Q(include_shredded=True), [0, 1, 2, 3, 4, 5]),
    ("time-applies", Q(include_shredded=True, since_us=300), [3, 4, 5]),
    ("kind-applies", Q(include_shredded=True, kinds=frozenset({DISC})), [4]),
    ("paging-applies", Q(include_shredded=True, sort="-date", after=(400, 4)), [3, 2, 1, 0]),
    ("no-patient-match", Q(include_shredded=True, patient="Patient/1"), []),
    ("no-entity-match", Q(include_shredded=True, entity="Patient/1"), [5]),
    ("break-glass-is-phi", Q(include_shredded=True, break_glass=True), [2]),
    ("empty-fields-match-nothing", Q(include_shredded=True, action=""), []),
]


@pytest.mark.parametrize(
    ("query", "expected"), [q[1:] for q in SHREDDED_QUERIES], ids=[q[0] for q in SHREDDED_QUERIES]
)
async def test_shredded_rows_match_only_time_kind_and_index(
    store: LogStore, query: AuditQuery, expected: list[int]
) -> None:
    await _filled(store)
    await store.shred(PA)
    assert await _indexes(store, query) == expected
    assert await store.audit_count(replace(query, after=None)) == len(
        await store.audit_rows(replace(query, after=None))
    )


async def test_a_shred_of_an_unknown_pseudonym_shreds_nothing(store: LogStore) -> None:
    await _filled(store)
    assert await store.shred(PSEUDONYMS[3]) == 0
    assert await store.audit_rows(AuditQuery()) == EXPECTED
    with pytest.raises(ValueError, match="pseudonym"):
        await store.shred(b"not sixteen")


async def test_a_reindex_after_a_shred_writes_the_shredded_patients_rows_shredded(
    store: LogStore,
) -> None:
    """A reindex that read a patient's key before a shred of that patient hands the store
    their rows unshredded: the store writes them shredded (the shred's tombstone decides)."""
    await _filled(store)
    await store.shred(PA)
    await store.reindex(EXPECTED)
    assert [await store.audit_row(n) for n in range(6)] == [
        r.shred() if n in (0, 1, 4) else r for n, r in enumerate(EXPECTED)
    ]
    assert await _indexes(store, Q(patient="Patient/1")) == []


# --- rebuilding -----------------------------------------------------------------------------


async def test_clear_and_reindex_rebuild_the_same_index(store: LogStore) -> None:
    await _filled(store)
    await store.audit_key(PA, b"key-a")
    await store.clear_index()
    assert await store.audit_count(AuditQuery(include_shredded=True)) == 0
    assert await store.audit_key_get(PA) == b"key-a", "keys are not derived data"
    await store.reindex(EXPECTED[3:])
    await store.reindex(EXPECTED[:3])
    assert await store.audit_rows(AuditQuery()) == EXPECTED
    assert await _indexes(store, AuditQuery(purpose="TREAT")) == [0, 2, 5]


async def test_reindex_replaces_a_row_and_its_searchable_elements(store: LogStore) -> None:
    await _filled(store)
    changed = struct_replace(
        EXPECTED[1], resource_types=("Encounter",), purposes=("urn:x|ETREAT",), entities=()
    )
    await store.reindex([changed])
    assert await store.audit_row(1) == changed
    assert await _indexes(store, AuditQuery(resource_type="Condition")) == [2]
    assert await _indexes(store, AuditQuery(resource_type="Encounter")) == [1]
    assert await _indexes(store, AuditQuery(purpose="HPAYMT")) == []
    assert await _indexes(store, AuditQuery(purpose="ETREAT")) == [1, 4]
    assert await _indexes(store, AuditQuery(entity="Condition/3")) == []
    await store.reindex([changed, EXPECTED[1]])  # the last row given for an index wins
    assert await _indexes(store, AuditQuery(resource_type="Condition")) == [1, 2]


async def test_a_bulk_rebuild_answers_every_store_and_ends_indexed(backend: Backend) -> None:
    """While one store rebuilds (clear, then chunks), another store on the same log still
    answers correctly (SQLite defers the secondary indexes: unindexed, not wrong) and its
    appends land in the index; once the rebuilder searches or closes, the indexes are back."""
    rebuilder, other = await backend.open(), await backend.open()
    try:
        await _filled(rebuilder)
        await rebuilder.clear_index()
        await rebuilder.reindex(EXPECTED[:4])
        assert await _indexes(other, AuditQuery(purpose="TREAT")) == [0, 2]
        late = make_row(SPECS[0]._replace(t=600))
        await other.append([audit_entry(late)], sign=SIGN)
        await rebuilder.reindex(EXPECTED[4:])
        await rebuilder.close()
        assert await _indexes(other, AuditQuery(purpose="TREAT")) == [0, 2, 5, 6]
        assert await other.audit_rows(AuditQuery(since_us=600)) == [late.at(6)]
        if isinstance(backend, SqliteBackend):
            conn = sqlite3.connect(backend.path)
            try:
                names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            finally:
                conn.close()
            assert {"consentry_audit_index_patient", "consentry_audit_terms_lookup"} <= names
    finally:
        await rebuilder.close()
        await other.close()


async def test_reindex_refuses_a_row_without_its_index(store: LogStore) -> None:
    with pytest.raises(ValueError, match="index"):
        await store.reindex([ROWS[0]])


@pytest.mark.parametrize("where", ["other-pseudonym", "no-pseudonym", "no-leaf"])
async def test_reindex_refuses_a_row_that_does_not_state_its_leafs_pseudonym(
    store: LogStore, where: str
) -> None:
    """Every backend alike (``LogStore.reindex``): SQLite's search by pseudonym finds rows
    through their leaves, where such a row would be missing."""
    await _filled(store)
    bad = {
        "other-pseudonym": struct_replace(EXPECTED[0], pseudonym=PB),
        "no-pseudonym": struct_replace(EXPECTED[0], pseudonym=None),
        "no-leaf": EXPECTED[0].at(6),
    }[where]
    changed = struct_replace(EXPECTED[1], agent="Practitioner/z")
    with pytest.raises(ValueError, match="leaves"):
        await store.reindex([changed, bad])
    assert await store.audit_row(1) == EXPECTED[1], "nothing written"
    assert await store.audit_row(6) is None
    assert EXPECTED[3].pseudonym is None
    await store.reindex([changed, EXPECTED[3]])  # a leaf without a pseudonym: agrees
    assert await store.audit_row(1) == changed


# --- the index is derived data, the log is not ----------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE consentry_audit_index SET agent = NULL",
        "DELETE FROM consentry_audit_index WHERE idx = 0",
        "DELETE FROM consentry_audit_keys",
    ],
    ids=["update-index", "delete-index", "delete-keys"],
)
async def test_index_and_key_tables_are_not_append_only(sql_backend: Backend, sql: str) -> None:
    store = await sql_backend.open()
    try:
        await _filled(store)
        await store.audit_key(PA, b"key-a")
        await sql_backend.dba(sql)  # raises EditRefused if a trigger refused it
        await assert_consistent(store)
    finally:
        await store.close()
