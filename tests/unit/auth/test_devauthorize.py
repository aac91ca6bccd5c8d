"""The development authorization endpoint's logic: requests, codes, PKCE."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.auth.devauthorize import DevAuthorizer, DevClient, OAuthError, pkce_challenge
from middleware.auth.devissuer import UnsafeDevelopmentIssuer

VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
ORIGIN = "https://gateway.example"
PATIENT_SCOPES = "openid fhirUser launch/patient patient/Consent.cruds"
AUDITOR_SCOPES = "openid fhirUser user/AuditEvent.rs"


def test_pkce_known_answer() -> None:
    """RFC 7636 Appendix B."""
    assert pkce_challenge(VERIFIER) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def _params(**extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": f"{ORIGIN}/portal/callback",
        "scope": PATIENT_SCOPES,
        "state": "s1",
        "code_challenge": pkce_challenge(VERIFIER),
        "code_challenge_method": "S256",
        **extra,
    }


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dev(clock: Clock) -> DevAuthorizer:
    issuer = UnsafeDevelopmentIssuer("https://dev.example", enabled=True)
    return DevAuthorizer(
        issuer,
        origin=ORIGIN,
        client_id="web",
        redirects={
            f"{ORIGIN}/portal/callback": DevClient(PATIENT_SCOPES, auditor=False),
            f"{ORIGIN}/compliance/callback": DevClient(AUDITOR_SCOPES, auditor=True),
        },
        audience=f"{ORIGIN}/fhir",
        auditor_role="ledger-auditor",
        clock=clock,
    )


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"response_type": "token"}, id="implicit"),
        pytest.param({"redirect_uri": "https://evil.example/portal/callback"}, id="foreign"),
        pytest.param({"redirect_uri": f"{ORIGIN}.evil/cb"}, id="suffix-host"),
        pytest.param({"redirect_uri": "/portal/callback"}, id="relative"),
        pytest.param({"code_challenge_method": "plain"}, id="plain"),
        pytest.param({"code_challenge": "short"}, id="bad-challenge"),
        pytest.param({"state": ""}, id="no-state"),
        pytest.param({"client_id": ""}, id="no-client"),
        # The token faucet: any client, callback or scope used to be minted as asked.
        pytest.param({"client_id": "anything"}, id="other-client"),
        pytest.param({"redirect_uri": f"{ORIGIN}/x"}, id="not-a-callback"),
        pytest.param({"scope": "system/*.cruds user/*.cruds"}, id="system-scope"),
        pytest.param({"scope": f"{PATIENT_SCOPES} user/AuditEvent.rs"}, id="more-scope"),
        pytest.param({"scope": AUDITOR_SCOPES}, id="other-areas-scope"),
        pytest.param({"scope": ""}, id="no-scope"),
    ],
)
def test_bad_requests_refused(dev: DevAuthorizer, extra: dict[str, str]) -> None:
    with pytest.raises(OAuthError):
        dev.request(_params(**extra))


def _token_form(code: str, **extra: str) -> dict[str, Any]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": f"{ORIGIN}/portal/callback",
        "client_id": "web",
        "code_verifier": VERIFIER,
        **extra,
    }


def test_code_for_a_patient(dev: DevAuthorizer) -> None:
    reordered = " ".join(reversed(PATIENT_SCOPES.split()))
    code = dev.grant(dev.request(_params(scope=reordered)), patient="p1", auditor=False)
    answer = dev.exchange(_token_form(code))
    assert answer["patient"] == "p1"
    assert answer["scope"] == PATIENT_SCOPES
    assert answer["token_type"] == "Bearer"
    with pytest.raises(OAuthError):  # one use
        dev.exchange(_token_form(code))


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"code_verifier": "x" * 43}, id="verifier"),
        pytest.param({"redirect_uri": f"{ORIGIN}/compliance/callback"}, id="redirect"),
        pytest.param({"client_id": "other"}, id="client"),
        pytest.param({"grant_type": "password"}, id="grant-type"),
    ],
)
def test_mismatched_exchange_refused(dev: DevAuthorizer, extra: dict[str, str]) -> None:
    code = dev.grant(dev.request(_params()), patient="p1", auditor=False)
    with pytest.raises(OAuthError):
        dev.exchange(_token_form(code, **extra))


def test_expired_code_refused(dev: DevAuthorizer, clock: Clock) -> None:
    code = dev.grant(dev.request(_params()), patient="p1", auditor=False)
    clock.now += 61
    with pytest.raises(OAuthError):
        dev.exchange(_token_form(code))


def test_the_kind_of_user_is_the_callbacks(dev: DevAuthorizer) -> None:
    """An auditor is never signed in through the portal's callback (its scopes), nor a
    patient through the dashboard's: the person picked must match the area."""
    authorizer = dev
    with pytest.raises(OAuthError):
        authorizer.grant(authorizer.request(_params()), patient=None, auditor=True)
    auditor = _params(redirect_uri=f"{ORIGIN}/compliance/callback", scope=AUDITOR_SCOPES)
    with pytest.raises(OAuthError):
        authorizer.grant(authorizer.request(auditor), patient="p1", auditor=False)
    assert authorizer.grant(authorizer.request(auditor), patient=None, auditor=True)


@pytest.mark.parametrize("patient", [None, "", "p/1", "a" * 65, "p 1", ".", ".."])
def test_bad_patient_id_refused(dev: DevAuthorizer, patient: str | None) -> None:
    with pytest.raises(OAuthError):
        dev.grant(dev.request(_params()), patient=patient, auditor=False)
