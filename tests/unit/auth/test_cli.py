"""``consentry token issue``: stdout is the token and nothing else; it verifies at the gateway."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from middleware.auth.cli import RESERVED_CLAIMS, issue_token_command
from middleware.auth.identity import IdentityRules
from middleware.auth.jwks import StaticJwks
from middleware.auth.verify import IssuerConfig, TokenVerifier

from .tokens import AUDIENCE

DEV = "http://127.0.0.1:8080/dev-issuer"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The command configures logging for its process; put structlog back afterwards."""
    yield
    structlog.reset_defaults()


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = issue_token_command(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def base_args(key_file: Path) -> list[str]:
    return ["--key-file", str(key_file), "--new-key", "--issuer", DEV, "--audience", AUDIENCE]


async def test_issued_token_verifies(tmp_path: Path) -> None:
    key_file = tmp_path / "dev.jwk"
    code, out, err = run(
        [
            "--sub",
            "alice",
            "--scope",
            "launch/patient patient/*.rs",
            "--scope",
            "openid",
            "--patient",
            "123",
            "--fhir-user",
            "Practitioner/1",
            "--purpose",
            "TREAT",
            "--role",
            "doctor",
            "--ttl",
            "600",
            *base_args(key_file),
        ]
    )
    assert code == 0
    token = out.strip()
    assert out == token + "\n"
    assert token.count(".") == 2
    assert "development token issuer enabled" in err
    assert f"created key file {key_file}" in err

    public = json.loads(key_file.read_text())
    public.pop("d")
    jwk_set = {"keys": [{**public, "use": "sig", "alg": "EdDSA"}]}
    verifier = TokenVerifier({DEV: IssuerConfig(StaticJwks(jwk_set), frozenset({AUDIENCE}))})
    identity = await verifier.verify(f"Bearer {token}")
    assert identity.subject == "alice"
    assert identity.kind == "patient"
    assert identity.fhir_user == "Practitioner/1"
    assert identity.roles == {"doctor"}
    assert [s.text for s in identity.scopes] == ["patient/*.rs"]


def test_second_run_reuses_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "dev.jwk"
    run(["--sub", "a", "--scope", "openid", *base_args(key_file)])
    before = key_file.read_text()
    code, _, err = run(["--sub", "b", "--scope", "openid", *base_args(key_file)])
    assert code == 0
    assert "created" not in err
    assert key_file.read_text() == before


def test_a_missing_key_file_is_refused_without_new_key(tmp_path: Path) -> None:
    """A mistyped --key-file once minted a token from a freshly created key that no gateway
    trusts (every request then a 401 with no hint why): now it is an error naming the file,
    and nothing is created."""
    key_file = tmp_path / "dve.jwk"
    argv = ["--sub", "a", "--scope", "openid", "--key-file", str(key_file)]
    code, out, err = run([*argv, "--issuer", DEV, "--audience", AUDIENCE])
    assert code == 2
    assert out == ""
    assert f"--key-file: {key_file} does not exist" in err
    assert not key_file.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sub", "a", "--scope", "openid", "--fhir-user", "Observation/1"], "fhirUser"),
        (["--sub", "a", "--scope", "openid", "--ttl", "0"], "ttl"),
        (["--sub", "a", "--scope", "openid", "--purpose", "|X"], "purpose"),
        (["--sub", "a", "--scope", "openid", "--organization", "Organization/a b"], "organization"),
        (["--sub", "a", "--scope", "openid", "--organization", " acme"], "organization"),
        (["--sub", "a", "--scope", "openid", "--organization-claim", ""], "organization-claim"),
    ],
    ids=[
        "bad-fhir-user",
        "zero-ttl",
        "bad-purpose",
        "bad-organization-reference",
        "organization-with-spaces",
        "empty-organization-claim",
    ],
)
def test_bad_values_exit_2_without_output(tmp_path: Path, argv: list[str], message: str) -> None:
    code, out, err = run([*argv, *base_args(tmp_path / "dev.jwk")])
    assert code == 2
    assert out == ""
    assert message in err


@pytest.mark.parametrize("claim", sorted(RESERVED_CLAIMS), ids=str)
def test_the_organization_claim_may_not_overwrite_another(tmp_path: Path, claim: str) -> None:
    """``--organization-claim sub`` (or scope, patient, exp, ...) put the organization in
    place of that claim: the token then named another subject, granted no scope, or expired
    at a string. Every claim the token carries or the gateway reads is refused, with and
    without surrounding blanks, and no token is printed."""
    for name in (claim, f" {claim} "):
        argv = ["--sub", "a", "--scope", "openid", "--organization", "Organization/acme"]
        code, out, err = run([*argv, "--organization-claim", name, *base_args(tmp_path / "k")])
        assert (code, out) == (2, "")
        assert f"--organization-claim: {claim} is a claim" in err


def test_usage_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--scope", "openid", *base_args(tmp_path / "dev.jwk")])
    assert code == 2
    assert out == ""
    assert "--sub" in capsys.readouterr().err
    assert not (tmp_path / "dev.jwk").exists()


def _issuers(key_file: Path) -> dict[str, IssuerConfig]:
    """The development issuer as a gateway trusts it: the public half of ``key_file``."""
    public = json.loads(key_file.read_text())
    public.pop("d")
    jwk_set = {"keys": [{**public, "use": "sig", "alg": "EdDSA"}]}
    return {DEV: IssuerConfig(StaticJwks(jwk_set), frozenset({AUDIENCE}))}


async def _verified(
    issuers: dict[str, IssuerConfig], token: str, rules: IdentityRules
) -> str | None:
    """The organization the gateway's verifier reads from ``token`` under ``rules``."""
    identity = await TokenVerifier(issuers, rules=rules).verify(f"Bearer {token}")
    return identity.organization


@pytest.mark.parametrize(
    ("extra", "claim", "organization"),
    [
        (["--organization", "Organization/acme"], "organization", "Organization/acme"),
        (["--organization", "Acme Clinic"], "organization", "Acme Clinic"),
        (
            ["--organization", "Organization/x", "--organization-claim", "https://ex.org/org"],
            "https://ex.org/org",
            "Organization/x",
        ),
        ([], "organization", None),
    ],
    ids=["reference", "plain-name", "custom-claim", "none"],
)
async def test_organization_lands_in_the_claim_the_gateway_reads(
    tmp_path: Path, extra: list[str], claim: str, organization: str | None
) -> None:
    """``--organization`` puts the caller's organization in the claim named by
    ``--organization-claim`` (the gateway's ``auth.organization_claim``): the gateway's
    verifier, configured with that claim, reads it back as the identity's organization."""
    key_file = tmp_path / "dev.jwk"
    code, out, err = run(["--sub", "a", "--scope", "openid", *extra, *base_args(key_file)])
    assert code == 0, err
    issuers = _issuers(key_file)
    rules = IdentityRules(organization_claim=claim)
    assert await _verified(issuers, out.strip(), rules) == organization
    if claim != "organization":  # under the default claim a gateway sees none
        assert await _verified(issuers, out.strip(), IdentityRules()) is None
