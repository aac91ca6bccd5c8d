"""The audit recorder: which ledger entries one exchange becomes (kind, flags, pseudonym,
consent index), the evidence beside them (audit facts sealed under the patient's key, rendering
valid BALP AuditEvents, with the entry's audit-index row), the pseudonym cache, concurrency of
the appends and failing closed."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from structlog.testing import capture_logs

from middleware.audit.evidence import NO_PATIENT, Opening, PatientKeys, is_sealed, open_entry
from middleware.audit.facts import row_of
from middleware.audit.parts import AgentInfo
from middleware.audit.recorder import AuditRecorder, Exchange, Phase
from middleware.audit.render import render_events
from middleware.auth.identity import Identity
from middleware.consent.decide import Decision, TraceStep
from middleware.errors import ServiceUnavailable
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import (
    PSEUDONYM_SIZE,
    EntryFlag,
    EntryKind,
    commit_evidence,
    decode_leaf,
    micros,
    new_pseudonym,
)
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey, evidence_key, new_box_key
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore

WHEN = datetime(2025, 3, 1, 12, 30, 5, 123000, tzinfo=UTC)
GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
RID = "rid-0001"
USER = Identity(
    subject="user-42",
    issuer="https://idp.example",
    expires_at=1e10,
    client_id="app-1",
    fhir_user="Practitioner/pr1",
    token_id="jti-9",
)

READ = FhirRequest(
    Interaction.READ, "GET", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
SEARCH = FhirRequest(
    Interaction.SEARCH_TYPE, "GET", Level.TYPE, "Observation", b"code=x", "Observation"
)
SEARCH_RAW = b"GET /fhir/Observation?code=x"
CREATE = FhirRequest(Interaction.CREATE, "POST", Level.TYPE, "Observation", b"", "Observation")

PERMIT = Decision(
    "permit",
    trace=(
        TraceStep("c1", 7, "Consent.provision", "permit"),
        TraceStep("c2", 12, "Consent.provision.provision[0]", "permit"),
        # Ignored consents (no provision reached) do not count, whatever their index.
        TraceStep("c3", 40, None, "inactive"),
    ),
)
DENY = Decision("deny", trace=(TraceStep("c4", 3, "Consent.provision", "deny"),))
DEFAULT_DENY = Decision("deny", trace=(TraceStep(None, None, None, "opt-in default"),))


# --- fakes ---------------------------------------------------------------------------------


class KeyTable:
    """The store's audit-key table: the first candidate stored per pseudonym wins."""

    def __init__(self) -> None:
        self.wrapped: dict[bytes, bytes] = {}

    async def __call__(self, pseudonym: bytes, candidate: bytes) -> bytes:
        return self.wrapped.setdefault(pseudonym, candidate)


KEYS = PatientKeys(KeyTable(), new_box_key())


class FakeLedger:
    """Keeps what is appended; index = position."""

    def __init__(self) -> None:
        self.entries: list[NewEntry] = []

    async def append(self, entry: NewEntry) -> int:
        self.entries.append(entry)
        return len(self.entries) - 1


class FailingLedger(FakeLedger):
    """Fails the ``fail_at``-th append (0-based) with ``error``; the others succeed."""

    def __init__(self, error: Exception, fail_at: int = 0) -> None:
        super().__init__()
        self.error = error
        self.fail_at = fail_at
        self.calls = 0

    async def append(self, entry: NewEntry) -> int:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise self.error
        return await super().append(entry)


class BarrierLedger(FakeLedger):
    """Answers no append until ``expected`` of them are waiting: only concurrent appends
    finish (sequential ones would wait forever)."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.all_in = asyncio.Event()

    async def append(self, entry: NewEntry) -> int:
        self.entries.append(entry)
        index = len(self.entries) - 1
        if len(self.entries) == self.expected:
            self.all_in.set()
        await self.all_in.wait()
        return index


class Pseudonyms:
    """A pseudonym store: one random pseudonym per patient, calls counted."""

    def __init__(self) -> None:
        self.known: dict[str, bytes] = {}
        self.calls: Counter[str] = Counter()

    async def __call__(self, patient: str) -> bytes:
        self.calls[patient] += 1
        return self.known.setdefault(patient, new_pseudonym())


def recorder(
    ledger: Any, pseudonyms: Pseudonyms | None = None, **kwargs: Any
) -> tuple[AuditRecorder, Pseudonyms]:
    store = pseudonyms or Pseudonyms()
    kwargs.setdefault("keys", KEYS)
    rec = AuditRecorder(ledger, store, gateway=GATEWAY, wall_clock=WHEN.timestamp, **kwargs)
    return rec, store


def exchange(request: FhirRequest = READ, **overrides: Any) -> Exchange:
    values: dict[str, Any] = {
        "request": request,
        "identity": USER,
        "status": 200,
        "request_id": RID,
        "raw_request": SEARCH_RAW if request is SEARCH else b"",
        "client_address": "192.0.2.7",
    }
    values.update(overrides)
    return Exchange(**values)


def events(entry: NewEntry) -> list[dict[str, Any]]:
    """The entry's AuditEvents, rendered from its sealed facts and each validated as FHIR R4
    (R4B has R4's AuditEvent shape); the entry's index row is the facts' row."""
    facts = opened(entry.pseudonym, entry.salt, entry.evidence)
    assert entry.row == row_of(facts, kind=entry.kind, flags=entry.flags, pseudonym=entry.pseudonym)
    return rendered(facts)


def opened(pseudonym: bytes | None, salt: bytes, evidence: bytes) -> Any:
    """The facts sealed in ``evidence`` under the pseudonym's key (None: the no-patient key)."""
    assert is_sealed(evidence)
    key = KEYS.cached(pseudonym or NO_PATIENT)
    assert key is not None
    return open_entry(Opening(salt, evidence, evidence_key(key, salt)))


def rendered(facts: Any) -> list[dict[str, Any]]:
    out = render_events(facts)
    for event in out:
        AuditEvent.model_validate(event)
    return out


def kinds_of(events_: list[dict[str, Any]]) -> list[str]:
    """``authz`` for an AuthZconsent event, else the RESTful subtype."""
    return [
        "authz" if e["subtype"][0]["code"] == "AuthZ-Consent" else e["subtype"][0]["code"]
        for e in events_
    ]


def patients_in(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]


# --- what each phase writes ----------------------------------------------------------------


async def test_released_read_is_one_disclosure_with_the_decision_and_the_read() -> None:
    ledger = FakeLedger()
    rec, store = recorder(ledger)
    got = await rec.record(
        exchange(decisions={"Patient/p1": PERMIT}, released=frozenset({"Patient/p1"})),
        "exchange",
    )
    assert got == [0]
    (entry,) = ledger.entries
    assert entry.kind is EntryKind.DISCLOSURE
    assert entry.flags == EntryFlag.PERMIT
    assert entry.pseudonym == store.known["Patient/p1"]
    assert entry.consent == 12  # the newest of the consents relied on (7, 12), not c3's 40
    authz, read = events(entry)
    assert kinds_of([authz, read]) == ["authz", "read"]
    assert authz["outcome"] == "0"
    assert read["outcome"] == "0"
    assert patients_in(authz) == patients_in(read) == ["Patient/p1"]


async def test_search_gives_one_entry_per_patient_in_order_released_or_not() -> None:
    ledger = FakeLedger()
    rec, store = recorder(ledger)
    x = exchange(
        SEARCH,
        decisions={"Patient/p2": PERMIT, "Patient/p1": DENY},
        released=frozenset({"Patient/p2"}),
        resource_refs=("Observation/o2",),
        narrowed=True,
    )
    assert await rec.record(x, "exchange") == [0, 1]
    released, withheld = ledger.entries
    assert [released.kind, withheld.kind] == [EntryKind.DISCLOSURE, EntryKind.ACCESS_DECISION]
    assert released.flags == EntryFlag.PERMIT | EntryFlag.NARROWED
    assert withheld.flags == EntryFlag.NARROWED
    assert [released.pseudonym, withheld.pseudonym] == [
        store.known["Patient/p2"],
        store.known["Patient/p1"],
    ]
    assert [released.consent, withheld.consent] == [12, 3]
    (_, search2), (authz1, search1) = events(released), events(withheld)
    assert authz1["outcome"] == "8"  # the deny
    assert patients_in(search2) == ["Patient/p2"]
    assert patients_in(search1) == ["Patient/p1"]

    def data(event: dict[str, Any]) -> list[str]:
        return [
            e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "4"
        ]

    # The released resources are named only on the patient whose data they are.
    assert data(search2) == ["Observation/o2"]
    assert data(search1) == []


async def test_denied_read_is_an_access_decision_whose_event_shows_the_status() -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    await rec.record(exchange(status=404, decisions={"Patient/p1": DENY}), "exchange")
    (entry,) = ledger.entries
    assert entry.kind is EntryKind.ACCESS_DECISION
    assert entry.flags == EntryFlag.NONE
    authz, read = events(entry)
    assert (authz["outcome"], read["outcome"], read["outcomeDesc"]) == ("8", "4", "HTTP 404")


async def test_failed_exchange_is_never_a_disclosure_even_if_released_was_set() -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    x = exchange(status=502, decisions={"Patient/p1": PERMIT}, released=frozenset({"p1"}))
    await rec.record(x, "exchange")
    (entry,) = ledger.entries
    assert entry.kind is EntryKind.ACCESS_DECISION
    assert entry.flags == EntryFlag.NONE  # permitted, but the exchange failed
    assert events(entry)[1]["outcome"] == "8"


async def test_own_record_without_decision_is_a_permitted_disclosure_without_authz() -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    x = exchange(decisions={"Patient/p1": None}, released=frozenset({"Patient/p1"}))
    await rec.record(x, "exchange")
    (entry,) = ledger.entries
    assert (entry.kind, entry.flags, entry.consent) == (
        EntryKind.DISCLOSURE,
        EntryFlag.PERMIT,
        None,
    )
    assert kinds_of(events(entry)) == ["read"]


@pytest.mark.parametrize(
    ("status", "identity", "kind", "flags"),
    [
        (200, USER, EntryKind.DISCLOSURE, EntryFlag.PERMIT),
        (401, None, EntryKind.ACCESS_DECISION, EntryFlag.NONE),
    ],
    ids=["answered", "unauthenticated"],
)
async def test_exchange_without_patients_is_one_entry_without_pseudonym(
    status: int, identity: Identity | None, kind: EntryKind, flags: EntryFlag
) -> None:
    ledger = FakeLedger()
    rec, store = recorder(ledger)
    assert await rec.record(exchange(status=status, identity=identity), "exchange") == [0]
    (entry,) = ledger.entries
    assert (entry.kind, entry.flags, entry.pseudonym, entry.consent) == (kind, flags, None, None)
    (event,) = events(entry)
    assert patients_in(event) == []
    assert store.calls == Counter()


@pytest.mark.parametrize(
    ("decision", "status", "flags", "evidence", "consent"),
    [
        (PERMIT, 200, EntryFlag.PERMIT, ["authz"], 12),
        (DENY, 403, EntryFlag.NONE, ["authz"], 3),
        # The decision phase reads the decision, not a status that is not known yet.
        (PERMIT, 0, EntryFlag.PERMIT, ["authz"], 12),
        # A default relies on no consent: no consent index.
        (DEFAULT_DENY, 200, EntryFlag.NONE, ["authz"], None),
        # Without a decision, the RESTful event with the status given stands in for it.
        (None, 200, EntryFlag.PERMIT, ["create"], None),
        (None, 403, EntryFlag.NONE, ["create"], None),
    ],
    ids=["permit", "deny", "status-ignored", "default-deny", "no-decision", "no-decision-403"],
)
async def test_write_decision_phase(
    decision: Decision | None,
    status: int,
    flags: EntryFlag,
    evidence: list[str],
    consent: int | None,
) -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    x = exchange(CREATE, status=status, decisions={"Patient/p1": decision}, break_glass=True)
    await rec.record(x, "decision")
    (entry,) = ledger.entries
    assert entry.kind is EntryKind.ACCESS_DECISION
    assert entry.flags == flags | EntryFlag.BREAK_THE_GLASS
    assert kinds_of(events(entry)) == evidence
    assert entry.consent == consent


@pytest.mark.parametrize(
    ("status", "decision", "outcome", "flags"),
    [
        (201, PERMIT, "0", EntryFlag.PERMIT),
        (201, None, "0", EntryFlag.PERMIT),
        (422, PERMIT, "4", EntryFlag.NONE),
        (500, PERMIT, "8", EntryFlag.NONE),
    ],
    ids=["created", "created-no-decision", "rejected", "upstream-error"],
)
async def test_write_outcome_phase(
    status: int, decision: Decision | None, outcome: str, flags: EntryFlag
) -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    x = exchange(
        CREATE,
        status=status,
        decisions={"Patient/p1": decision, "Patient/p2": decision},
        resource_refs=("Observation/new1/_history/1",),
    )
    assert await rec.record(x, "outcome") == [0, 1]
    for entry, patient in zip(ledger.entries, ["Patient/p1", "Patient/p2"], strict=True):
        assert entry.kind is EntryKind.ACCESS_OUTCOME
        assert entry.flags == flags
        (event,) = events(entry)
        assert kinds_of([event]) == ["create"]
        assert event["outcome"] == outcome
        assert patients_in(event) == [patient]


@pytest.mark.parametrize("phase", ["exchange", "decision", "outcome"])
async def test_every_event_carries_the_request_id_and_the_recorded_instant(phase: Phase) -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    x = exchange(
        CREATE, decisions={"Patient/p1": PERMIT, "Patient/p2": None}, released=frozenset({"p1"})
    )
    await rec.record(x, phase)
    assert len(ledger.entries) == 2
    for entry in ledger.entries:
        assert entry.recorded_us == micros(WHEN)
        for event in events(entry):
            assert event["recorded"] == "2025-03-01T12:30:05.123Z"
            ids = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
            assert ids == [
                {
                    "what": {"identifier": {"value": RID}},
                    "type": {
                        "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                        "code": "XrequestId",
                    },
                }
            ]


async def test_a_reused_request_id_never_suppresses_an_entry() -> None:
    """No idempotency key: X-Request-Id comes from clients."""
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    x = exchange(decisions={"Patient/p1": PERMIT}, released=frozenset({"Patient/p1"}))
    assert await rec.record(x, "exchange") == [0]
    assert await rec.record(x, "exchange") == [1]
    assert [e.idempotency_key for e in ledger.entries] == [None, None]


async def test_appends_of_one_call_run_concurrently() -> None:
    ledger = BarrierLedger(expected=3)
    rec, _ = recorder(ledger)
    x = exchange(SEARCH, decisions={f"Patient/p{i}": PERMIT for i in range(3)})
    async with asyncio.timeout(2):
        assert await rec.record(x, "exchange") == [0, 1, 2]


async def test_malformed_exchange_raises_before_anything_is_appended() -> None:
    ledger = FakeLedger()
    rec, store = recorder(ledger)
    with pytest.raises(ValueError, match="raw_request"):
        await rec.record(exchange(SEARCH, raw_request=b"", decisions={"p1": None}), "exchange")
    with pytest.raises(ValueError, match="phase"):
        await rec.record(exchange(), "forwarded")  # type: ignore[arg-type]
    assert ledger.entries == []
    assert store.calls == Counter()


def test_cache_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        recorder(FakeLedger(), max_cached_pseudonyms=0)


# --- pseudonyms ----------------------------------------------------------------------------


async def test_pseudonym_is_fetched_once_per_patient_across_calls() -> None:
    ledger = FakeLedger()
    rec, store = recorder(ledger)
    for phase in ("decision", "outcome", "exchange"):
        await rec.record(exchange(decisions={"Patient/p1": PERMIT, "p2": None}), phase)
    # A bare id and Patient/<id> are one patient, asked for as Patient/<id>.
    await rec.record(exchange(decisions={"p1": PERMIT}), "exchange")
    assert store.calls == Counter({"Patient/p1": 1, "Patient/p2": 1})
    chains: dict[bytes | None, int] = Counter(e.pseudonym for e in ledger.entries)
    assert chains == {store.known["Patient/p1"]: 4, store.known["Patient/p2"]: 3}


async def test_pseudonym_cache_is_a_bounded_lru() -> None:
    rec, store = recorder(FakeLedger(), max_cached_pseudonyms=2)

    async def touch(*patients: str) -> None:
        await rec.record(exchange(decisions=dict.fromkeys(patients)), "exchange")

    await touch("p1", "p2")
    await touch("p1")  # p1 is now the most recently used
    await touch("p3")  # evicts p2, the least recently used
    await touch("p1", "p3")
    assert store.calls == Counter({"Patient/p1": 1, "Patient/p2": 1, "Patient/p3": 1})
    await touch("p2")
    assert store.calls["Patient/p2"] == 2
    # One exchange may name more patients than the cache holds; each still gets its own.
    await touch("p4", "p5", "p6")
    assert store.calls["Patient/p4"] == 1


async def test_a_cached_pseudonym_expires_so_a_forgotten_patient_moves_to_a_new_chain() -> None:
    """After the pseudonym store forgets a patient (the shred's ``forget``), the recorder
    keeps the old pseudonym only until ``pseudonym_ttl`` seconds after it fetched it (a use
    does not extend that), then writes on the patient's new chain."""
    now = [1000.0]
    ledger = FakeLedger()
    rec, store = recorder(ledger, pseudonym_ttl=60.0, clock=lambda: now[0])

    async def touch() -> bytes | None:
        await rec.record(exchange(decisions={"p1": None}), "exchange")
        return ledger.entries[-1].pseudonym

    old = await touch()
    del store.known["Patient/p1"]  # forgotten: the next fetch creates a new pseudonym
    now[0] += 59.9
    assert await touch() == old, "within the expiry: the cached (old) chain"
    now[0] += 0.1
    new = await touch()
    assert new not in (None, old)
    assert store.calls["Patient/p1"] == 2
    now[0] += 59.9
    assert await touch() == new


@pytest.mark.parametrize("ttl", [0.0, -1.0], ids=["zero", "negative"])
def test_pseudonym_expiry_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="pseudonym_ttl"):
        recorder(FakeLedger(), pseudonym_ttl=ttl)


async def test_pseudonym_store_failure_fails_closed() -> None:
    ledger = FakeLedger()

    async def down(patient: str) -> bytes:
        raise OSError("consent store down")

    rec = AuditRecorder(ledger, down, gateway=GATEWAY)
    with pytest.raises(ServiceUnavailable, match="audit trail unavailable") as info:
        await rec.record(exchange(decisions={"Patient/p1": PERMIT}), "exchange")
    assert isinstance(info.value.__cause__, OSError)
    assert ledger.entries == []


async def test_malformed_pseudonym_fails_closed_and_is_not_cached() -> None:
    ledger = FakeLedger()
    answers = [bytes(PSEUDONYM_SIZE), b"short", new_pseudonym()]

    async def flaky(patient: str) -> bytes:
        return answers.pop(0)

    rec = AuditRecorder(ledger, flaky, gateway=GATEWAY)
    x = exchange(decisions={"Patient/p1": PERMIT})
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await rec.record(x, "exchange")
    assert await rec.record(x, "exchange") == [0]


# --- failing closed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "fail_at"),
    [
        (ServiceUnavailable("ledger queue is full"), 0),
        (LedgerError("constraint"), 1),
        (OSError("disk full"), 2),
    ],
    ids=["service-unavailable", "ledger-error", "os-error"],
)
async def test_any_failed_append_raises_service_unavailable(error: Exception, fail_at: int) -> None:
    ledger = FailingLedger(error, fail_at)
    rec, _ = recorder(ledger)
    x = exchange(
        SEARCH,
        decisions={"Patient/p1": PERMIT, "Patient/p2": PERMIT, "Patient/p3": DENY},
        released=frozenset({"Patient/p1", "Patient/p2"}),
    )
    with capture_logs() as logs, pytest.raises(ServiceUnavailable) as info:
        await rec.record(x, "exchange")
    assert info.value.diagnostics == "audit trail unavailable"
    assert info.value.status == 503
    assert info.value.__cause__ is error
    assert ledger.calls == 3  # every append was tried and awaited, none left running
    # The log says what failed, never whom or what was asked.
    assert logs == [
        {
            "event": "audit trail unavailable",
            "request_id": RID,
            "error_type": type(error).__name__,
            "log_level": "error",
        }
    ]
    assert "p1" not in repr(logs)
    assert "Observation" not in repr(logs)


# --- through the real ledger ---------------------------------------------------------------


async def test_entries_land_in_a_real_ledger_with_phi_free_leaves() -> None:
    store = await MemoryLogStore.open()

    async def open_store() -> LogStore:
        return store

    service = LedgerService(open_store, SigningKey.generate("test/ledger"), origin="test/ledger")
    rec, pseudonyms = recorder(service)
    patients = {"Patient/alice-1234": PERMIT, "Patient/bob-5678": DENY}
    x = exchange(
        SEARCH,
        decisions=patients,
        released=frozenset({"Patient/alice-1234"}),
        resource_refs=("Observation/obs-alice-1",),
        narrowed=True,
    )
    try:
        assert await rec.record(x, "exchange") == [0, 1]
        assert await rec.record(x, "exchange") == [2, 3]  # same X-Request-Id, new entries
        leaves = await store.leaves(0, 4)
        evidence = [await store.evidence(i) for i in range(4)]
        alice = await store.chain(pseudonyms.known["Patient/alice-1234"])
    finally:
        await service.aclose()

    assert alice == [0, 2]
    decoded = [decode_leaf(raw) for raw in leaves]
    assert [leaf.kind for leaf in decoded] == [
        EntryKind.DISCLOSURE,
        EntryKind.ACCESS_DECISION,
    ] * 2
    assert [leaf.previous for leaf in decoded] == [None, None, 0, 1]
    assert [leaf.consent for leaf in decoded] == [12, 3, 12, 3]
    assert decoded[0].flags == EntryFlag.PERMIT | EntryFlag.NARROWED
    assert decoded[0].recorded_at == WHEN
    for raw, leaf, kept in zip(leaves, decoded, evidence, strict=True):
        assert kept is not None
        assert commit_evidence(kept.salt, kept.data) == leaf.commitment
        facts = opened(leaf.pseudonym, kept.salt, kept.data)
        assert rendered(facts)
        # PHI stays in the evidence, and encrypted: no id, reference, code or query reaches
        # the leaf, nor the stored evidence in the clear.
        for phi in (b"alice-1234", b"bob-5678", b"obs-alice-1", b"Patient", b"code=x", b"rid-"):
            assert phi not in raw
            assert phi not in kept.data
    assert evidence[0] is not None
    first = opened(decoded[0].pseudonym, evidence[0].salt, evidence[0].data)
    assert first.patient == "Patient/alice-1234"
