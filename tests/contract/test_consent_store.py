"""The ConsentStore contract (``storage/consent_base``), on memory, SQLite and PostgreSQL.

Each backend gets a fresh database; ``open()`` returns another store on the same one, as a
second replica would. PostgreSQL cases fail (never skip) when the server is unreachable.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.errors import ServiceUnavailable
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import new_pseudonym
from middleware.storage.consent_base import ConsentRecord, ConsentStore, PatientMark, lookup_of
from middleware.storage.consent_memory import MemoryConsents, MemoryConsentStore
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.consent_sqlite import SqliteConsentStore
from tests.contract.backends import POSTGRES, postgres_dsn

Opener = Callable[..., Awaitable[ConsentStore]]
KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


@dataclass
class Database:
    """One fresh database of a backend: stores opened on it, and its raw bytes."""

    backend: str
    path: Path
    schema: str = field(default_factory=lambda: f"consentry_t_{secrets.token_hex(6)}")
    shared: MemoryConsents = field(default_factory=MemoryConsents)
    opened: list[ConsentStore] = field(default_factory=list)

    async def open(self, lookup_key: bytes = KEY) -> ConsentStore:
        store: ConsentStore
        if self.backend == "memory":
            store = MemoryConsentStore(self.shared, lookup_key=lookup_key)
        elif self.backend == "sqlite":
            store = await SqliteConsentStore.open(self.path, lookup_key=lookup_key)
        else:
            store = await PostgresConsentStore.open(
                postgres_dsn(), lookup_key=lookup_key, schema=self.schema, max_size=4
            )
        self.opened.append(store)
        return store

    async def dump(self) -> bytes:
        """Everything the database holds, as an attacker with a copy would read it: the memory
        tables' repr and raw bytes, the SQLite file and its WAL, every row of every table of the schema."""
        if self.backend == "memory":
            raw = b"".join(k + v for k, v in self.shared.pseudonyms.items())
            return repr(self.shared).encode() + raw
        if self.backend == "sqlite":
            wal = self.path.with_name(self.path.name + "-wal")
            return self.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        conn = await asyncpg.connect(postgres_dsn())
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1", self.schema
            )
            rows = [
                await conn.fetchval(
                    f'SELECT string_agg(t::text, E\'\\n\') FROM "{self.schema}"."{t[0]}" t'
                )
                for t in tables
            ]
        finally:
            await conn.close()
        return "\n".join(r for r in rows if r is not None).encode()

    async def create_old_table(self, rows: dict[str, bytes]) -> None:
        """The pseudonym table as the previous format kept it: plain references."""
        ddl = (
            "CREATE TABLE consentry_consent_pseudonyms (patient TEXT PRIMARY KEY, "
            "pseudonym BLOB NOT NULL UNIQUE)"
        )
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(ddl)
                db.executemany(
                    "INSERT INTO consentry_consent_pseudonyms VALUES (?, ?)", rows.items()
                )
            db.close()
            return
        conn = await asyncpg.connect(postgres_dsn())
        try:
            await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            await conn.execute(
                ddl.replace("BLOB", "bytea").replace(
                    "consentry_consent_pseudonyms", f'"{self.schema}".consentry_consent_pseudonyms'
                )
            )
            await conn.executemany(
                f'INSERT INTO "{self.schema}".consentry_consent_pseudonyms VALUES ($1, $2)',
                list(rows.items()),
            )
        finally:
            await conn.close()


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database of the backend; its stores closed (and the schema dropped) after."""
    made = Database(request.param, tmp_path / "consents.sqlite3")
    yield made
    for store in made.opened:
        await store.close()
    if made.backend == "postgres":
        conn = await asyncpg.connect(postgres_dsn())
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {made.schema} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
def open_store(database: Database) -> Opener:
    """Opens stores on one fresh database of the backend."""
    return database.open


def record(
    index: int, consent_id: str = "c1", patient: str = "Patient/p1", **kw: object
) -> ConsentRecord:
    values: dict[str, object] = {
        "status": "active",
        "revoked": False,
        "recorded_us": 1_700_000_000_000_000 + index,
        "data": f'{{"id":"{consent_id}","n":{index}}}'.encode(),
    }
    values.update(kw)
    return ConsentRecord(index, consent_id, patient, **values)  # type: ignore[arg-type]


async def test_versions_follow_ledger_order_even_when_recorded_out_of_order(
    open_store: Opener,
) -> None:
    store = await open_store()
    assert (await store.record(record(5))).version == 1
    assert (await store.record(record(9))).version == 2
    assert (await store.record(record(7, status="inactive", revoked=True))).version == 2
    assert [(r.ledger_index, r.version) for r in await store.history("c1")] == [
        (5, 1),
        (7, 2),
        (9, 3),
    ]
    current = await store.current("c1")
    assert current is not None
    assert (current.ledger_index, current.version) == (9, 3)
    second = await store.version("c1", 2)
    assert second == record(7, status="inactive", revoked=True, version=2)
    assert await store.version("c1", 4) is None
    assert await store.current("nope") is None
    assert await store.history("nope") == []


async def test_recording_an_index_twice_changes_nothing(open_store: Opener) -> None:
    store = await open_store()
    first = await store.record(record(3))
    again = await store.record(record(3, status="inactive", data=b"other"))
    assert again == first
    assert await store.mark("Patient/p1") == PatientMark(1, 3)


async def test_for_patient_lists_the_current_version_of_each_consent(open_store: Opener) -> None:
    store = await open_store()
    await store.record(record(1, "a"))
    await store.record(record(2, "b"))
    await store.record(record(3, "a", status="inactive", revoked=True))
    await store.record(record(4, "z", patient="Patient/p2"))
    found = await store.for_patient("Patient/p1")
    assert [(r.consent_id, r.ledger_index, r.status) for r in found] == [
        ("b", 2, "active"),
        ("a", 3, "inactive"),
    ]
    assert await store.for_patient("Patient/p9") == []


async def test_the_mark_moves_with_every_record_of_the_patient(open_store: Opener) -> None:
    store = await open_store()
    assert await store.mark("Patient/p1") == PatientMark(0, None)
    await store.record(record(10, "a"))
    await store.record(record(4, "b"))  # recorded late by another replica: the count moves
    assert await store.mark("Patient/p1") == PatientMark(2, 10)
    await store.record(record(11, "c", patient="Patient/p2"))
    assert await store.mark("Patient/p1") == PatientMark(2, 10)


async def test_a_pseudonym_is_stored_once_and_never_replaced(open_store: Opener) -> None:
    one, two = await open_store(), await open_store()
    assert await one.pseudonym("Patient/p1") is None
    candidates = [new_pseudonym() for _ in range(8)]
    stored = await asyncio.gather(
        *(
            store.pseudonym_for("Patient/p1", c)
            for store, c in zip([one, two] * 4, candidates, strict=True)
        )
    )
    assert len(set(stored)) == 1
    assert stored[0] in candidates
    assert await two.pseudonym("Patient/p1") == stored[0]
    assert await one.pseudonym_for("Patient/p1", new_pseudonym()) == stored[0]


async def test_a_second_store_sees_what_the_first_recorded(open_store: Opener) -> None:
    one, two = await open_store(), await open_store()
    await asyncio.gather(
        *(s.record(record(i)) for s, i in zip([one, two] * 3, range(6), strict=True))
    )
    assert [r.version for r in await two.history("c1")] == [1, 2, 3, 4, 5, 6]


async def test_recorded_names_the_ledger_indexes_that_have_a_record(open_store: Opener) -> None:
    store, other = await open_store(), await open_store()
    assert await store.recorded([]) == frozenset()
    for index in (3, 8, 2000):
        await store.record(record(index, consent_id=f"c{index}"))
    assert await other.recorded([1, 3, 4, 8, 2000]) == {3, 8, 2000}
    # More indexes than one query's worth of parameters on SQLite.
    assert await other.recorded(list(range(2500))) == {3, 8, 2000}


async def test_the_scanned_size_only_rises(open_store: Opener) -> None:
    store = await open_store()
    assert await store.scanned() == 0
    await store.set_scanned(12)
    await store.set_scanned(5)
    assert await (await open_store()).scanned() == 12


async def test_a_closed_store_is_unavailable(open_store: Opener) -> None:
    store = await open_store()
    await store.close()
    await store.close()
    with pytest.raises(ServiceUnavailable):
        await store.ping()


# --- The pseudonym table names nobody -------------------------------------------------------

PATIENTS = ["Patient/p1", "Patient/ünïcode-7", "Patient/" + "x" * 64]


def expected_lookup(key: bytes, patient: str) -> bytes:
    """The lookup as docs/audit.md defines it, computed here with hmac alone (not by the code
    under test): HMAC-SHA256 of the count of parts, then each part's length and bytes."""
    mac = hmac.new(key, (2).to_bytes(8, "big"), hashlib.sha256)
    for part in (b"consentry/consent/pseudonym-lookup/v1", patient.encode()):
        mac.update(len(part).to_bytes(8, "big") + part)
    return mac.digest()


async def test_no_patient_reference_is_stored_anywhere(database: Database) -> None:
    """Regression: the table kept ``Patient/<id>`` in plain text, so a dump of the database
    (or the SQLite file) named every patient. Only keyed lookups are stored now."""
    store = await database.open()
    for patient in PATIENTS:
        await store.pseudonym_for(patient, new_pseudonym())
    dump = await database.dump()
    for patient in PATIENTS:
        assert patient.encode() not in dump
        assert patient.encode().hex() not in dump.decode("latin-1")
        assert patient.split("/", 1)[1].encode() not in dump


@pytest.mark.parametrize("backend", ["sqlite", POSTGRES])
async def test_the_dump_would_name_a_plain_reference(backend: str, tmp_path: Path) -> None:
    """The dump of the test above can fail: a previous-format table shows up in it."""
    database = Database(backend, tmp_path / "old.sqlite3")
    try:
        await database.create_old_table({"Patient/p1": new_pseudonym()})
        assert b"Patient/p1" in await database.dump()
    finally:
        await _drop(database)


async def test_the_lookup_is_a_keyed_digest_of_the_reference(database: Database) -> None:
    """The stored lookup is HMAC under the store's key: another ledger key finds nothing on
    the same database, and its own row goes under another lookup."""
    one = await database.open(KEY)
    other = await database.open(OTHER_KEY)
    mine = await one.pseudonym_for("Patient/p1", new_pseudonym())
    assert await other.pseudonym("Patient/p1") is None
    theirs = await other.pseudonym_for("Patient/p1", new_pseudonym())
    assert theirs != mine
    assert await one.pseudonym("Patient/p1") == mine
    dump = await database.dump()
    for key in (KEY, OTHER_KEY):
        lookup = expected_lookup(key, "Patient/p1")
        assert lookup in dump or lookup.hex().encode() in dump


@pytest.mark.parametrize("size", [0, 16, 31, 33], ids=lambda n: f"{n}-bytes")
async def test_a_lookup_key_of_the_wrong_size_is_refused(database: Database, size: int) -> None:
    with pytest.raises(MalformedError):
        await database.open(bytes(size))


async def test_forget_unlinks_the_patient_and_the_next_chain_is_new(database: Database) -> None:
    one, two = await database.open(), await database.open()
    first = await one.pseudonym_for("Patient/p1", new_pseudonym())
    kept = await one.pseudonym_for("Patient/p2", new_pseudonym())
    await one.record(record(4))
    assert await two.forget("Patient/p1") is True
    assert await one.pseudonym("Patient/p1") is None
    assert await two.forget("Patient/p1") is False
    assert await one.forget("Patient/nobody") is False
    fresh = new_pseudonym()
    assert await one.pseudonym_for("Patient/p1", fresh) == fresh != first
    assert await two.pseudonym("Patient/p1") == fresh
    assert await two.pseudonym("Patient/p2") == kept
    assert await two.mark("Patient/p1") == PatientMark(1, 4)  # the consent index is kept


async def test_erase_deletes_every_version_of_the_patient_and_nothing_else(
    database: Database,
) -> None:
    """The shred's consent step: every version of the patient goes (from every read, and, on
    SQLite, from the file and its WAL), another patient's stay, the pseudonym row stays."""
    one, two = await database.open(), await database.open()
    pseudonym = await one.pseudonym_for("Patient/p1", new_pseudonym())
    secret = b"Zanzibar-Quixote-7731"
    await one.record(record(3, "a", data=b'{"name":"' + secret + b'"}'))
    await one.record(record(5, "b"))
    await one.record(record(7, "a", status="inactive", revoked=True))
    await one.record(record(6, "z", patient="Patient/p2", data=b'{"keep":"Kept-Other-42"}'))
    assert await two.erase("Patient/p1") == (3, 5, 7)
    assert await one.erase("Patient/p1") == ()
    assert await one.for_patient("Patient/p1") == []
    assert await one.mark("Patient/p1") == PatientMark(0, None)
    assert (await one.current("a"), await one.history("b")) == (None, [])
    assert await two.recorded([3, 5, 6, 7]) == {6}
    assert [r.ledger_index for r in await two.for_patient("Patient/p2")] == [6]
    assert await one.pseudonym("Patient/p1") == pseudonym
    if database.backend == "sqlite":
        dump = await database.dump()
        assert secret not in dump
        assert b"Patient/p1" not in dump
        assert b"Kept-Other-42" in dump


@pytest.mark.parametrize("backend", ["sqlite", POSTGRES])
async def test_a_previous_format_table_is_migrated_on_open(backend: str, tmp_path: Path) -> None:
    """Plain rows move under their lookups in one transaction on open; opening again changes
    nothing; afterwards no reference is left in the database."""
    old = {p: new_pseudonym() for p in PATIENTS}
    database = Database(backend, tmp_path / "old.sqlite3")
    try:
        await database.create_old_table(old)
        store = await database.open()
        assert {p: await store.pseudonym(p) for p in PATIENTS} == old
        again = await database.open()  # idempotent: the old table is gone, nothing moves
        assert {p: await again.pseudonym(p) for p in PATIENTS} == old
        assert await again.pseudonym_for("Patient/p1", new_pseudonym()) == old["Patient/p1"]
        for opened in database.opened:
            await opened.close()
        dump = await database.dump()
        for patient in PATIENTS:
            assert patient.encode() not in dump
            assert expected_lookup(KEY, patient).hex().encode() in dump.lower() or (
                expected_lookup(KEY, patient) in dump
            )
    finally:
        await _drop(database)


async def _drop(database: Database) -> None:
    for store in database.opened:
        await store.close()
    if database.backend == "postgres":
        conn = await asyncpg.connect(postgres_dsn())
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {database.schema} CASCADE")
        finally:
            await conn.close()


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), patient=st.text(max_size=80))
def test_lookup_of_is_hmac_of_the_reference(key: bytes, patient: str) -> None:
    """Against hmac computed here; and a one-character change of the reference moves it."""
    assert lookup_of(key, patient) == expected_lookup(key, patient)
    assert lookup_of(key, patient) != lookup_of(key, patient + "0")
