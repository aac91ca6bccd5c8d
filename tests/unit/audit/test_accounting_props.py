"""Properties of the accounting of disclosures over any mix of rows (hypothesis).

1. No row of another patient ever appears in an entry.
2. No row with an exempt purpose (every purpose exempt) ever appears.
3. Every accountable disclosure of the patient in the period appears exactly once, in full or
   within a summary; the left-out counts add up with it to every disclosure of the period.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.accounting import DEFAULT_EXEMPT, AccountingRules, account, years_before
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryKind
from tests.unit.audit.test_accounting_rows import AR, DAY, NOW, OTHER, PATIENT, row

CODES = ["TREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH", "PATRQT", "HLEGAL", "HDIRECT"]
AGENTS = ["Practitioner/a", "Practitioner/b", PATIENT, OTHER, None]


@st.composite
def rows(draw: st.DrawFn) -> list[AuditRow]:
    count = draw(st.integers(0, 40))
    out = []
    for index in range(count):
        out.append(
            row(
                index,
                at=NOW - draw(st.integers(-2 * DAY, 7 * 365 * DAY)),
                kind=draw(st.sampled_from(list(EntryKind))),
                patient=draw(st.sampled_from([PATIENT, PATIENT, OTHER, None])),
                agent=draw(st.sampled_from(AGENTS)),
                organization=draw(st.sampled_from(["Organization/o1", "Organization/o2", None])),
                purposes=tuple(
                    f"{AR}|{c}"
                    for c in draw(st.lists(st.sampled_from(CODES), max_size=3, unique=True))
                ),
            )
        )
    return out


def exempt(r: AuditRow) -> bool:
    return bool(r.purposes) and all(p in DEFAULT_EXEMPT for p in r.purposes)


@settings(max_examples=200, deadline=None)
@given(rows())
def test_accounting_properties(sample: list[AuditRow]) -> None:
    result = account(sample, patient=PATIENT, as_of_us=NOW)
    since = years_before(NOW, AccountingRules().lookback_years)
    by_index = {r.index: r for r in sample}
    listed = [i for entry in result.entries for i in entry.indexes]

    # 1. never another patient's row
    assert all(by_index[i].patient == PATIENT for i in listed)
    # 2. never an exempt one, nor one to the patient themself
    assert not any(exempt(by_index[i]) or by_index[i].agent == PATIENT for i in listed)
    # 3. every accountable disclosure exactly once
    expected = [
        r.index
        for r in sample
        if r.patient == PATIENT
        and r.kind == EntryKind.DISCLOSURE
        and since <= r.recorded_us <= NOW
        and not exempt(r)
        and r.agent != PATIENT
    ]
    assert sorted(listed) == sorted(expected)
    in_period = [
        r
        for r in sample
        if r.patient == PATIENT and r.kind == EntryKind.DISCLOSURE and since <= r.recorded_us <= NOW
    ]
    assert len(listed) + sum(result.left_out.values()) == len(in_period)
    # summaries: one recipient and one purpose each, members in time order
    for entry in result.entries:
        keys = {(d.recipient.agent, d.recipient.organization, d.purposes) for d in entry.members}
        assert len(keys) == 1
        times = [d.recorded_us for d in entry.members]
        assert times == sorted(times)
