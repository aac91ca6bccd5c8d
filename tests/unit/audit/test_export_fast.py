"""The verifier's fast path (``export_fast``, tried by ``ExportChecker.run``) changes nothing
a report says: on untouched and edited exports (characters changed, lines dropped, repeated,
swapped, taken from another export, genuine rows of other scopes inserted, the header's scope
changed; both formats; rules, date-range, access and user reports of two patients), the
report is the one the full path alone gives (every line through ``ExportChecker.entry``, the
loop verify_export ran before the fast path), findings in the same order, the same cap.
``test_export_fast_real`` runs the same with the real opener on exports the CLI made."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import verify_report
from middleware.audit.export import ExportHeader, entries_for, format_time
from middleware.audit.export_columns import columns_for
from middleware.audit.export_fast import csv_same, ndjson_same
from middleware.audit.export_read import decode_raw_line
from middleware.audit.export_write import write_csv, write_ndjson
from middleware.audit.report_csv import csv_escape
from middleware.audit.row import AuditRow
from middleware.audit.verify_export import ExportReport, verify_file
from middleware.ledger.tree import MerkleLevels
from tests.contract.helpers import ORIGIN
from tests.unit.audit.export_edits import edited, full_path, row_lines, with_line
from tests.unit.audit.export_fixtures import (
    HOUR,
    POLICY,
    T0,
    Log,
    ReferenceProofs,
    build_log,
    export,
    fake_opener,
)

LOG = build_log()
LOG_CONSENTS = build_log(consents=frozenset({4}))
PERIOD = (T0 + 2 * HOUR, T0 + 8 * HOUR)


def _no_research(row: AuditRow) -> bool:
    return "HRESCH" not in " ".join(row.purposes)


def _full_path(text: str, **kwargs: Any) -> ExportReport:
    return full_path(text, POLICY, fake_opener, **kwargs)


def user_export(
    log: Log, agent: str, since_us: int | None, until_us: int | None, *, fmt: str
) -> str:
    """A user report of ``log``: a row line for each of ``agent``'s entries in the period,
    no chain (as ``consentry audit export --report user-report`` writes it)."""
    names, cells_of = columns_for("user-report")
    inside = [
        i
        for i, row in sorted(log.rows.items())
        if row.agent == agent
        and (since_us is None or row.recorded_us >= since_us)
        and (until_us is None or row.recorded_us <= until_us)
    ]
    header = ExportHeader(
        report="user-report",
        columns=names,
        checkpoint=log.note,
        origin=ORIGIN,
        agent=agent,
        since_us=since_us,
        until_us=until_us,
    )
    entries = entries_for(
        [("row", i) for i in inside],
        tree=ReferenceProofs(MerkleLevels.of_leaves(log.leaves)),
        size=log.size,
        leaves=dict(enumerate(log.leaves)),
        openings=log.openings,
        columns={i: c for i in inside if (c := cells_of(log.rows[i])) is not None},
    )
    out = io.StringIO(newline="")
    (write_csv if fmt == "csv" else write_ndjson)(header, entries, out)
    return out.getvalue()


_RULES = {"rules": {"access-report": _no_research, "date-range": _no_research}}
EXPORTS = (
    [
        (
            export(LOG, patient, *period, fmt=fmt, report=report, exclude=exclude),
            kw,
        )
        for fmt in ("ndjson", "csv")
        for report in ("access-report", "date-range")
        for patient in ("Patient/a", "Patient/b")
        for period in (PERIOD, (None, None))
        for exclude, kw in ((frozenset(), {}), (frozenset({4}), _RULES))
        if patient == "Patient/a" or not exclude
    ]
    + [(export(LOG_CONSENTS, fmt=fmt, exclude=frozenset({4})), {}) for fmt in ("ndjson", "csv")]
    + [
        (user_export(LOG, f"Practitioner/p{n}", *period, fmt=fmt), {})
        for fmt in ("ndjson", "csv")
        for n in (1, 2)
        for period in (PERIOD, (None, None))
    ]
)
_EDITED = edited(
    EXPORTS,
    times=[format_time(T0 + n * HOUR + d) for n in range(12) for d in (-1, 0, 1)],
    patients=["Patient/a", "Patient/b"],
    agents=[f"Practitioner/p{n}" for n in range(3)],
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITED)
def test_the_report_is_the_full_paths(case: tuple[str, dict[str, Any]]) -> None:
    text, kwargs = case
    fast = verify_file(io.StringIO(text), POLICY, opener=fake_opener, **kwargs)
    assert fast.to_json() == _full_path(text, **kwargs).to_json()


# A genuine row of another export of the same log, outside this export's scope, that only
# the named check refuses (the row's cells are right, its proof holds, the report's rule
# does not look at what is wrong; a date-range and a user report have no patient rule).
_SCOPE_CASES = {
    "since": (("access-report", "Patient/a", PERIOD), ("access-report", "Patient/a", None), 0),
    "until": (("access-report", "Patient/a", PERIOD), ("access-report", "Patient/a", None), 9),
    "patient": (("date-range", "Patient/a", None), ("date-range", "Patient/b", None), 2),
    "agent": (
        ("user-report", "Practitioner/p1", None),
        ("user-report", "Practitioner/p2", None),
        2,
    ),
}


def _scoped(fmt: str, report: str, who: str, period: tuple[int, int] | None) -> str:
    since, until = period or (None, None)
    if report == "user-report":
        return user_export(LOG, who, since, until, fmt=fmt)
    return export(LOG, who, since, until, fmt=fmt, report=report)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("check", sorted(_SCOPE_CASES))
def test_a_genuine_row_out_of_scope_is_a_scope_finding(fmt: str, check: str) -> None:
    """Each scope check of the fast path (period's start and end, patient, agent) has a line
    only it refuses: the full path finds it out of scope, the fast path says the same."""
    target, source, index = _SCOPE_CASES[check]
    text = with_line(_scoped(fmt, *target), row_lines(_scoped(fmt, *source))[index])
    full = _full_path(text)
    line = 3 if fmt == "csv" else 2
    assert ("scope", line) in [(f["code"], f["line"]) for f in full.to_json()["findings"]]
    assert verify_file(io.StringIO(text), POLICY, opener=fake_opener).to_json() == full.to_json()


@pytest.mark.parametrize("cap", [1, 3])
@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_the_capped_report_is_the_full_paths(
    cap: int, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows edited and one dropped, past MAX_FINDINGS: the same findings kept, the same omitted."""
    lines = export(LOG, fmt=fmt, since_us=None, until_us=None).splitlines(keepends=True)
    lines[2:] = [line.replace("Observation", "Observatiom") for line in lines[2:]]
    del lines[5]
    text = "".join(lines)
    monkeypatch.setattr(verify_report, "MAX_FINDINGS", cap)
    fast = verify_file(io.StringIO(text), POLICY, opener=fake_opener)
    assert fast.omitted > 0
    assert fast.to_json() == _full_path(text).to_json()


def test_a_written_ndjson_row_takes_the_fast_comparison() -> None:
    """The exporter's columns object is byte for byte what ndjson_same encodes (else every
    row would fall back to the full path: right, but slow)."""
    text = export(LOG, since_us=None, until_us=None, report="date-range")
    first, *rest = text.splitlines()
    names = tuple(json.loads(first)["columns"])
    same = ndjson_same(names)
    rows = [decode_raw_line(line) for line in rest]
    rows = [r for r in rows if r.role == "row"]
    assert rows
    for raw in rows:
        values = tuple(json.loads(bytes(raw.columns)).values())
        assert same(values, raw.columns)
        assert not same((*values[:-1], values[-1] + "x"), raw.columns)
        assert not same(values[:-1], raw.columns)


@pytest.mark.parametrize(
    ("cells", "given", "equal"),
    [
        (("a", "=1"), ("a", "'=1"), True),
        (("a", "=1"), ("a", "=1"), False),
        (("a", "b"), ("a", "b"), True),
        (("a", "b"), ("a", "b", ""), False),
    ],
    ids=["escaped-formula", "unescaped-formula", "plain", "longer"],
)
def test_csv_cells_compare_as_the_file_holds_them(
    cells: tuple[str, ...], given: tuple[str, ...], equal: bool
) -> None:
    assert csv_same(cells, given) is equal


def test_column_names_msgspec_does_not_write_leave_every_row_to_the_full_path() -> None:
    same = ndjson_same(("a", 'b"'))
    assert not same(("1", "2"), decode_raw_line(_LINE_WITH_ODD_NAMES).columns)


_LINE_WITH_ODD_NAMES = (
    '{"role":"row","index":0,"leaf":"","proof":"","columns":{"a":"1","b\\"":"2"}}'
)


@settings(max_examples=1000)
@given(
    st.lists(
        st.text(st.sampled_from(["a", "=", "+", "-", "@", "\t", "\r", "'", "\0", " "])), max_size=5
    ),
    st.booleans(),
)
def test_csv_same_is_the_escaped_comparison(cells: list[str], escape: bool) -> None:
    """csv_same answers what comparing csv_escape of every cell answers, whether the record
    holds the cells escaped or as they are."""
    given = tuple(csv_escape(c) for c in cells) if escape else tuple(cells)
    assert csv_same(cells, given) is (tuple(csv_escape(c) for c in cells) == given)
