"""The consent API's settings: the administrator role and the jurisdiction default."""

from __future__ import annotations

import pytest

from middleware.errors import SettingsError
from middleware.settings import load_settings

UPSTREAM = "http://upstream.test/fhir"


def test_defaults() -> None:
    settings = load_settings(overrides={"upstream": UPSTREAM})
    assert settings.consent_admin_role == "consent-admin"
    assert settings.consent_jurisdiction == "opt-in"


def test_from_the_environment() -> None:
    env = {
        "CONSENTRY_CONSENT_ADMIN_ROLE": "privacy-officer",
        "CONSENTRY_CONSENT_JURISDICTION": "opt-out",
    }
    settings = load_settings(env=env, overrides={"upstream": UPSTREAM})
    assert settings.consent_admin_role == "privacy-officer"
    assert settings.consent_jurisdiction == "opt-out"


@pytest.mark.parametrize(
    ("name", "value"),
    [("consent_jurisdiction", "maybe"), ("consent_admin_role", "")],
    ids=["unknown-jurisdiction", "empty-role"],
)
def test_bad_values_stop_the_start(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(overrides={"upstream": UPSTREAM, name: value})
