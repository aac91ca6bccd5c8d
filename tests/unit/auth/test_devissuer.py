"""The development issuer: off unless enabled by name, loud when on, and its tokens verify."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs

from middleware.auth.devissuer import (
    IssuerDisabled,
    UnsafeDevelopmentIssuer,
    load_or_create_key,
)
from middleware.auth.jwks import StaticJwks
from middleware.auth.verify import IssuerConfig, TokenVerifier

from .tokens import AUDIENCE, NOW, RSA

DEV = "http://127.0.0.1:8080/dev-issuer"


def verifier_for(issuer: UnsafeDevelopmentIssuer) -> TokenVerifier:
    config = IssuerConfig(StaticJwks(issuer.jwks()), frozenset({AUDIENCE}))
    return TokenVerifier({issuer.issuer: config}, clock=lambda: NOW + 1)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"enabled": False}, {"enabled": 1}, {"enabled": "yes"}],
    ids=["default", "false", "truthy-int", "truthy-string"],
)
def test_refuses_to_exist_unless_enabled_is_true(kwargs: dict[str, Any]) -> None:
    with capture_logs() as logs, pytest.raises(IssuerDisabled):
        UnsafeDevelopmentIssuer(DEV, **kwargs)
    assert logs == []


def test_key_file_is_not_touched_when_disabled(tmp_path: Path) -> None:
    path = tmp_path / "dev.jwk"
    with pytest.raises(IssuerDisabled):
        UnsafeDevelopmentIssuer.from_key_file(path, DEV)
    assert not path.exists()


def test_warns_each_time_it_is_constructed() -> None:
    with capture_logs() as logs:
        UnsafeDevelopmentIssuer(DEV, enabled=True)
        UnsafeDevelopmentIssuer(DEV, enabled=True)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("development token issuer enabled", "warning"),
        ("development token issuer enabled", "warning"),
    ]


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
async def test_tokens_verify_through_the_token_verifier(algorithm: str) -> None:
    issuer = UnsafeDevelopmentIssuer(DEV, enabled=True, algorithm=algorithm, clock=lambda: NOW)
    token = issuer.issue(
        "alice",
        scopes=["launch/patient", "patient/*.rs"],
        audience=AUDIENCE,
        patient="123",
        fhir_user="Practitioner/9",
        purpose_of_use=["TREAT", "urn:x|ETREAT", ("urn:y", "HOPERAT")],
        roles=["nurse", "doctor", "nurse"],
    )
    identity = await verifier_for(issuer).verify(f"Bearer {token}")
    assert identity.issuer == DEV
    assert identity.kind == "patient"
    assert identity.patient == "123"
    assert identity.fhir_user == "Practitioner/9"
    assert identity.client_id == "consentry-dev"
    assert identity.expires_at == NOW + 3600
    assert identity.roles == {"nurse", "doctor"}
    assert identity.purpose_of_use == (
        ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT"),
        ("urn:x", "ETREAT"),
        ("urn:y", "HOPERAT"),
    )


def test_jwks_publishes_the_public_key_only() -> None:
    issuer = UnsafeDevelopmentIssuer(DEV, enabled=True)
    (key,) = issuer.jwks()["keys"]
    assert key["kty"] == "OKP"
    assert key["crv"] == "Ed25519"
    assert key["use"] == "sig"
    assert key["alg"] == "EdDSA"
    assert key["kid"] == issuer.kid
    assert "d" not in key


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "dev.jwk"
    first = UnsafeDevelopmentIssuer.from_key_file(path, DEV, enabled=True, algorithm="ES256")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["kty"] == "EC"
    second = UnsafeDevelopmentIssuer.from_key_file(path, DEV, enabled=True)
    assert second.kid == first.kid
    assert second.algorithm == "ES256"  # the stored key decides, not the default


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps({"kty": "RSA"}), json.dumps({"kty": "OKP", "crv": "Ed25519"})],
    ids=["not-json", "rsa", "incomplete"],
)
def test_bad_key_file_is_reported(tmp_path: Path, content: str) -> None:
    path = tmp_path / "dev.jwk"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"dev\.jwk"):
        load_or_create_key(path)


@pytest.mark.parametrize(
    "key",
    [RSA, RSAKey.import_key(RSA.as_dict(private=False))],
    ids=["rsa-not-offered", "public-key"],
)
def test_only_private_ed25519_or_p256_keys_sign(key: RSAKey) -> None:
    with pytest.raises(ValueError, match="private Ed25519 or P-256"):
        UnsafeDevelopmentIssuer(DEV, enabled=True, key=key)


def test_issue_validates_its_inputs() -> None:
    issuer = UnsafeDevelopmentIssuer(DEV, enabled=True)
    with pytest.raises(ValueError, match="ttl"):
        issuer.issue("alice", scopes="openid", audience=AUDIENCE, ttl=0)
    with pytest.raises(ValueError, match="purpose"):
        issuer.issue("alice", scopes="openid", audience=AUDIENCE, purpose_of_use=["|X"])
    with pytest.raises(ValueError, match="signs with EdDSA or ES256"):
        UnsafeDevelopmentIssuer(DEV, enabled=True, algorithm="RS256")
