"""The verifier's fast path (``export_fast``, tried by ``ExportChecker.run``) changes nothing
a report says: on untouched and edited exports (characters changed, lines dropped, repeated,
swapped, taken from another export; both formats; rules, date-range and access reports), the
report is the one the full path alone gives (every line through ``ExportChecker.entry``, the
loop verify_export ran before the fast path), findings in the same order, the same cap."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import verify_report
from middleware.audit.export_fast import csv_same, ndjson_same
from middleware.audit.export_read import decode_raw_line, ndjson_lines
from middleware.audit.export_read_csv import csv_lines
from middleware.audit.report_csv import csv_escape
from middleware.audit.row import AuditRow
from middleware.audit.verify_export import ExportReport, begin_export, verify_file
from tests.unit.audit.export_fixtures import HOUR, POLICY, T0, build_log, export, fake_opener

LOG = build_log()
LOG_CONSENTS = build_log(consents=frozenset({4}))


def _no_research(row: AuditRow) -> bool:
    return "HRESCH" not in " ".join(row.purposes)


def _full_path(text: str, **kwargs: Any) -> ExportReport:
    """verify_export as it was before the fast path: every entry line judged by ``entry``."""
    lines = iter(io.StringIO(text))
    report, check = begin_export(next(lines, ""), POLICY, opener=fake_opener, **kwargs)
    if check is None:
        return report
    read = csv_lines if check.escaped else ndjson_lines
    for number, entry in read(lines, check.names):
        report.lines += 1
        if isinstance(entry, str):
            report.add("line-malformed", entry, number)
        else:
            check.entry(number, entry)
    check.finish()
    return report


EXPORTS = [
    (export(LOG, fmt=fmt, since_us=since, until_us=until, report=report, exclude=exclude), kw)
    for fmt in ("ndjson", "csv")
    for report in ("access-report", "date-range")
    for since, until in ((T0 + 2 * HOUR, T0 + 8 * HOUR), (None, None))
    for exclude, kw in (
        (frozenset(), {}),
        (frozenset({4}), {"rules": {"access-report": _no_research, "date-range": _no_research}}),
    )
] + [(export(LOG_CONSENTS, fmt=fmt, exclude=frozenset({4})), {}) for fmt in ("ndjson", "csv")]


@st.composite
def edited(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    text, kwargs = draw(st.sampled_from(EXPORTS))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(1, len(lines) - 1)) if len(lines) > 1 else 0
        edit = draw(st.sampled_from(["char", "drop", "repeat", "swap", "foreign", "blank"]))
        if edit == "char":
            line = lines[at]
            where = draw(st.integers(0, max(len(line) - 2, 0)))
            char = draw(st.characters(min_codepoint=32, max_codepoint=126))
            lines[at] = line[:where] + char + line[where + 1 :]
        elif edit == "drop":
            del lines[at]
        elif edit == "repeat":
            lines.insert(at, lines[at])
        elif edit == "swap" and at + 1 < len(lines):
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        elif edit == "foreign":
            other = draw(st.sampled_from(EXPORTS))[0].splitlines(keepends=True)
            lines.insert(at, other[draw(st.integers(1, len(other) - 1))])
        elif edit == "blank":
            lines.insert(at, "\n")
    return "".join(lines), kwargs


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited())
def test_the_report_is_the_full_paths(case: tuple[str, dict[str, Any]]) -> None:
    text, kwargs = case
    fast = verify_file(io.StringIO(text), POLICY, opener=fake_opener, **kwargs)
    assert fast.to_json() == _full_path(text, **kwargs).to_json()


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
