"""The accounting and report settings: validated at start, turned into rules."""

from __future__ import annotations

from datetime import time

import pytest

from middleware.audit.accounting import ACT_REASON, DEFAULT_EXEMPT
from middleware.errors import SettingsError
from middleware.settings import load_settings

UPSTREAM = {"upstream": "http://upstream.example/fhir"}


def test_defaults() -> None:
    settings = load_settings(overrides=UPSTREAM)
    assert settings.accounting_rules.lookback_years == 6
    assert dict(settings.accounting_rules.exempt) == dict(DEFAULT_EXEMPT)
    assert settings.access_report_lookback_years == 3
    window = settings.after_hours
    assert (window.start, window.end) == (time(19), time(7))


def test_configured_from_the_environment() -> None:
    settings = load_settings(
        overrides=UPSTREAM,
        env={
            "CONSENTRY_ACCOUNTING_LOOKBACK_YEARS": "4",
            "CONSENTRY_ACCOUNTING_EXEMPT_PURPOSES": "TREAT,urn:x|NS=national-security",
            "CONSENTRY_REPORT_AFTER_HOURS": "18:30-08:00",
            "CONSENTRY_REPORT_TIMEZONE": "Europe/Berlin",
            "CONSENTRY_ACCOUNTING_INTERNAL_ORGANIZATIONS": "Organization/1, Organization/2",
        },
    )
    assert settings.accounting_rules.internal_organizations == {
        "Organization/1",
        "Organization/2",
    }
    assert settings.accounting_rules.lookback_years == 4
    assert dict(settings.accounting_rules.exempt) == {
        f"{ACT_REASON}|TREAT": "tpo",
        "urn:x|NS": "national-security",
    }
    assert settings.after_hours.start == time(18, 30)


BAD = [
    ({"accounting_lookback_years": 0}, "accounting_lookback_years"),
    ({"access_report_lookback_years": 101}, "access_report_lookback_years"),
    ({"accounting_exempt_purposes": "TREAT=whatever"}, "accounting_exempt_purposes"),
    ({"report_after_hours": "late"}, "report_after_hours"),
    ({"report_timezone": "Mars/Olympus"}, "report_timezone"),
]


@pytest.mark.parametrize(("values", "named"), BAD, ids=[b[1] for b in BAD])
def test_bad_values_stop_the_start(values: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(overrides={**UPSTREAM, **values})
