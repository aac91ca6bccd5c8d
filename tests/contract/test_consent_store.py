"""The ConsentStore contract (``storage/consent_base``), on memory, SQLite and PostgreSQL.

Each backend gets a fresh database; ``open()`` returns another store on the same one, as a
second replica would. PostgreSQL cases fail (never skip) when the server is unreachable.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import pytest

from middleware.errors import ServiceUnavailable
from middleware.ledger.leaf import new_pseudonym
from middleware.storage.consent_base import ConsentRecord, ConsentStore, PatientMark
from middleware.storage.consent_memory import MemoryConsents, MemoryConsentStore
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.consent_sqlite import SqliteConsentStore
from tests.contract.backends import POSTGRES, postgres_dsn

Opener = Callable[[], Awaitable[ConsentStore]]


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores on one fresh database of the backend; closes them (and drops it) after."""
    opened: list[ConsentStore] = []
    schema = f"consentry_t_{secrets.token_hex(6)}"
    shared = MemoryConsents()

    async def opener() -> ConsentStore:
        store: ConsentStore
        if request.param == "memory":
            store = MemoryConsentStore(shared)
        elif request.param == "sqlite":
            store = await SqliteConsentStore.open(tmp_path / "consents.sqlite3")
        else:
            store = await PostgresConsentStore.open(postgres_dsn(), schema=schema, max_size=4)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()
    if request.param == "postgres":
        conn = await asyncpg.connect(postgres_dsn())
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


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
