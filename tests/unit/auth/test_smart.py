"""What the gateway advertises about authorization (SMART App Launch 2.x "Conformance" and the
SMART 1.0 ``oauth-uris`` extension), from the ``[auth]`` settings alone."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.auth.settings import AuthSettings
from middleware.auth.smart import (
    OAUTH_URIS,
    authorization_server,
    gateway_root,
    oauth_uris,
    smart_configuration,
)
from middleware.errors import SettingsError

IDP = "https://idp.example/realms/clinic"
AUTHORIZE = f"{IDP}/auth"
TOKEN = f"{IDP}/token"
ROOT = "https://gateway.example"


def settings(**issuer: Any) -> AuthSettings:
    return AuthSettings.from_mapping(
        {"audiences": ["a"], "issuers": [{"issuer": IDP, "jwks_url": f"{IDP}/certs", **issuer}]}
    )


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "problem"),
    [
        ({"authorization_endpoint": AUTHORIZE}, "auth.issuers[0].token_endpoint: required"),
        ({"token_endpoint": "not a url"}, "auth.issuers[0].token_endpoint: expected an absolute"),
        ({"token_endpoint": TOKEN, "grant_types": "authorization_code"}, "grant_types: expected"),
        ({"capabilities": [""]}, "auth.issuers[0].capabilities: expected an array"),
    ],
    ids=["authorize-without-token", "token-not-url", "grant-types-not-list", "empty-capability"],
)
def test_advertised_settings_are_validated(issuer: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings(**issuer)
    assert problem in str(info.value)


# --- which server ------------------------------------------------------------------------------


def test_the_first_issuer_with_a_token_endpoint_is_advertised() -> None:
    """An issuer without endpoints (a second realm, a test key) does not hide the one with
    them, and a development issuer does not either."""
    auth = AuthSettings.from_mapping(
        {
            "audiences": ["a"],
            "dev_issuer_enabled": True,
            "dev_issuer_url": "http://localhost/dev",
            "issuers": [
                {"issuer": "https://other.example", "jwks_file": "x.json"},
                {"issuer": IDP, "jwks_file": "y.json", "token_endpoint": TOKEN},
            ],
        }
    )
    server = authorization_server(auth, gateway_root=ROOT)
    assert server is not None
    assert (server.issuer, server.token_endpoint, server.development) == (IDP, TOKEN, False)
    assert server.grant_types == ("client_credentials",)  # a token endpoint alone: backend


def test_no_issuer_no_server() -> None:
    assert authorization_server(AuthSettings(), gateway_root=ROOT) is None
    assert oauth_uris(None) is None


@pytest.mark.parametrize(
    ("base_url", "base_path", "root"),
    [
        ("https://gateway.example/fhir", "/fhir", "https://gateway.example"),
        ("https://gateway.example/api/fhir/", "/fhir", "https://gateway.example/api"),
        ("https://gateway.example", "", "https://gateway.example"),
        ("https://gateway.example/other", "/fhir", "https://gateway.example/other"),
    ],
    ids=["base", "behind-prefix", "root-base", "public-path-differs"],
)
def test_gateway_root(base_url: str, base_path: str, root: str) -> None:
    assert gateway_root(base_url, base_path) == root


# --- documents ---------------------------------------------------------------------------------


def test_an_authorization_code_server_is_described_with_pkce() -> None:
    server = authorization_server(
        settings(authorization_endpoint=AUTHORIZE, token_endpoint=TOKEN), gateway_root=ROOT
    )
    assert server is not None
    document = smart_configuration(server)
    assert document["authorization_endpoint"] == AUTHORIZE
    assert document["grant_types_supported"] == ["authorization_code"]
    # SMART 2.x: S256 SHALL be offered and plain SHALL NOT.
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert oauth_uris(server) == {
        "url": OAUTH_URIS,
        "extension": [
            {"url": "token", "valueUri": TOKEN},
            {"url": "authorize", "valueUri": AUTHORIZE},
        ],
    }


def test_configured_lists_are_advertised_as_given() -> None:
    server = authorization_server(
        settings(
            token_endpoint=TOKEN,
            grant_types=["client_credentials", "refresh_token"],
            capabilities=["client-confidential-asymmetric"],
            scopes_supported=["system/Observation.rs"],
        ),
        gateway_root=ROOT,
    )
    assert server is not None
    document = smart_configuration(server)
    assert document["grant_types_supported"] == ["client_credentials", "refresh_token"]
    assert document["capabilities"][0] == "client-confidential-asymmetric"
    assert document["scopes_supported"] == ["system/Observation.rs"]
    assert "authorization_endpoint" not in document
    assert oauth_uris(server) == {
        "url": OAUTH_URIS,
        "extension": [{"url": "token", "valueUri": TOKEN}],
    }


def test_an_issuer_without_endpoints_advertises_none() -> None:
    """Keys but no endpoints configured: the document names the issuer and says what is
    missing; the CapabilityStatement gets no oauth-uris."""
    server = authorization_server(settings(), gateway_root=ROOT)
    assert server is not None
    document = smart_configuration(server)
    assert "token_endpoint" not in document
    assert document["grant_types_supported"] == []
    assert "token_endpoint" in document["description"]
    assert oauth_uris(server) is None


def test_the_break_glass_scope_is_offered() -> None:
    auth = AuthSettings.from_mapping(
        {
            "audiences": ["a"],
            "break_glass_scope": "consentry/break-glass",
            "issuers": [{"issuer": IDP, "jwks_file": "k.json", "token_endpoint": TOKEN}],
        }
    )
    server = authorization_server(auth, gateway_root=ROOT)
    assert server is not None
    assert "consentry/break-glass" in smart_configuration(server)["scopes_supported"]
