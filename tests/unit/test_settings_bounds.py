"""Settings that would silently remove a bound, or break every request, stop the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.auth.settings import AuthSettings
from middleware.errors import SettingsError
from middleware.settings import load_settings

UP = "http://upstream.test/fhir"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"], ids=["nan", "inf", "minus-inf"])
@pytest.mark.parametrize(
    "name", ["connect_timeout", "read_timeout", "metadata_ttl", "ledger_max_wait_ms"]
)
def test_a_non_finite_duration_is_refused(name: str, value: str) -> None:
    """Attack/defect: ``read_timeout = nan`` passed ``<= 0`` (every comparison with nan is
    false) and ``inf`` is positive, so the gateway started with no timeout at all and one
    slow upstream held its requests forever."""
    with pytest.raises(SettingsError, match=f"{name}: must be"):
        load_settings(env={"CONSENTRY_UPSTREAM": UP, f"CONSENTRY_{name.upper()}": value})


def test_toml_nan_and_inf_are_refused_too(tmp_path: Path) -> None:
    """TOML itself has ``nan`` and ``inf`` literals: the file path is checked like the
    environment, the ``[auth]`` table's durations included."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'upstream = "{UP}"\nread_timeout = nan\nconnect_timeout = inf\n'
        "[auth]\njwks_ttl = inf\nleeway = nan\n"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(config_file=config)
    message = str(caught.value)
    for fragment in ("read_timeout:", "connect_timeout:", "jwks_ttl", "leeway"):
        assert fragment in message, fragment


@pytest.mark.parametrize("name", ["leeway", "jwks_ttl", "jwks_refresh_interval", "jwks_max_stale"])
def test_auth_durations_must_be_finite(name: str) -> None:
    """Attack/defect: ``jwks_max_stale = inf`` kept a revoked signing key usable forever."""
    with pytest.raises(SettingsError, match=f"{name}: expected a finite number"):
        AuthSettings.from_mapping({name: float("inf")})


def test_finite_durations_still_load() -> None:
    settings = load_settings(overrides={"upstream": UP, "read_timeout": 0.5, "metadata_ttl": 0})
    assert (settings.read_timeout, settings.metadata_ttl) == (0.5, 0.0)


# --- upstream_headers (RFC 9110 §5.1 field names, §5.5 field values) ------------------------


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"X-Api-Key": "secret\r\nX-Injected: 1"}, "value of 'X-Api-Key' is not"),
        ({"X-Api-Key": "secret\n"}, "value of 'X-Api-Key' is not"),
        ({"X-Api-Key": " secret"}, "value of 'X-Api-Key' is not"),
        ({"X-Api-Key": "s\x00cret"}, "value of 'X-Api-Key' is not"),
        ({"X-Api-Key": "clé"}, "value of 'X-Api-Key' is not"),
        ({"X Api Key": "v"}, "'X Api Key' is not an HTTP field name"),
        ({"X-Api-Key:": "v"}, "is not an HTTP field name"),
        ({"": "v"}, "is not an HTTP field name"),
        ({"Host": "evil.test"}, "'Host' is hop-by-hop or owned"),
        ({"Connection": "close"}, "hop-by-hop"),
        ({"Transfer-Encoding": "chunked"}, "hop-by-hop"),
        ({"content-length": "0"}, "hop-by-hop"),
        ({"Upgrade": "h2c"}, "hop-by-hop"),
    ],
    ids=[
        "crlf-injection",
        "newline",
        "leading-space",
        "nul",
        "non-ascii",
        "space-in-name",
        "colon-in-name",
        "empty-name",
        "host",
        "connection",
        "transfer-encoding",
        "content-length",
        "upgrade",
    ],
)
def test_a_bad_upstream_header_stops_the_start(headers: dict[str, str], fragment: str) -> None:
    """Attack/defect: an ``upstream_headers`` value with a line break (or a name with a space)
    loaded fine and then made every proxied request a 500 when the HTTP client refused to
    send it; a ``Host`` or ``Transfer-Encoding`` would re-route or re-frame every request.
    Now the start stops naming the header (never its value, which may be a credential)."""
    with pytest.raises(SettingsError, match=f"upstream_headers: .*{fragment}") as caught:
        load_settings(overrides={"upstream": UP, "upstream_headers": headers})
    assert "secret" not in str(caught.value)


def test_good_upstream_headers_load() -> None:
    headers = {"Authorization": "Bearer abc.def-ghi", "X-Tenant": "a\tb c", "X-Empty": ""}
    settings = load_settings(overrides={"upstream": UP, "upstream_headers": headers})
    assert dict(settings.upstream_headers) == headers


# --- counts (pipeline.counting) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("count_max_resources", "0"),
        ("count_max_resources", "10000001"),
        ("count_max_pages", "0"),
        ("count_page_size", "0"),
        ("count_page_size", "10001"),
        ("count_max_walked", "0"),
        ("count_max_concurrent", "0"),
    ],
)
def test_a_count_bound_out_of_range_is_refused(name: str, value: str) -> None:
    """A bound of 0 would refuse every count; an unbounded one would let one count walk the
    whole upstream."""
    with pytest.raises(SettingsError, match=f"{name}: expected 1.."):
        load_settings(env={"CONSENTRY_UPSTREAM": UP, f"CONSENTRY_{name.upper()}": value})


def test_count_bounds_load_and_have_their_defaults() -> None:
    default = load_settings(overrides={"upstream": UP})
    assert (default.count_max_resources, default.count_max_pages, default.count_page_size) == (
        10_000,
        1_000,
        1_000,
    )
    assert (default.count_max_walked, default.count_deadline_seconds) == (100_000, 20.0)
    assert default.count_max_concurrent == 4
    tuned = load_settings(overrides={"upstream": UP, "count_max_resources": 50})
    assert tuned.count_max_resources == 50


@pytest.mark.parametrize(
    "overrides",
    [{"count_max_walked": 10_000}, {"count_max_resources": 200_000}, {"count_deadline_seconds": 0}],
    ids=["walk-at-cap", "cap-above-walk", "no-deadline"],
)
def test_a_walk_limit_within_the_callers_cap_is_refused(overrides: dict[str, object]) -> None:
    """A walk limit at or below the caller's cap would let padding with visible matches bring
    the walk's refusal within reach of a few hidden records (docs/security.md)."""
    with pytest.raises(SettingsError, match="count_"):
        load_settings(overrides={"upstream": UP, **overrides})
