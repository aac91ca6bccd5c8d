"""Access, user activity and date-range reports over audit rows (pure), one table per rule."""

from __future__ import annotations

from datetime import time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.accounting import years_before
from middleware.audit.reports import (
    DATE_RANGE_COLUMNS,
    AfterHours,
    access_report,
    action_text,
    date_range,
    patients_touched,
    user_activity,
)
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryFlag, EntryKind
from tests.unit.audit.test_accounting_rows import (
    DAY,
    NOW,
    OTHER,
    PATIENT,
    PSEUDONYM,
    row,
    shredded,
)

HOUR = 3_600_000_000

# --- which rows a patient access report shows ------------------------------------------------

SHOWN = [
    ("released read", {"kind": EntryKind.DISCLOSURE}, "released"),
    ("write applied", {"kind": EntryKind.ACCESS_OUTCOME, "action": "C", "subtype": "create"},
     "written"),
    ("write failed", {"kind": EntryKind.ACCESS_OUTCOME, "outcome": "4"}, "failed"),
    ("refused", {"kind": EntryKind.ACCESS_DECISION, "flags": EntryFlag.NONE}, "refused"),
    ("permitted write decision", {"kind": EntryKind.ACCESS_DECISION}, None),
    ("consent", {"kind": EntryKind.CONSENT}, None),
    ("admin", {"kind": EntryKind.ADMIN}, None),
    ("another patient", {"patient": OTHER}, None),
    ("no patient", {"patient": None}, None),
]  # fmt: skip


@pytest.mark.parametrize(("kw", "result"), [s[1:] for s in SHOWN], ids=[s[0] for s in SHOWN])
def test_access_report_rows(kw: dict[str, object], result: str | None) -> None:
    report = access_report([row(1, **kw)], patient=PATIENT, as_of_us=NOW)  # type: ignore[arg-type]
    assert [line.result for line in report.lines] == ([] if result is None else [result])


def test_refused_attempts_can_be_left_out() -> None:
    refused = row(1, kind=EntryKind.ACCESS_DECISION, flags=EntryFlag.NONE)
    report = access_report([refused], patient=PATIENT, as_of_us=NOW, include_refused=False)
    assert report.lines == ()


PERIODS = [
    ("three years back: inside", years_before(NOW, 3), {}, 1),
    ("three years back: outside", years_before(NOW, 3) - 1, {}, 0),
    ("configured one year", years_before(NOW, 2), {"lookback_years": 1}, 0),
    ("explicit since", NOW - 2 * DAY, {"since_us": NOW - DAY}, 0),
]


@pytest.mark.parametrize(("at", "kw", "n"), [p[1:] for p in PERIODS], ids=[p[0] for p in PERIODS])
def test_access_report_period(at: int, kw: dict[str, int], n: int) -> None:
    report = access_report([row(1, at=at)], patient=PATIENT, as_of_us=NOW, **kw)  # type: ignore[arg-type]
    assert len(report.lines) == n


def test_access_report_lines_say_who_what_and_when_in_time_order() -> None:
    rows = [row(2, at=NOW - DAY, types=("Condition",)), row(1, at=NOW - 2 * DAY)]
    report = access_report(rows, patient=PATIENT, as_of_us=NOW)
    first, second = report.lines
    assert (first.index, second.index) == (1, 2)
    assert (second.agent, second.organization, second.resource_types, second.action) == (
        "Practitioner/dr1",
        "Organization/o1",
        ("Condition",),
        "searched",
    )


def test_access_report_shredded_periods() -> None:
    rows = [
        shredded(row(1, at=NOW - 3 * DAY)),
        shredded(row(2, at=NOW - 2 * DAY)),
        shredded(row(4, at=NOW - 5 * DAY, patient=OTHER)),  # another pseudonym
        row(3),
    ]
    report = access_report(rows, patient=PATIENT, as_of_us=NOW, pseudonym=PSEUDONYM)
    assert [(p.start_us, p.end_us) for p in report.shredded_periods] == [
        (NOW - 3 * DAY, NOW - 2 * DAY)
    ]


ACTIONS = [
    ({"subtype": "read"}, "read"),
    ({"subtype": "search-type"}, "searched"),
    ({"subtype": "create", "action": "C"}, "created"),
    ({"subtype": None, "action": "D"}, "deleted"),
    ({"subtype": "unheard-of", "action": "E"}, "ran an operation"),
    ({"subtype": None, "action": ""}, "unknown"),
]


@pytest.mark.parametrize(("kw", "text"), ACTIONS, ids=[a[1] for a in ACTIONS])
def test_action_text(kw: dict[str, object], text: str) -> None:
    assert action_text(row(1, **kw)) == text  # type: ignore[arg-type]


# --- user activity --------------------------------------------------------------------------


def test_user_activity_lists_every_patient_the_agent_touched() -> None:
    rows = [
        row(1, at=NOW - 3 * DAY),
        row(2, at=NOW - 2 * DAY, patient=OTHER),
        row(3, at=NOW - DAY, patient=OTHER, kind=EntryKind.ACCESS_OUTCOME),
        row(4, agent="Practitioner/dr2"),  # someone else
        row(5, at=NOW - 30 * DAY),  # before the period
        row(6, kind=EntryKind.CONSENT),  # not an access
    ]
    report = user_activity(rows, agent="Practitioner/dr1", since_us=NOW - 7 * DAY, until_us=NOW)
    assert [line.index for line in report.lines] == [1, 2, 3]
    assert patients_touched(report) == [
        (OTHER, 2, NOW - 2 * DAY, NOW - DAY),
        (PATIENT, 1, NOW - 3 * DAY, NOW - 3 * DAY),
    ]


# --- date-range report (ONC 170.315(d)(3)) ---------------------------------------------------


def test_every_audit_row_element_is_a_column() -> None:
    assert AuditRow.__struct_fields__ == DATE_RANGE_COLUMNS


SORTS = [
    ("recorded_us", False, [1, 2, 3]),
    ("recorded_us", True, [3, 2, 1]),
    ("agent", False, [2, 1, 3]),  # Practitioner/a < Practitioner/b; ties by time
    ("index", True, [3, 2, 1]),
    ("purposes", False, [3, 1, 2]),
    ("break_glass", False, [1, 3, 2]),
]


@pytest.mark.parametrize(
    ("column", "descending", "order"),
    SORTS,
    ids=[f"{s[0]}{'-desc' if s[1] else ''}" for s in SORTS],
)
def test_date_range_sorts_on_any_column(column: str, descending: bool, order: list[int]) -> None:
    rows = [
        row(3, at=NOW - DAY, agent="Practitioner/b", purposes=("a|A",)),
        row(1, at=NOW - 3 * DAY, agent="Practitioner/b", purposes=("b|B",)),
        row(2, at=NOW - 2 * DAY, agent="Practitioner/a", purposes=("c|C",), break_glass=True),
        row(4, at=NOW - 10 * DAY),  # outside the range
    ]
    chosen = date_range(
        rows, since_us=NOW - 5 * DAY, until_us=NOW, sort=column, descending=descending
    )
    assert [r.index for r in chosen] == order


def test_date_range_refuses_an_unknown_column() -> None:
    with pytest.raises(ValueError):
        date_range([], since_us=0, until_us=1, sort="nope")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 30 * DAY), max_size=30),
    st.sampled_from(DATE_RANGE_COLUMNS),
    st.booleans(),
)
def test_date_range_keeps_exactly_the_rows_of_the_period(
    offsets: list[int], column: str, descending: bool
) -> None:
    rows = [row(i, at=NOW - off) for i, off in enumerate(offsets)]
    chosen = date_range(
        rows, since_us=NOW - 10 * DAY, until_us=NOW, sort=column, descending=descending
    )
    assert sorted(r.index for r in chosen) == [
        i for i, off in enumerate(offsets) if off <= 10 * DAY
    ]


# --- after hours ----------------------------------------------------------------------------

MIDNIGHT = NOW  # 2025-03-01 00:00 UTC, a Saturday
WEEKDAY = NOW - 4 * DAY  # Tuesday
HOURS = [
    ("19-07, 18:59", "19:00-07:00", WEEKDAY + 18 * HOUR + 59 * 60_000_000, False),
    ("19-07, 19:00", "19:00-07:00", WEEKDAY + 19 * HOUR, True),
    ("19-07, 03:00", "19:00-07:00", WEEKDAY + 3 * HOUR, True),
    ("19-07, 07:00", "19:00-07:00", WEEKDAY + 7 * HOUR, False),
    ("08-18 (not wrapping), 12:00", "08:00-18:00", WEEKDAY + 12 * HOUR, True),
    ("equal ends: never", "07:00-07:00", WEEKDAY + 3 * HOUR, False),
]


@pytest.mark.parametrize(("text", "at", "late"), [h[1:] for h in HOURS], ids=[h[0] for h in HOURS])
def test_after_hours(text: str, at: int, late: bool) -> None:
    assert AfterHours.parse(text).contains(at) is late


def test_after_hours_in_a_time_zone_and_weekends() -> None:
    # 2025-02-25 14:00 UTC is 09:00 in New York: business hours there, not after hours
    window = AfterHours.parse("19:00-07:00", ZoneInfo("America/New_York"))
    assert not window.contains(WEEKDAY + 14 * HOUR)
    assert window.contains(WEEKDAY + 3 * HOUR)  # 22:00 the day before in New York
    weekends = AfterHours(time(19), time(7), weekends=True)
    assert weekends.contains(MIDNIGHT + 12 * HOUR)  # Saturday noon


@pytest.mark.parametrize("text", ["", "19:00", "25:00-07:00", "7pm-7am", "19:00-07:00-01:00"])
def test_after_hours_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        AfterHours.parse(text)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([PATIENT, OTHER, None]),
            st.sampled_from(list(EntryKind)),
            st.sampled_from([EntryFlag.NONE, EntryFlag.PERMIT]),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_an_access_report_never_shows_another_patient(
    specs: list[tuple[str | None, EntryKind, EntryFlag, bool]],
) -> None:
    rows = [
        shredded(row(i, patient=p, kind=k, flags=f)) if gone else row(i, patient=p, kind=k, flags=f)
        for i, (p, k, f, gone) in enumerate(specs)
    ]
    report = access_report(rows, patient=PATIENT, as_of_us=NOW)
    assert all(line.patient == PATIENT for line in report.lines)
    shown = {line.index for line in report.lines}
    expected = {
        i
        for i, (p, k, f, gone) in enumerate(specs)
        if p == PATIENT
        and not gone
        and (
            k in (EntryKind.DISCLOSURE, EntryKind.ACCESS_OUTCOME)
            or (k == EntryKind.ACCESS_DECISION and f == EntryFlag.NONE)
        )
    }
    assert shown == expected
