"""The consent registry (consent.registry): compiled once, invalidated by ledger position."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent.records import canonical_consent
from middleware.consent.registry import ConsentRegistry, UnreadableConsent
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsents, MemoryConsentStore
from tests.unit.consent.builders import consent


def recorded(index: int, body: dict[str, Any]) -> ConsentRecord:
    return ConsentRecord(
        index,
        body["id"],
        body["subject"]["reference"],
        body["status"],
        False,
        index,
        canonical_consent(body),
    )


async def test_policies_are_compiled_once_and_carry_their_ledger_index() -> None:
    store = MemoryConsentStore()
    await store.record(recorded(3, consent("R5", "permit", consent_id="a")))
    registry = ConsentRegistry(store)
    first = await registry.policies("Patient/p1")
    assert [(p.consent_id, p.ledger_index) for p in first] == [("a", 3)]
    assert await registry.policies("Patient/p1") is first
    assert registry.compiled == 1
    assert await registry.policies("Patient/nobody") == ()


async def test_a_change_recorded_by_another_replica_is_seen_on_the_next_lookup() -> None:
    shared = MemoryConsents()
    mine, theirs = MemoryConsentStore(shared), MemoryConsentStore(shared)
    await theirs.record(recorded(1, consent("R5", "permit", consent_id="a")))
    registry = ConsentRegistry(mine)
    assert [p.status for p in await registry.policies("Patient/p1")] == ["active"]
    await theirs.record(recorded(2, consent("R5", "permit", consent_id="a", status="inactive")))
    assert [p.status for p in await registry.policies("Patient/p1")] == ["inactive"]
    await theirs.record(recorded(3, consent("R5", "deny", consent_id="b")))
    policies = await registry.policies("Patient/p1")
    assert [(p.consent_id, p.ledger_index) for p in policies] == [("a", 2), ("b", 3)]
    assert registry.compiled == 3  # "a" at 2 was not compiled again


async def test_a_late_record_below_the_latest_index_still_invalidates() -> None:
    store = MemoryConsentStore()
    await store.record(recorded(9, consent("R5", "permit", consent_id="a")))
    registry = ConsentRegistry(store)
    assert len(await registry.policies("Patient/p1")) == 1
    await store.record(recorded(5, consent("R5", "deny", consent_id="b")))
    assert {p.consent_id for p in await registry.policies("Patient/p1")} == {"a", "b"}


async def test_caches_are_bounded() -> None:
    store = MemoryConsentStore()
    for i, patient in enumerate(("Patient/p1", "Patient/p2", "Patient/p3")):
        await store.record(
            recorded(i, consent("R5", "permit", consent_id=f"c{i}", patient=patient))
        )
    registry = ConsentRegistry(store, max_patients=2, max_policies=2)
    for patient in ("Patient/p1", "Patient/p2", "Patient/p3", "Patient/p1"):
        assert len(await registry.policies(patient)) == 1
    assert registry.compiled == 4  # p1 was evicted and compiled again
    with pytest.raises(ValueError, match="positive"):
        ConsentRegistry(store, max_patients=0)


async def test_a_recorded_consent_that_no_longer_compiles_fails_closed() -> None:
    """Deciding without it could release what it denies: the patient's lookups are 503."""
    store = MemoryConsentStore()
    await store.record(ConsentRecord(1, "a", "Patient/p1", "active", False, 1, b'{"id":"a"}'))
    with pytest.raises(UnreadableConsent):
        await ConsentRegistry(store).policies("Patient/p1")
