"""Which entries an exchange makes (audit/plan.py), pinned where mutation testing found the
golden rendering blind: the leaf's kind, flags and consent index are not rendered, so the
rendering tests cannot see them; the known answers are the recorder's module docstring table
and ``EntryFlag``'s documented bits (ledger leaf version 1)."""

from __future__ import annotations

import pytest

from middleware.audit.parts import AgentInfo
from middleware.audit.plan import Exchange, Phase, plan, plan_break_glass
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, TraceStep
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.leaf import EntryFlag, EntryKind

GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
USER = Identity(
    subject="user-42",
    issuer="https://idp.example",
    expires_at=1e10,
    scopes=(Scope("user", "Observation", frozenset("rs")),),
    fhir_user="Practitioner/pr1",
)
READ = FhirRequest(
    Interaction.READ, "GET", Level.INSTANCE, "Observation/o1", b"", "Observation", "o1"
)
SEARCH = FhirRequest(
    Interaction.SEARCH_TYPE, "GET", Level.TYPE, "Observation", b"code=x", "Observation"
)
CREATE = FhirRequest(Interaction.CREATE, "POST", Level.TYPE, "Observation", b"", "Observation")
PERMIT = Decision("permit", (), (TraceStep("c1", 4, "provision", "r"),))
DENY = Decision("deny", (), (TraceStep("c2", 9, "provision", "r"),))
P, F = EntryFlag.PERMIT, EntryFlag.NONE
DISCLOSURE, DECISION, OUTCOME = (
    EntryKind.DISCLOSURE,
    EntryKind.ACCESS_DECISION,
    EntryKind.ACCESS_OUTCOME,
)


def _exchange(
    request: FhirRequest = READ,
    *,
    status: int = 200,
    decision: Decision | None = PERMIT,
    released: frozenset[str] = frozenset({"Patient/p1"}),
    narrowed: bool = False,
    break_glass: bool = False,
    request_id: str = "rid-1",
    raw: bytes = b"GET /fhir/Observation/o1",
) -> Exchange:
    return Exchange(
        request=request,
        identity=USER,
        status=status,
        request_id=request_id,
        raw_request=raw,
        client_address="192.0.2.7",
        decisions={"Patient/p1": decision},
        released=released,
        narrowed=narrowed,
        break_glass=break_glass,
    )


# id, exchange, phase, expected kind, expected flags
KINDS_AND_FLAGS: list[tuple[str, Exchange, Phase, EntryKind, EntryFlag]] = [
    # exchange phase: DISCLOSURE only below 400 and for a released patient
    ("released-read", _exchange(), "exchange", DISCLOSURE, P),
    ("withheld-read", _exchange(released=frozenset()), "exchange", DECISION, P),
    ("status-399", _exchange(status=399), "exchange", DISCLOSURE, P),
    ("status-400", _exchange(status=400), "exchange", DECISION, F),
    ("denied-read", _exchange(status=403, decision=DENY), "exchange", DECISION, F),
    # a permitting decision does not make a failed answer a permit, nor a denial a permit at 200
    ("permit-but-500", _exchange(status=500), "exchange", DECISION, F),
    ("deny-at-200", _exchange(decision=DENY, released=frozenset()), "exchange", DECISION, F),
    ("no-decision", _exchange(decision=None), "exchange", DISCLOSURE, P),
    ("no-decision-400", _exchange(decision=None, status=400), "exchange", DECISION, F),
    # NARROWED and BREAK_THE_GLASS only as the exchange says
    ("narrowed", _exchange(narrowed=True), "exchange", DISCLOSURE, P | EntryFlag.NARROWED),
    ("break-glass", _exchange(break_glass=True), "exchange", DISCLOSURE, P | EntryFlag.BREAK_THE_GLASS),
    ("narrowed-denied", _exchange(status=403, decision=DENY, narrowed=True), "exchange", DECISION, EntryFlag.NARROWED),
    # decision phase: ACCESS_DECISION; the decision counts, the status is not known yet
    ("decision-permit", _exchange(CREATE, status=201), "decision", DECISION, P),
    ("decision-permit-status-unknown", _exchange(CREATE, status=503), "decision", DECISION, P),
    ("decision-deny", _exchange(CREATE, status=201, decision=DENY), "decision", DECISION, F),
    ("decision-none-status", _exchange(CREATE, status=403, decision=None), "decision", DECISION, F),
    ("decision-none-ok", _exchange(CREATE, status=201, decision=None), "decision", DECISION, P),
    # outcome phase: ACCESS_OUTCOME, PERMIT from the upstream's status and the decision
    ("outcome-201", _exchange(CREATE, status=201), "outcome", OUTCOME, P),
    ("outcome-400", _exchange(CREATE, status=400), "outcome", OUTCOME, F),
    ("outcome-deny", _exchange(CREATE, status=201, decision=DENY), "outcome", OUTCOME, F),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exchange", "phase", "kind", "flags"),
    [c[1:] for c in KINDS_AND_FLAGS],
    ids=[c[0] for c in KINDS_AND_FLAGS],
)
def test_each_phase_plans_the_documented_kind_and_flags(
    exchange: Exchange, phase: Phase, kind: EntryKind, flags: EntryFlag
) -> None:
    (entry,) = plan(exchange, phase, 1, GATEWAY)
    assert (entry.kind, entry.flags) == (kind, flags)


@pytest.mark.parametrize(
    ("decision", "consent"),
    [
        (PERMIT, 4),
        (Decision("permit", (), (TraceStep("a", 3, "p", ""), TraceStep("b", 8, "p", ""))), 8),
        (Decision("permit", (), (TraceStep("a", None, "p", ""),)), None),
        (None, None),
    ],
    ids=["one-consent", "newest-of-two", "no-index", "no-decision"],
)
def test_the_leaf_consent_index_is_the_newest_relied_on(
    decision: Decision | None, consent: int | None
) -> None:
    (entry,) = plan(_exchange(decision=decision), "exchange", 1, GATEWAY)
    assert entry.consent == consent


@pytest.mark.parametrize(
    ("exchange", "message"),
    [
        (_exchange(request_id=""), "request_id must not be empty"),
        (_exchange(SEARCH, raw=b""), "raw_request is required for a query interaction"),
    ],
    ids=["empty-request-id", "query-without-raw-request"],
)
def test_a_malformed_exchange_says_why(exchange: Exchange, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        plan(exchange, "exchange", 1, GATEWAY)


@pytest.mark.parametrize(
    ("phase", "flags"),
    [("started", EntryFlag.BREAK_THE_GLASS | EntryFlag.PERMIT), ("stopped", EntryFlag.BREAK_THE_GLASS)],
    ids=["started", "stopped"],
)  # fmt: skip
def test_break_glass_entries_are_flagged_and_started_permits(phase: str, flags: EntryFlag) -> None:
    entries = plan_break_glass(
        phase,  # type: ignore[arg-type]
        identity=USER,
        patients=["p1", "Patient/p1", "p2"],
        recorded_us=1,
        request_id="rid-1",
        gateway=GATEWAY,
        client_address=None,
        reason=None,
    )
    assert [(e.kind, e.flags, e.facts.patient) for e in entries] == [
        (DECISION, flags, "Patient/p1"),
        (DECISION, flags, "Patient/p2"),
    ]


@pytest.mark.parametrize(
    ("patients", "request_id"),
    [([], "rid-1"), (["p1"], "")],
    ids=["no-patient", "empty-request-id"],
)
def test_a_break_glass_entry_names_its_patients_and_request_id(
    patients: list[str], request_id: str
) -> None:
    with pytest.raises(
        ValueError, match=r"^a break-the-glass entry names its patients and request id$"
    ):
        plan_break_glass(
            "started",
            identity=USER,
            patients=patients,
            recorded_us=1,
            request_id=request_id,
            gateway=GATEWAY,
            client_address=None,
            reason=None,
        )
