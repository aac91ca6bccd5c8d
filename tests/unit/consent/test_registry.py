"""The consent registry (consent.registry): compiled once, invalidated by the ledger's consent
position, and the store derived from the ledger before every decision."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent.records import canonical_consent
from middleware.consent.registry import ConsentRegistry, UnreadableConsent
from middleware.consent.shredded import erased_policy
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsents, MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLog, MemoryLogStore
from tests.contract.helpers import PSEUDONYMS, SIGN, entry
from tests.unit.consent.builders import consent

P1 = PSEUDONYMS[0]


class Ledgered:
    """A ledger and the consent store beside it, changed the way the consent API changes
    them: append the entry, then (unless the appender "dies" first) record it."""

    def __init__(self) -> None:
        self.log = MemoryLogStore()
        self.store = MemoryConsentStore()

    async def change(
        self, body: dict[str, Any], *, revoke: bool = False, stored: bool = True
    ) -> int:
        kind = EntryKind.CONSENT_REVOKE if revoke else EntryKind.CONSENT
        data = canonical_consent(body)
        pseudonym = await self.store.pseudonym_for(body["subject"]["reference"], P1)
        new = NewEntry.create(kind, data, recorded_us=7, pseudonym=pseudonym)
        (result,) = await self.log.append([new], sign=SIGN)
        if stored:
            await self.store.record(
                ConsentRecord(
                    result.index,
                    body["id"],
                    body["subject"]["reference"],
                    body["status"],
                    revoke,
                    7,
                    data,
                )
            )
        return result.index

    def registry(self, **bounds: int) -> ConsentRegistry:
        return ConsentRegistry(self.store, self.log, **bounds)


async def test_policies_are_compiled_once_and_carry_their_ledger_index() -> None:
    ledger = Ledgered()
    await ledger.log.append([entry(0)], sign=SIGN)
    await ledger.change(consent("R5", "permit", consent_id="a"))
    registry = ledger.registry()
    first = await registry.policies("Patient/p1")
    assert [(p.consent_id, p.ledger_index) for p in first] == [("a", 1)]
    assert await registry.policies("Patient/p1") is first
    assert registry.compiled == 1
    assert await registry.policies("Patient/nobody") == ()


async def test_a_change_recorded_by_another_replica_is_seen_on_the_next_lookup() -> None:
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    # Another replica: its own store objects over the same two databases.
    registry = ConsentRegistry(
        MemoryConsentStore(ledger.store.data), MemoryLogStore(ledger.log.log)
    )
    assert [p.status for p in await registry.policies("Patient/p1")] == ["active"]
    await ledger.change(consent("R5", "permit", consent_id="a", status="inactive"), revoke=True)
    assert [p.status for p in await registry.policies("Patient/p1")] == ["inactive"]
    await ledger.change(consent("R5", "deny", consent_id="b"))
    policies = await registry.policies("Patient/p1")
    assert [(p.consent_id, p.ledger_index) for p in policies] == [("a", 1), ("b", 2)]
    assert registry.compiled == 3  # "a" at 1 was not compiled again
    assert registry.repaired == 0  # every change was in the store already


async def test_a_change_on_the_ledger_but_not_in_the_store_is_enforced_at_once() -> None:
    """The attack: a replica appends a revocation and is killed before its store write. The
    ledger says revoked; every replica's next decision must say so too, before any restart."""
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    registry = ledger.registry()
    assert [p.status for p in await registry.policies("Patient/p1")] == ["active"]
    revoked = consent("R5", "permit", consent_id="a", status="inactive")
    index = await ledger.change(revoked, revoke=True, stored=False)
    assert [p.status for p in await registry.policies("Patient/p1")] == ["inactive"]
    assert registry.repaired == 1
    assert registry.position == index
    current = await ledger.store.current("a")
    assert current is not None
    assert (current.ledger_index, current.version, current.revoked) == (index, 2, True)
    # Recorded once: the appender's own late write, if it comes, changes nothing.
    assert await ledger.store.record(current) == current


async def test_an_unchanged_position_costs_one_ledger_read_and_no_store_read() -> None:
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    registry = ledger.registry()
    await registry.policies("Patient/p1")
    ledger.store.available = False  # any store read would now raise
    assert len(await registry.policies("Patient/p1")) == 1
    ledger.log.available = False
    with pytest.raises(ServiceUnavailable):  # no position, no decision
        await registry.policies("Patient/p1")


async def test_a_store_that_cannot_take_the_missing_entry_fails_closed() -> None:
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    registry = ledger.registry()
    await registry.policies("Patient/p1")
    await ledger.change(consent("R5", "deny", consent_id="b"), stored=False)
    ledger.store.available = False
    with pytest.raises(ServiceUnavailable):
        await registry.policies("Patient/p1")
    ledger.store.available = True  # the position did not move past what was not recorded
    assert [p.consent_id for p in await registry.policies("Patient/p1")] == ["a", "b"]


async def test_caches_are_bounded() -> None:
    ledger = Ledgered()
    for i, patient in enumerate(("Patient/p1", "Patient/p2", "Patient/p3")):
        await ledger.change(consent("R5", "permit", consent_id=f"c{i}", patient=patient))
    registry = ledger.registry(max_patients=2, max_policies=2)
    for patient in ("Patient/p1", "Patient/p2", "Patient/p3", "Patient/p1"):
        assert len(await registry.policies(patient)) == 1
    assert registry.compiled == 4  # p1 was evicted and compiled again
    with pytest.raises(ValueError, match="positive"):
        ledger.registry(max_patients=0)


async def test_superseded_versions_are_released_so_the_cache_stays_bounded() -> None:
    """The soak's memory growth: each consent change compiled a new version under its new
    ledger index and kept the replaced one until ``max_policies`` (100,000, ~1 GB) evicted it.
    After 1,000 changes of two patients' consents the cache holds their current versions."""
    ledger = Ledgered()
    registry = ledger.registry()
    await ledger.change(consent("R5", "deny", consent_id="keep"))
    for i in range(1_000):
        patient = ("Patient/p1", "Patient/p2")[i % 2]
        status = ("active", "inactive")[(i // 2) % 2]
        await ledger.change(
            consent("R5", "permit", consent_id=f"c{i % 2}", patient=patient, status=status),
            revoke=status == "inactive",
        )
        policies = await registry.policies(patient)
        assert policies[-1].status == status
        assert registry.cached_policies <= 3
    assert registry.compiled == 1_001  # "keep" at index 0 compiled once, never again
    assert [p.consent_id for p in await registry.policies("Patient/p1")] == ["keep", "c0"]
    assert registry.compiled == 1_001


async def test_an_evicted_patient_takes_its_policies_with_it() -> None:
    ledger = Ledgered()
    for i in range(50):
        await ledger.change(consent("R5", "permit", consent_id=f"c{i}", patient=f"Patient/p{i}"))
    registry = ledger.registry(max_patients=5)
    for i in range(50):
        assert len(await registry.policies(f"Patient/p{i}")) == 1
        assert registry.cached_policies <= 5


async def test_a_recorded_consent_that_no_longer_compiles_fails_closed() -> None:
    """Deciding without it could release what it denies: the patient's lookups are 503."""
    store = MemoryConsentStore(MemoryConsents())
    await store.record(ConsentRecord(1, "a", "Patient/p1", "active", False, 1, b'{"id":"a"}'))
    with pytest.raises(UnreadableConsent):
        await ConsentRegistry(store, MemoryLogStore(MemoryLog())).policies("Patient/p1")


@pytest.mark.parametrize("revoke", [True, False], ids=["revoke", "consent"])
async def test_a_consent_entry_that_cannot_be_recorded_fails_its_patient_closed(
    revoke: bool,
) -> None:
    """The attack (or a damaged ledger): a revocation, or a deny consent, whose evidence
    cannot be read was skipped by the sync, which moved its position past it: the patient's
    earlier permit went on being enforced although the ledger says otherwise. Now every
    decision for the patient the leaf names fails closed (503) while the entry stays
    unrecorded, on every replica and after a restart; another patient is unaffected; and
    evidence that becomes readable again is recorded and enforced."""
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    await ledger.store.pseudonym_for("Patient/p2", PSEUDONYMS[1])
    await ledger.change(consent("R5", "permit", consent_id="b", patient="Patient/p2"))
    registry = ledger.registry()
    assert len(await registry.policies("Patient/p1")) == 1
    kind = EntryKind.CONSENT_REVOKE if revoke else EntryKind.CONSENT
    unreadable = NewEntry.create(kind, b"\xff not json", recorded_us=8, pseudonym=P1)
    (appended,) = await ledger.log.append([unreadable], sign=SIGN)
    restarted = ConsentRegistry(MemoryConsentStore(ledger.store.data), ledger.log)
    for replica in (registry, restarted):
        with pytest.raises(UnreadableConsent):
            await replica.policies("Patient/p1")
        with pytest.raises(UnreadableConsent):  # not only once: until it is recorded
            await replica.policies("Patient/p1")
        assert [p.consent_id for p in await replica.policies("Patient/p2")] == ["b"]
    # The evidence is readable again (restored from a backup): recorded, then enforced.
    revoked = canonical_consent(consent("R5", "permit", consent_id="a", status="inactive"))
    damaged = ledger.log.log.evidence[appended.index]
    ledger.log.log.evidence[appended.index] = Evidence(damaged.salt, revoked)
    assert [p.status for p in await registry.policies("Patient/p1")] == ["inactive"]


# --- Consent entries a shred emptied --------------------------------------------------------


def _admin(evidence: bytes, pseudonym: bytes = P1) -> NewEntry:
    return NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=9, pseudonym=pseudonym)


SHRED = b'{"operator":"dpo","reason":"patient request","type":"consentry/audit-shred"}'


@pytest.mark.parametrize(
    ("after", "shredded"),
    [
        ([SHRED], True),
        ([b'{"type":"consentry/consent-api-attempt/v1"}', SHRED], True),
        ([b'{"type":"consentry/retention"}'], False),  # another admin entry
        ([b"not json"], False),
        ([], False),  # evidence gone, no shred on the chain: damage
    ],
    ids=["shred", "attempt-then-shred", "other-admin", "not-json", "no-admin"],
)
async def test_a_consent_entry_a_shred_emptied_is_absent_and_blocks_nobody(
    after: list[bytes], shredded: bool
) -> None:
    """After ``consentry audit shred`` the patient's consent entries have no evidence and the
    store has no record of them. A registry that starts then (or catches up) treats them as
    absent when the chain records the shred after them: the patient has no consent (here
    still under the same pseudonym: the shred's forget step had not run), nothing fails. The
    same missing evidence without a shred on the chain still fails the patient closed."""
    ledger = Ledgered()
    index = await ledger.change(consent("R5", "permit", consent_id="a"))
    await ledger.log.append([_admin(e) for e in after], sign=SIGN)
    del ledger.log.log.evidence[index]
    assert await ledger.store.erase("Patient/p1") == (index,)
    registry = ledger.registry()
    if shredded:
        assert await registry.policies("Patient/p1") == ()
        assert await registry.policies("Patient/p1") == ()
    else:
        with pytest.raises(UnreadableConsent):
            await registry.policies("Patient/p1")


async def test_a_shred_before_the_consent_entry_does_not_excuse_it() -> None:
    """Only a shred recorded after the entry on its chain explains its missing evidence."""
    ledger = Ledgered()
    await ledger.log.append([_admin(SHRED)], sign=SIGN)
    index = await ledger.change(consent("R5", "permit", consent_id="a"), stored=False)
    del ledger.log.log.evidence[index]
    with pytest.raises(UnreadableConsent):
        await ledger.registry().policies("Patient/p1")


async def test_an_entry_shredded_while_it_blocked_its_patient_is_dropped() -> None:
    """An entry that could not be recorded (its evidence missing) blocks its patient; once a
    shred is recorded after it on its chain it is absent and the patient is served."""
    ledger = Ledgered()
    index = await ledger.change(consent("R5", "permit", consent_id="a"), stored=False)
    del ledger.log.log.evidence[index]
    registry = ledger.registry()
    with pytest.raises(UnreadableConsent):
        await registry.policies("Patient/p1")
    await ledger.log.append([_admin(SHRED)], sign=SIGN)
    assert await registry.policies("Patient/p1") == ()


# --- The shred's marker ------------------------------------------------------------------------


def _marker(pseudonym: bytes = P1) -> NewEntry:
    return NewEntry.create(EntryKind.CONSENT_REVOKE, SHRED, recorded_us=9, pseudonym=pseudonym)


async def test_the_marker_makes_a_running_registry_drop_the_erased_consent() -> None:
    """A registry that compiled Patient/p1's permit keeps it while the consent position stands
    (a shred erased the consent but appended no consent entry); the shred's marker moves the
    position, records nothing, blocks nobody, and the next lookup finds no consent."""
    ledger = Ledgered()
    index = await ledger.change(consent("R5", "permit", consent_id="a"))
    registry = ledger.registry()
    assert [p.ledger_index for p in await registry.policies("Patient/p1")] == [index]
    await ledger.log.append([_admin(SHRED)], sign=SIGN)
    del ledger.log.log.evidence[index]
    assert await ledger.store.erase("Patient/p1") == (index,)
    assert [p.ledger_index for p in await registry.policies("Patient/p1")] == [index]  # stale
    (marked,) = await ledger.log.append([_marker()], sign=SIGN)
    assert await registry.policies("Patient/p1") == ()
    assert registry.position == marked.index
    assert await registry.policies("Patient/p2") == ()
    assert registry.repaired == 0


async def test_a_registry_recompiles_a_shredded_patient_whose_mark_did_not_move() -> None:
    """A patient who never recorded a consent keeps the mark (0, None) across their shred, so
    their cached no-consent answer (open under opt-out) would stand; after the marker it is
    recomputed: the tombstone gives the erased policy, as a registry started now gives."""
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    registry = ledger.registry()
    assert await registry.policies("Patient/p2") == ()
    await ledger.log.shred(PSEUDONYMS[1], link=ledger.store.lookup("Patient/p2"))
    assert await registry.policies("Patient/p2") == ()  # the position did not move
    await ledger.log.append([_marker()], sign=SIGN)
    assert await registry.policies("Patient/p2") == (erased_policy("Patient/p2"),)
    assert await ledger.registry().policies("Patient/p2") == (erased_policy("Patient/p2"),)


CONSENT_LIKE = b'{"resourceType":"Consent","type":"consentry/audit-shred"}'


@pytest.mark.parametrize(
    ("kind", "evidence"),
    [
        (EntryKind.CONSENT_REVOKE, CONSENT_LIKE),
        (EntryKind.CONSENT, SHRED),
        (EntryKind.CONSENT_REVOKE, b'{"type":"consentry/retention"}'),
        (EntryKind.CONSENT_REVOKE, b"not json"),
    ],
    ids=["a-resource", "consent-kind", "other-evidence", "not-json"],
)
async def test_only_a_shred_record_is_a_marker(kind: EntryKind, evidence: bytes) -> None:
    """A consent entry is taken for a marker only if it is a ``consent-revoke`` whose evidence
    is a shred's record and no resource (every real consent entry's evidence is a Consent):
    anything else that cannot be recorded still fails its patient closed."""
    ledger = Ledgered()
    await ledger.change(consent("R5", "permit", consent_id="a"))
    new = NewEntry.create(kind, evidence, recorded_us=9, pseudonym=P1)
    await ledger.log.append([new], sign=SIGN)
    with pytest.raises(UnreadableConsent):
        await ledger.registry().policies("Patient/p1")
