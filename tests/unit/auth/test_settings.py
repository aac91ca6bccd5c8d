"""Auth settings: validated once, every problem named; wired into a verifier by the factory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from middleware.auth.factory import build_dev_issuer, build_verifier
from middleware.auth.identity import IdentityRules
from middleware.auth.settings import AuthSettings, IssuerSettings
from middleware.errors import SettingsError, Unauthorized

from .tokens import AUDIENCE, ED, ISSUER, JWKS_URL, NOW, jwks, mint

DEV = "http://127.0.0.1:8080/dev-issuer"


def test_defaults_are_closed() -> None:
    settings = AuthSettings.from_mapping({})
    assert settings.issuers == ()
    assert settings.dev_issuer_enabled is False
    assert settings.leeway == 30.0
    assert settings.identity_rules() == IdentityRules()


def test_a_full_mapping() -> None:
    settings = AuthSettings.from_mapping(
        {
            "audiences": [AUDIENCE],
            "leeway": 10,
            "purpose_claim": "extensions.ihe_iua.purpose_of_use",
            "roles_claim": "realm_access.roles",
            "organization_claim": "org.ref",
            "break_glass_scope": "consentry/break-glass",
            "break_glass_roles": ["emergency"],
            "issuers": [
                {"issuer": ISSUER, "jwks_url": JWKS_URL, "algorithms": ["RS256"]},
                {"issuer": "https://b.test", "jwks_file": "b.json", "audiences": ["urn:b"]},
            ],
        }
    )
    assert settings.issuers == (
        IssuerSettings(ISSUER, (AUDIENCE,), jwks_url=JWKS_URL, algorithms=("RS256",)),
        IssuerSettings("https://b.test", ("urn:b",), jwks_file=Path("b.json")),
    )
    assert settings.identity_rules() == IdentityRules(
        purpose_claim="extensions.ihe_iua.purpose_of_use",
        roles_claim="realm_access.roles",
        organization_claim="org.ref",
        break_glass_scopes=frozenset({"consentry/break-glass"}),
        break_glass_roles=frozenset({"emergency"}),
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"nope": 1}, "auth.nope: unknown setting"),
        ({"leeway": "30"}, "auth.leeway: expected a number"),
        ({"leeway": 3600}, "auth.leeway: expected 0..300"),
        ({"leeway": -1}, "auth.leeway: expected 0..300"),
        ({"jwks_ttl": 0}, "auth.jwks_ttl: "),
        ({"jwks_max_stale": -5}, "auth.jwks_max_stale: must not be negative"),
        ({"roles_claim": ""}, "auth.roles_claim: expected a non-empty string"),
        ({"organization_claim": ""}, "auth.organization_claim: expected a non-empty string"),
        ({"audiences": "x"}, "auth.audiences: expected an array"),
        ({"dev_issuer_enabled": "yes"}, "auth.dev_issuer_enabled: expected a boolean"),
        ({"issuers": {}}, "auth.issuers: expected an array of tables"),
        ({"issuers": ["x"]}, "auth.issuers[0]: expected a table"),
        (
            {"issuers": [{"issuer": ISSUER, "audiences": ["a"]}]},
            "auth.issuers[0]: give exactly one of jwks_file and jwks_url",
        ),
        (
            {"issuers": [{"issuer": ISSUER, "jwks_file": "a", "jwks_url": JWKS_URL}]},
            "auth.issuers[0]: give exactly one",
        ),
        (
            {"issuers": [{"issuer": ISSUER, "jwks_file": "a"}]},
            "auth.issuers[0].audiences: required",
        ),
        (
            {"issuers": [{"issuer": "idp", "jwks_file": "a", "audiences": ["a"]}]},
            "auth.issuers[0].issuer: expected an absolute http(s) URL",
        ),
        (
            {"issuers": [{"issuer": ISSUER, "jwks_url": "ftp://x/j", "audiences": ["a"]}]},
            "auth.issuers[0].jwks_url: expected an absolute http(s) URL",
        ),
        (
            {"issuers": [{"issuer": ISSUER, "jwks_file": "a", "audiences": ["a"], "x": 1}]},
            "auth.issuers[0].x: unknown setting",
        ),
        (
            {
                "issuers": [
                    {
                        "issuer": ISSUER,
                        "jwks_file": "a",
                        "audiences": ["a"],
                        "algorithms": ["HS256"],
                    }
                ]
            },
            "auth.issuers[0].algorithms: expected a non-empty subset",
        ),
        (
            {
                "audiences": ["a"],
                "issuers": [
                    {"issuer": ISSUER, "jwks_file": "a"},
                    {"issuer": ISSUER, "jwks_file": "b"},
                ],
            },
            "is configured more than once",
        ),
        ({"dev_issuer_enabled": True, "audiences": ["a"]}, "auth.dev_issuer_url: expected"),
        ({"dev_issuer_enabled": True, "dev_issuer_url": DEV}, "auth.audiences: required"),
        (
            {
                "dev_issuer_enabled": True,
                "dev_issuer_url": DEV,
                "audiences": ["a"],
                "dev_issuer_algorithm": "RS256",
            },
            "auth.dev_issuer_algorithm: expected one of EdDSA, ES256",
        ),
    ],
    ids=[
        "unknown-key",
        "leeway-type",
        "leeway-too-large",
        "leeway-negative",
        "ttl-zero",
        "stale-negative",
        "empty-claim-name",
        "empty-organization-claim-name",
        "audiences-not-list",
        "flag-not-bool",
        "issuers-not-list",
        "issuer-not-table",
        "no-jwks",
        "two-jwks",
        "no-audiences",
        "issuer-not-url",
        "jwks-url-scheme",
        "issuer-unknown-key",
        "hmac-algorithm",
        "duplicate-issuer",
        "dev-without-url",
        "dev-without-audience",
        "dev-algorithm",
    ],
)
def test_problems_are_named(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError) as info:
        AuthSettings.from_mapping(data)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("name", "claim"),
    [
        ("organization_claim", "sub"),
        ("roles_claim", "scope"),
        ("purpose_claim", "patient"),
        # fhirUser as memberships: the caller's own record would be read as a membership
        ("membership_claim", "fhirUser"),
    ],
)
def test_a_claim_setting_may_not_name_a_standard_claim(name: str, claim: str) -> None:
    """The attack: ``organization_claim = "sub"`` would make every caller's subject their
    organization in the audit trail and the accountings' recipients."""
    with pytest.raises(SettingsError) as info:
        AuthSettings.from_mapping({name: claim})
    assert f"auth.{name}: '{claim}' is a standard claim" in str(info.value)


def test_two_claim_settings_may_not_name_the_same_claim() -> None:
    with pytest.raises(SettingsError) as info:
        AuthSettings.from_mapping({"organization_claim": "roles"})
    assert "auth.organization_claim: 'roles' is also another of the configured claims" in str(
        info.value
    )
    assert AuthSettings.from_mapping({"organization_claim": "org"}).organization_claim == "org"
    with pytest.raises(SettingsError) as info:
        AuthSettings.from_mapping({"membership_claim": "organization"})
    assert "'organization' is also another of the configured claims" in str(info.value)
    members = AuthSettings.from_mapping({"membership_claim": "teams"})
    assert members.identity_rules().membership_claim == "teams"
    assert AuthSettings.from_mapping({}).membership_claim == ""  # none read by default


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        AuthSettings.from_mapping({"leeway": "x", "roles_claim": 1, "nope": True})
    assert str(info.value).count("\n  auth.") == 3


# --- factory ----------------------------------------------------------------------------------


async def test_verifier_from_settings_trusts_a_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ED)))
    settings = AuthSettings.from_mapping(
        {"audiences": [AUDIENCE], "issuers": [{"issuer": ISSUER, "jwks_file": str(path)}]}
    )
    verifier = build_verifier(settings, clock=lambda: NOW, gateway_base=AUDIENCE)
    assert (await verifier.verify(f"Bearer {mint(ED)}")).subject == "alice"
    assert build_dev_issuer(settings) is None


async def test_verifier_from_settings_trusts_the_enabled_dev_issuer(tmp_path: Path) -> None:
    settings = AuthSettings.from_mapping(
        {
            "audiences": [AUDIENCE],
            "dev_issuer_enabled": True,
            "dev_issuer_url": DEV,
            "dev_issuer_key_file": str(tmp_path / "dev.jwk"),
            "realm": "consentry",
        }
    )
    dev = build_dev_issuer(settings, clock=lambda: NOW)
    assert dev is not None
    verifier = build_verifier(settings, dev_issuer=dev, clock=lambda: NOW)
    token = dev.issue("bob", scopes="system/*.rs", audience=AUDIENCE)
    assert (await verifier.verify(f"Bearer {token}")).kind == "system"
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(None)
    assert info.value.www_authenticate == 'Bearer realm="consentry"'


def test_fhir_user_bases_are_the_gateway_and_the_configured_ones() -> None:
    """An absolute ``fhirUser`` is read only under the gateway's own public base or a base
    configured in ``auth.fhir_user_bases``; a base with a query or dot segment is refused at
    load, so no setting can re-open the loose reading."""
    settings = AuthSettings.from_mapping({"fhir_user_bases": ["https://ehr.example/r4/"]})
    assert settings.fhir_user_bases == ("https://ehr.example/r4",)
    rules = settings.identity_rules("https://gw.example/fhir")
    assert rules.fhir_user_bases == {"https://gw.example/fhir", "https://ehr.example/r4"}
    assert AuthSettings().identity_rules().fhir_user_bases == frozenset()
    for bad in ("ehr.example/r4", "https://ehr.example/r4?x=1", "https://ehr.example/a/../r4"):
        with pytest.raises(SettingsError, match="fhir_user_bases"):
            AuthSettings.from_mapping({"fhir_user_bases": [bad]})
