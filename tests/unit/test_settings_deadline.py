"""``upstream_deadline`` and ``ready_commit_age``: positive, finite seconds, or the gateway
does not start (a nan or infinite deadline is no deadline at all)."""

from __future__ import annotations

import pytest

from middleware.errors import SettingsError
from middleware.settings import load_settings

UPSTREAM = "http://upstream.test/fhir"


@pytest.mark.parametrize("name", ["upstream_deadline", "ready_commit_age"])
@pytest.mark.parametrize(
    "value", [0.0, -1.0, float("nan"), float("inf")], ids=["zero", "negative", "nan", "inf"]
)
def test_bad_values_stop_the_gateway_naming_the_setting(name: str, value: float) -> None:
    with pytest.raises(SettingsError, match=f"{name}: must be positive and finite"):
        load_settings(overrides={"upstream": UPSTREAM, name: value})


def test_defaults_and_a_value_from_the_environment() -> None:
    defaults = load_settings(overrides={"upstream": UPSTREAM})
    assert (defaults.upstream_deadline, defaults.ready_commit_age) == (60.0, 10.0)
    set_here = load_settings(
        overrides={"upstream": UPSTREAM},
        env={"CONSENTRY_UPSTREAM_DEADLINE": "2.5", "CONSENTRY_READY_COMMIT_AGE": "3"},
    )
    assert (set_here.upstream_deadline, set_here.ready_commit_age) == (2.5, 3.0)
