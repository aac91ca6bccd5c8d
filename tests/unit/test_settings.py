"""Settings: precedence, conversion and one error listing every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.errors import SettingsError
from middleware.settings import load_settings

UP = "http://127.0.0.1:8103/fhir"


def test_defaults() -> None:
    settings = load_settings(overrides={"upstream": UP})
    assert settings.port == 8080
    assert settings.base_path == "/fhir"
    assert settings.store == "sqlite:consentry.db"
    assert settings.gateway_base_url == "http://127.0.0.1:8080/fhir"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "consentry.toml"
    config.write_text(
        'upstream = "http://file:1/fhir"\nport = 9000\nhost = "0.0.0.0"\n'
        '[upstream_headers]\nAuthorization = "Bearer x"\n'
    )
    settings = load_settings(
        config_file=config,
        env={"CONSENTRY_PORT": "9100", "CONSENTRY_ACCESS_LOG": "off", "HOME": "/root"},
        overrides={"upstream": UP, "port": None},
    )
    assert settings.upstream == UP
    assert settings.port == 9100
    assert settings.host == "0.0.0.0"
    assert settings.access_log is False
    assert dict(settings.upstream_headers) == {"Authorization": "Bearer x"}


def test_public_url_wins_for_the_gateway_base() -> None:
    settings = load_settings(overrides={"upstream": UP, "public_url": "https://gw.example/fhir/"})
    assert settings.gateway_base_url == "https://gw.example/fhir"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('prot = 1\nport = "x"\nbase_path = "fhir/"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(
            config_file=config,
            env={
                "CONSENTRY_UPSTREAM": "ftp://x",
                "CONSENTRY_NOPE": "1",
                "CONSENTRY_ACCESS_LOG": "maybe",
                "CONSENTRY_UPSTREAM_HEADERS": "{not json",
            },
        )
    message = str(caught.value)
    for expected in (
        "unknown setting 'prot'",
        "port:",
        "base_path:",
        "upstream: expected an absolute http(s) URL",
        "unknown setting CONSENTRY_NOPE",
        "CONSENTRY_ACCESS_LOG: expected a boolean",
        "CONSENTRY_UPSTREAM_HEADERS: expected a JSON object",
    ):
        assert expected in message, expected


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({}, "upstream: required"),
        ({"upstream": UP, "port": 70000}, "port: expected 0..65535"),
        ({"upstream": UP, "max_request_bytes": 0}, "max_request_bytes: must be positive"),
        ({"upstream": UP, "read_timeout": 0}, "read_timeout: must be positive"),
        ({"upstream": UP, "upstream_client": "requests"}, "upstream_client: expected one of"),
        ({"upstream": UP, "store": "mysql://x"}, "store: expected"),
        ({"upstream": UP + "?x=1"}, "must not have a query"),
        ({"upstream": UP, "log_level": "loud"}, "log_level"),
        ({"upstream": UP, "access_log": "yes"}, "access_log: expected a boolean"),
    ],
    ids=[
        "missing-upstream",
        "port-range",
        "zero-cap",
        "zero-timeout",
        "client",
        "store",
        "query",
        "log-level",
        "bool-type",
    ],
)
def test_bad_values(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(overrides=overrides)


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(config_file=tmp_path / "missing.toml", overrides={"upstream": UP})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"metrics_clients": "10.0.0.0/8,localhost"}, "metrics_clients: 'localhost' is not an IP"),
        ({"metrics_token": "short"}, "metrics_token: expected at least 16"),
        ({"metrics_token": "sixteen chars with spaces"}, "metrics_token: expected at least 16"),
    ],
    ids=["client-not-an-address", "token-too-short", "token-with-spaces"],
)
def test_bad_metrics_access(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(overrides={"upstream": UP, **overrides})


def test_metrics_default_to_loopback_scrapers_and_no_token() -> None:
    settings = load_settings(overrides={"upstream": UP})
    assert settings.metrics_clients == "127.0.0.1/8,::1"
    assert settings.metrics_token == ""
    env = {"CONSENTRY_METRICS_TOKEN": "0123456789abcdef", "CONSENTRY_METRICS_CLIENTS": ""}
    settings = load_settings(env=env, overrides={"upstream": UP})
    assert (settings.metrics_clients, settings.metrics_token) == ("", "0123456789abcdef")
