"""What each entry of an audited exchange names (audit/entities.py), against what the recorder
named before the decision moved there: the interactions ``exchange_of`` kept the resources
of, and the per-patient choice ``plan`` made inline (both kept verbatim below as the known
answers). The golden cases add the combinations ``test_render.py`` does not list (resources
with a withheld patient, several patients, a search as the pipeline records it, a batch, a
failed write outcome), rendered and compared with the old event building."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit.entities import NAMED_RESOURCES, Phase, entries, named_resources
from middleware.audit.facts import row_of
from middleware.audit.parts import patient_reference
from middleware.audit.plan import Exchange, plan
from middleware.audit.render import render_events
from middleware.consent.decide import Decision
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.leaf import EntryKind, micros
from tests.unit.audit.old_events import old_plan
from tests.unit.audit.test_render import (
    BATCH,
    CREATE,
    DELETE,
    DENY,
    GATEWAY,
    P1,
    P2,
    PERMIT,
    SEARCH,
    UPDATE,
    VREAD,
    WHEN,
    exchanges,
    through_evidence,
    x,
)

#: proxy/exchange_audit.py's _NAMED_RESOURCES before the choice moved to entities.py.
O1, O2 = "Observation/o1", "Observation/o2"
_OLD_NAMED = frozenset(
    {
        Interaction.READ,
        Interaction.VREAD,
        Interaction.HISTORY_INSTANCE,
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.PATCH,
        Interaction.DELETE,
    }
)


def _old_entries(
    x: Exchange, phase: Phase
) -> list[tuple[str | None, Decision | None, EntryKind, tuple[str, ...]]]:
    """(patient, decision, kind, refs) of each entry as plan() chose them inline before."""
    released = {patient_reference(p) for p in x.released} if x.released else set()
    targets: list[tuple[str | None, Decision | None]] = [
        (patient_reference(p), d) for p, d in x.decisions.items()
    ] or [(None, None)]
    out = []
    for patient, decision in targets:
        refs: Sequence[str] = x.resource_refs
        if phase == "exchange":
            disclosed = x.status < 400 and (patient is None or patient in released)
            kind = EntryKind.DISCLOSURE if disclosed else EntryKind.ACCESS_DECISION
            refs = refs if disclosed or patient is None else ()
        elif phase == "decision":
            kind = EntryKind.ACCESS_DECISION
        else:
            kind = EntryKind.ACCESS_OUTCOME
        out.append((patient, decision, kind, tuple(refs)))
    return out


@pytest.mark.parametrize("interaction", list(Interaction))
def test_the_named_interactions_are_the_ones_exchange_of_named(interaction: Interaction) -> None:
    refs = ["Observation/a", "Condition/b"]
    expected = tuple(refs) if interaction in _OLD_NAMED else ()
    assert named_resources(interaction, refs) == expected
    assert NAMED_RESOURCES == _OLD_NAMED


@given(exchanges, st.sampled_from(["exchange", "decision", "outcome"]))
def test_each_entry_names_what_plan_named_inline(exchange: Exchange, phase: Phase) -> None:
    """Property: same patients, decisions, kinds and resources, entry by entry; the plan's
    facts carry exactly what entries() chose; the index row follows the facts."""
    expected = _old_entries(exchange, phase)
    chosen = entries(
        phase, exchange.status, exchange.decisions, exchange.released, exchange.resource_refs
    )
    assert [(p, d, r) for p, d, _, r in chosen] == [(p, d, r) for p, d, _, r in expected]
    planned = plan(exchange, phase, micros(WHEN), GATEWAY)
    assert [(p.facts.patient, p.facts.decision is not None, p.kind, p.facts.resource_refs) for p in planned] == [
        (p, d is not None, k, r) for p, d, k, r in expected
    ]  # fmt: skip
    for p in planned:
        row = row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=None)
        assert row.patient == p.facts.patient


_FORMS = ["p1", "Patient/p1", "p2", "Patient/p2", "Patient/p-3.x"]


@given(
    st.sampled_from(["exchange", "decision", "outcome"]),
    st.sampled_from([0, 200, 399, 400, 403, 502]),
    st.dictionaries(st.sampled_from([*_FORMS, "bad/x"]), st.sampled_from([None, PERMIT, DENY]), max_size=4),
    st.sets(st.sampled_from([*_FORMS, "Observation/o"])).map(frozenset),
    st.lists(st.sampled_from([O1, O2]), max_size=2).map(tuple),
)  # fmt: skip
def test_a_patient_in_either_form_is_disclosed_as_before(
    phase: Phase,
    status: int,
    decisions: dict[str, Decision | None],
    released: frozenset[str],
    refs: tuple[str, ...],
) -> None:
    """Property, the same patient given in the same or another form (``p1``, ``Patient/p1``)
    in the decisions and the released set, malformed ones included: entries() (which makes a
    released patient's reference once) chooses what plan() chose inline, or raises as it did."""
    ex = x(status=status, decisions=decisions, released=released, resource_refs=refs)
    old = _raises(lambda: _old_entries(ex, phase))
    new = _raises(lambda: entries(phase, status, decisions, released, refs))
    assert new == old
    if old is None:
        assert [(p, d, r) for p, d, _, r in entries(phase, status, decisions, released, refs)] == [
            (p, d, r) for p, d, _, r in _old_entries(ex, phase)
        ]
        kinds = [p.kind for p in plan(ex, phase, micros(WHEN), GATEWAY)]
        assert kinds == [k for _, _, k, _ in _old_entries(ex, phase)]


def _raises(run: object) -> str | None:
    try:
        run()  # type: ignore[operator]
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("phase", ["exchange", "decision", "outcome"])
@pytest.mark.parametrize(
    ("decisions", "released"),
    [({}, {"bad/id"}), ({"bad/id": None}, set()), ({"p1": None}, {"Observation/o"})],
)
def test_a_malformed_patient_raises_as_before(
    phase: Phase, decisions: dict[str, Decision | None], released: set[str]
) -> None:
    """A malformed patient in either the decisions or the released set raises, whatever the
    phase and status (fail closed: no entry about a patient that is not one)."""
    for status in (200, 500):
        ex = x(status=status, decisions=decisions, released=frozenset(released))
        old = _raises(lambda: _old_entries(ex, phase))  # noqa: B023 - called at once
        new = _raises(lambda: plan(ex, phase, micros(WHEN), GATEWAY))  # noqa: B023
        assert old is not None
        assert new == old


SEARCH_PATIENTS = FhirRequest(
    Interaction.SEARCH_TYPE, "GET", Level.TYPE, "Observation", b"code=x", "Observation"
)
HISTORY = FhirRequest(
    Interaction.HISTORY_INSTANCE, "GET", Level.INSTANCE, "Observation/o1/_history", b"",
    "Observation", "o1",
)  # fmt: skip
CASES: list[tuple[str, Exchange, Phase]] = [
    ("read-released-names-the-resource", x(decisions={P1: PERMIT}, released={P1}, resource_refs=(O1,)), "exchange"),
    ("read-withheld-names-the-request", x(decisions={P1: DENY}, released=frozenset(), resource_refs=(O1,)), "exchange"),
    (
        "read-two-patients-one-withheld",
        x(decisions={P1: PERMIT, P2: DENY}, released={P1}, resource_refs=(O1,), narrowed=True),
        "exchange",
    ),
    ("read-released-but-failed", x(status=502, decisions={P1: PERMIT}, released={P1}, resource_refs=(O1,)), "exchange"),
    ("read-own-record-refs", x(decisions={P1: None}, released={P1}, resource_refs=(O1,)), "exchange"),
    ("vread-released", x(VREAD, decisions={"p1": PERMIT}, released={"p1"}, resource_refs=(O1 + "/_history/3",)), "exchange"),
    ("history-instance", x(HISTORY, decisions={P1: PERMIT, P2: PERMIT}, released={P2}, resource_refs=(O1, O1)), "exchange"),
    # a search as exchange_of records it: no resources, the query names the answer
    ("search-as-recorded", x(SEARCH_PATIENTS, decisions={P1: PERMIT, P2: DENY}, released={P1}), "exchange"),
    ("search-refs-none-released", x(SEARCH, decisions={P1: DENY, P2: DENY}, resource_refs=(O1, O2)), "exchange"),
    ("no-patient-failed-keeps-refs", x(status=500, resource_refs=(O1,)), "exchange"),
    ("batch-exchange-withheld", x(BATCH, decisions={P1: PERMIT, P2: DENY}, released={P1}, resource_refs=(O1, O2)), "exchange"),
    # writes: every patient's entry names what was written, whatever the status
    ("create-decision-refs-no-decision", x(CREATE, decisions={P1: None}, resource_refs=(O1,)), "decision"),
    ("update-decision-several", x(UPDATE, decisions={P1: PERMIT, P2: DENY}, released={P1}, resource_refs=(O1,)), "decision"),
    ("create-outcome-failed-504", x(CREATE, status=504, decisions={P1: PERMIT, P2: PERMIT}, resource_refs=(O1,)), "outcome"),
    ("update-outcome-several", x(UPDATE, decisions={P1: PERMIT, P2: PERMIT}, released={P1}, resource_refs=(O1,)), "outcome"),
    ("delete-denied-exchange", x(DELETE, status=403, decisions={P1: DENY}, resource_refs=(O1,)), "exchange"),
    ("batch-outcome-several", x(BATCH, status=200, decisions={P1: PERMIT, P2: None}, resource_refs=(O1, O2)), "outcome"),
]  # fmt: skip


@pytest.mark.parametrize(("exchange", "phase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rendering_equals_the_events_the_recorder_built(exchange: Exchange, phase: Phase) -> None:
    expected = old_plan(exchange, phase, WHEN, GATEWAY)
    planned = plan(exchange, phase, micros(WHEN), GATEWAY)
    assert [p.facts.patient for p in planned] == [patient for patient, _ in expected]
    assert [render_events(through_evidence(p.facts)) for p in planned] == [
        events for _, events in expected
    ]
    assert [(p.kind, p.facts.resource_refs) for p in planned] == [
        (k, r) for _, _, k, r in _old_entries(exchange, phase)
    ]
    for p in planned:
        row = row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=None)
        last = render_events(p.facts)[-1]
        assert (row.action, row.outcome, row.patient) == (
            last["action"],
            last["outcome"],
            p.facts.patient,
        )


def test_a_withheld_patient_names_no_released_resource() -> None:
    """The reason for the per-patient choice: a denied patient's entry must not list the
    resources released for another patient of the same exchange."""
    ex = x(decisions={P1: PERMIT, P2: DENY}, released={P1}, resource_refs=(O1,))
    by_patient = {p.facts.patient: p for p in plan(ex, "exchange", micros(WHEN), GATEWAY)}
    assert by_patient[P1].facts.resource_refs == (O1,)
    assert by_patient[P1].kind is EntryKind.DISCLOSURE
    assert by_patient[P2].facts.resource_refs == ()
    assert by_patient[P2].kind is EntryKind.ACCESS_DECISION
