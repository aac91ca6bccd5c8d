"""Sealed audit evidence: per-entry keys open exactly their entry, the reader opens what the
recorder sealed (and says None for shredded, consent and pre-facts entries), patient keys
are made once per pseudonym, and a write's outcome whose key the store could not give waits
in the outbox unsealed and is sealed on replay."""

from __future__ import annotations

import asyncio
import hashlib

import nacl.secret
import pytest

from middleware.audit.evidence import (
    EVIDENCE_HEADER,
    NO_PATIENT,
    EvidenceKeyError,
    EvidenceReader,
    Opening,
    PatientKeys,
    is_sealed,
    open_entry,
    seal_facts,
)
from middleware.audit.facts import decode_facts, encode_facts
from middleware.audit.recorder import AuditRecorder
from middleware.fhir.jsoncodec import encode_canonical
from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.leaf import EntryKind, commit_evidence, new_salt
from middleware.ledger.signing import evidence_key, new_box_key, seal_once, unseal_once
from middleware.storage.audit_outbox import SqliteOutbox
from tests.unit.audit.test_facts import FACTS
from tests.unit.audit.test_recorder import (
    CREATE,
    GATEWAY,
    PERMIT,
    WHEN,
    FakeLedger,
    Pseudonyms,
    exchange,
)

PATIENT_KEY = bytes(range(32))
SALT = bytes(range(100, 132))


def sealed() -> bytes:
    return seal_facts(PATIENT_KEY, SALT, encode_facts(FACTS))


def test_the_entry_key_opens_its_entry() -> None:
    evidence = sealed()
    assert evidence.startswith(EVIDENCE_HEADER)
    assert is_sealed(evidence)
    assert FACTS.patient is not None
    assert FACTS.patient.encode() not in evidence
    opening = Opening(SALT, evidence, evidence_key(PATIENT_KEY, SALT))
    assert opening.commitment == commit_evidence(SALT, evidence)
    assert open_entry(opening) == FACTS


WRONG = [
    ("another-salt", lambda: Opening(SALT, sealed(), evidence_key(PATIENT_KEY, bytes(32)))),
    ("the-patient-key", lambda: Opening(SALT, sealed(), PATIENT_KEY)),
    ("another-patient", lambda: Opening(SALT, sealed(), evidence_key(bytes(32), SALT))),
    ("short-key", lambda: Opening(SALT, sealed(), b"k")),
    ("changed-byte", lambda: Opening(SALT, sealed()[:-1] + b"\x00", evidence_key(PATIENT_KEY, SALT))),
    ("no-header", lambda: Opening(SALT, sealed()[4:], evidence_key(PATIENT_KEY, SALT))),
    ("plain-facts", lambda: Opening(SALT, encode_facts(FACTS), evidence_key(PATIENT_KEY, SALT))),
]  # fmt: skip


@pytest.mark.parametrize("make", [w[1] for w in WRONG], ids=[w[0] for w in WRONG])
def test_anything_but_the_entry_key_is_a_typed_error(make: object) -> None:
    with pytest.raises(EvidenceKeyError):
        open_entry(make())  # type: ignore[operator]


def test_sealed_under_the_right_key_but_not_facts_is_a_value_error() -> None:
    key = evidence_key(PATIENT_KEY, SALT)
    with pytest.raises(ValueError, match="audit facts"):
        open_entry(Opening(SALT, EVIDENCE_HEADER + seal_once(key, b"{}"), key))


class Table:
    """The store's key table (``audit_key``), calls counted, first candidate wins."""

    def __init__(self) -> None:
        self.wrapped: dict[bytes, bytes] = {}
        self.calls = 0
        self.down = False

    async def __call__(self, pseudonym: bytes, candidate: bytes) -> bytes:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise OSError("key table unavailable")
        return self.wrapped.setdefault(pseudonym, candidate)


async def test_a_patient_key_is_made_once_and_cached() -> None:
    table = Table()
    keys = PatientKeys(table, new_box_key(), max_cached=1)
    p1, p2 = b"\x01" * 16, b"\x02" * 16
    first = await asyncio.gather(keys.key(p1), keys.key(p1))
    assert first[0] == first[1]  # concurrent first uses agree (the table keeps one candidate)
    assert await keys.key(p1) == first[0]
    calls = table.calls
    assert await keys.key(p1) == first[0]
    assert table.calls == calls
    await keys.key(p2)  # evicts p1 (max_cached=1) ...
    assert await keys.key(p1) == first[0]  # ... which unwraps to the same key again


async def test_a_cached_key_is_asked_for_again_after_max_age() -> None:
    """A key shredded by another process stops being used here within ``max_age``."""
    table, now = Table(), [0.0]
    keys = PatientKeys(table, new_box_key(), max_age=60.0, clock=lambda: now[0])
    pseudonym = b"\x03" * 16
    first = await keys.key(pseudonym)
    now[0] = 59.0
    assert keys.cached(pseudonym) == first
    now[0] = 60.0  # max_age after it was fetched
    assert keys.cached(pseudonym) is None
    del table.wrapped[pseudonym]  # the shred
    assert await keys.key(pseudonym) != first  # a new key for new entries


async def test_a_refresh_reads_the_stored_key_without_offering_a_candidate() -> None:
    table, now = Table(), [0.0]

    async def get(pseudonym: bytes) -> bytes | None:
        return table.wrapped.get(pseudonym)

    keys = PatientKeys(table, new_box_key(), clock=lambda: now[0], audit_key_get=get)
    first = await keys.key(NO_PATIENT)
    assert table.calls == 1  # none stored yet: the candidate is offered
    now[0] = 600.0
    assert await keys.key(NO_PATIENT) == first
    assert table.calls == 1  # read back, no write


async def test_a_key_wrapped_under_another_ledger_key_is_refused() -> None:
    table = Table()
    await PatientKeys(table, new_box_key()).key(NO_PATIENT)
    with pytest.raises(EvidenceKeyError):
        await PatientKeys(table, new_box_key()).key(NO_PATIENT)


class Store:
    """A ledger store as the reader sees it: leaves, evidence, the key table."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.leaves_: list[bytes] = []
        self.evidence_: list[Evidence] = []

    def add(self, entry: NewEntry) -> int:
        self.leaves_.append(entry.leaf_bytes(None))
        self.evidence_.append(Evidence(entry.salt, entry.evidence))
        return len(self.leaves_) - 1

    async def append(self, entry: NewEntry) -> int:
        return self.add(entry)

    async def leaves(self, start: int, end: int) -> list[bytes]:
        return self.leaves_[start:end]

    async def evidence(self, index: int) -> Evidence | None:
        return self.evidence_[index] if index < len(self.evidence_) else None

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None:
        return self.table.wrapped.get(pseudonym)


async def test_the_reader_opens_what_the_recorder_sealed() -> None:
    table, wrap = Table(), new_box_key()
    store = Store(table)
    rec = AuditRecorder(
        store, Pseudonyms(), gateway=GATEWAY, wall_clock=WHEN.timestamp,
        keys=PatientKeys(table, wrap),
    )  # fmt: skip
    shown = exchange(decisions={"Patient/p1": PERMIT}, released=frozenset({"Patient/p1"}))
    indexes = await rec.record(shown, "exchange")
    indexes += await rec.record(exchange(identity=None, status=401), "exchange")
    reader = EvidenceReader(store, wrap)
    read, unauthenticated = [await reader.facts(i) for i in indexes]
    assert read is not None
    assert read.patient == "Patient/p1"
    assert read.decision is not None
    assert unauthenticated is not None
    assert unauthenticated.patient is None
    events = await reader.events(indexes[0])
    assert events is not None
    assert [e["type"]["code"] for e in events] == ["110113", "rest"]
    opening = await reader.opening(indexes[0])
    assert opening is not None
    assert open_entry(opening) == read

    # Crypto-shred: the key gone, the entry reads as nothing (and still commits as before).
    pseudonym = next(p for p in table.wrapped if p != NO_PATIENT)
    del table.wrapped[pseudonym]
    assert await reader.facts(indexes[0]) is None
    assert await reader.opening(indexes[0]) is None
    assert await reader.events(indexes[0]) is None
    # Another ledger key opens nothing: a typed error, not None (tampering or a wrong key).
    with pytest.raises(EvidenceKeyError):
        await EvidenceReader(store, new_box_key()).facts(indexes[1])


async def test_entries_from_before_sealed_facts_read_as_their_bundle() -> None:
    store = Store(Table())
    event = {"resourceType": "AuditEvent", "action": "R"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": event}]}
    old = store.add(NewEntry.create(EntryKind.DISCLOSURE, encode_canonical(bundle), recorded_us=1))
    consent = store.add(
        NewEntry.create(EntryKind.CONSENT, b'{"resourceType":"Consent"}', recorded_us=2)
    )
    reader = EvidenceReader(store, new_box_key())
    assert await reader.facts(old) is None
    assert await reader.legacy_bundle(old) == bundle
    assert await reader.events(old) == [event]
    assert await reader.facts(consent) is None
    assert await reader.legacy_bundle(consent) is None
    assert await reader.events(consent) is None
    assert await reader.facts(99) is None


async def test_an_outcome_whose_key_is_not_at_hand_waits_unsealed_then_is_sealed(
    tmp_path: object,
) -> None:
    """The key table is down when a write's outcome is recorded and the ledger refuses: the
    outbox keeps the facts unsealed (MACed); replay, with the table back, seals them."""

    class Refusing(FakeLedger):
        refuse = True

        async def append(self, entry: NewEntry) -> int:
            if self.refuse:
                raise OSError("ledger down")
            return await super().append(entry)

    table, ledger = Table(), Refusing()
    rec = AuditRecorder(
        ledger, Pseudonyms(), gateway=GATEWAY, wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(":memory:"), keys=PatientKeys(table, new_box_key()),
    )  # fmt: skip
    table.down = True
    x = exchange(CREATE, status=201, decisions={"Patient/p1": PERMIT})
    assert await rec.record(x, "outcome") == []
    assert rec.outbox is not None
    (row,) = await rec.outbox.pending()
    assert not is_sealed(row.evidence)
    assert decode_facts(row.evidence).status == 201

    table.down, ledger.refuse = False, False
    assert await rec.replay() == 0
    (entry,) = ledger.entries
    assert is_sealed(entry.evidence)
    assert entry.salt == row.salt
    key = rec.keys.cached(entry.pseudonym or NO_PATIENT)
    assert key is not None
    facts = open_entry(Opening(entry.salt, entry.evidence, evidence_key(key, entry.salt)))
    assert facts == decode_facts(row.evidence)
    assert entry.row is not None
    assert entry.row.outcome == "0"
    assert entry.row.subtype == "create"
    await rec.aclose()


def test_evidence_keys_differ_per_salt() -> None:
    assert evidence_key(PATIENT_KEY, SALT) != evidence_key(PATIENT_KEY, new_salt())


def test_seal_once_is_libsodiums_secret_box_under_the_zero_nonce() -> None:
    """Known answer from pynacl's own SecretBox (nonce given, then dropped from the output)."""
    box = nacl.secret.SecretBox(PATIENT_KEY)
    expected = box.encrypt(b"facts", bytes(24)).ciphertext
    assert seal_once(PATIENT_KEY, b"facts") == expected
    assert unseal_once(PATIENT_KEY, expected) == b"facts"
    assert unseal_once(PATIENT_KEY, expected[:-1]) is None
    assert unseal_once(bytes(32), expected) is None


def test_the_entry_key_is_keyed_blake2b_of_the_salt() -> None:
    """Known answer from hashlib: BLAKE2b-256, keyed by the patient key, personalised."""
    expected = hashlib.blake2b(
        SALT, digest_size=32, key=PATIENT_KEY, person=b"consentry/evkey1"
    ).digest()
    assert evidence_key(PATIENT_KEY, SALT) == expected
