"""Disclosures keep their evidence at least as long as the accounting of disclosures looks
back (45 CFR 164.528(a)(1): six years): settings that would remove it sooner are refused when
they are loaded, before ``consentry audit retention --apply`` could act on them."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.audit.retention import RetentionRules, check_covers_accounting
from middleware.errors import SettingsError
from middleware.ledger.leaf import EntryKind
from middleware.settings import load_settings

UPSTREAM = {"upstream": "http://127.0.0.1:1/fhir"}

REFUSED = [
    ("disclosure-one-year", {"audit_retention_by_kind": "disclosure=1"}),
    ("disclosure-five-years", {"audit_retention_by_kind": "disclosure=5"}),
    ("default-shorter", {"audit_retention_years": 3}),
    (
        "longer-lookback",
        {"accounting_lookback_years": 8, "audit_retention_by_kind": "disclosure=7"},
    ),
]


@pytest.mark.parametrize("values", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_disclosure_retention_shorter_than_the_lookback_is_refused(
    values: dict[str, Any],
) -> None:
    with pytest.raises(SettingsError, match="accounting_lookback_years"):
        load_settings(overrides={**UPSTREAM, **values})


ACCEPTED = [
    ("defaults", {}, 6),
    (
        "other-kinds-shorter",
        {"audit_retention_years": 2, "audit_retention_by_kind": "disclosure=6"},
        6,
    ),
    ("disclosure-longer", {"audit_retention_by_kind": "disclosure=10"}, 10),
    ("shorter-lookback", {"accounting_lookback_years": 3, "audit_retention_years": 3}, 3),
]


@pytest.mark.parametrize(
    ("values", "years"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_a_retention_that_covers_the_lookback_is_accepted(
    values: dict[str, Any], years: int
) -> None:
    settings = load_settings(overrides={**UPSTREAM, **values})
    assert settings.retention_rules.years(EntryKind.DISCLOSURE) == years


@pytest.mark.parametrize(("years", "ok"), [(5, False), (6, True), (7, True)], ids=["5", "6", "7"])
def test_check_covers_accounting_at_the_boundary(years: int, ok: bool) -> None:
    rules = RetentionRules(by_kind={EntryKind.DISCLOSURE: years})
    if ok:
        check_covers_accounting(rules, lookback_years=6)
    else:
        with pytest.raises(ValueError, match=r"164\.528"):
            check_covers_accounting(rules, lookback_years=6)
