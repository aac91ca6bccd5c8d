"""The verifier's fast path with the real opener (``cli_reports.facts_opener``: sealed facts,
real entry keys) on exports ``consentry audit export`` made (``export_real``): every row of
an untouched export passes on the fast path, and on edited exports (``export_edits``) the
report is the one the full path alone gives. The fixture's exports carry no entry key, so
there the real opener refuses every line and only the full path runs."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from middleware.audit.cli_reports import facts_opener
from middleware.audit.export import format_time
from middleware.audit.verify_export import begin_export, verify_file
from tests.unit.audit.export_edits import edited, full_path, row_lines, with_line
from tests.unit.audit.export_real import HOUR, REAL_POLICY, SCOPES, T0, real_exports

_POOL: list[tuple[str, dict[str, Any]]] = [(text, {}) for _, text in sorted(real_exports().items())]
_EDITED = edited(
    _POOL,
    times=[format_time(T0 + n * HOUR + d) for n in range(0, 60, 3) for d in (-1, 0, 1)],
    patients=["Patient/a", "Patient/b", "Patient/c"],
    agents=[f"Practitioner/pr-{n}" for n in range(4)],
)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("name", sorted(SCOPES))
def test_every_row_of_a_real_export_passes_on_the_fast_path(name: str, fmt: str) -> None:
    text = real_exports()[name, fmt]
    lines = iter(io.StringIO(text))
    _, check = begin_export(next(lines), REAL_POLICY, opener=facts_opener)
    assert check is not None
    passed = [number for number, verdict in check.judge(lines) if isinstance(verdict, tuple)]
    assert len(passed) == len(row_lines(text)) > 0
    assert verify_file(io.StringIO(text), REAL_POLICY, opener=facts_opener).ok


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITED)
def test_the_report_is_the_full_paths(case: tuple[str, dict[str, Any]]) -> None:
    text, _ = case
    fast = verify_file(io.StringIO(text), REAL_POLICY, opener=facts_opener)
    assert fast.to_json() == full_path(text, REAL_POLICY, facts_opener).to_json()


# A genuine row of another export that only the named check of the fast path refuses, and
# the finding the full path gives (entries 6 to 29 are the period; patient n % 3,
# practitioner n % 4, treatment for n // 3 % 3 == 0: exempt from the accounting).
_CASES = {
    "since": ("access-a-period", "access-a", 3, "scope"),
    "until": ("access-a-period", "access-a", 30, "scope"),
    "patient": ("date-a", "date-b", 1, "scope"),
    "agent": ("user-1", "user-2", 2, "scope"),
    "rule": ("accounting-a", "date-a", 9, "membership"),
}


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("check", sorted(_CASES))
def test_a_genuine_row_only_one_check_refuses(fmt: str, check: str) -> None:
    target, source, index, code = _CASES[check]
    exports = real_exports()
    text = with_line(exports[target, fmt], row_lines(exports[source, fmt])[index])
    full = full_path(text, REAL_POLICY, facts_opener)
    line = 3 if fmt == "csv" else 2
    assert (code, line) in [(f["code"], f["line"]) for f in full.to_json()["findings"]]
    fast = verify_file(io.StringIO(text), REAL_POLICY, opener=facts_opener)
    assert fast.to_json() == full.to_json()
