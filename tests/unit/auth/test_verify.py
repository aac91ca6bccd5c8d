"""Bearer token verification: what is accepted, what is refused and how, and the attacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import Key
from structlog.testing import capture_logs

from middleware.auth.identity import IdentityRules
from middleware.auth.jwks import JwksCache, JwksUnavailable, StaticJwks
from middleware.auth.verify import (
    CACHE_SECONDS,
    DEFAULT_LEEWAY,
    IssuerConfig,
    TokenVerifier,
    bearer_challenge,
    check_claims,
)
from middleware.errors import ServiceUnavailable, Unauthorized
from middleware.fhir.outcome import render_error

from .tokens import (
    AUDIENCE,
    EC,
    ED,
    ISSUER,
    JWKS,
    JWKS_URL,
    NOW,
    OTHER_ISSUER,
    ROTATED,
    RSA,
    b64,
    claims,
    forge,
    hs256_with_public_key,
    jwks,
    mint,
    mint_with_joserfc,
    public_jwk,
)


class SpyKeys:
    """A key source that records every lookup (to prove some refusals happen before any)."""

    def __init__(self, document: Any) -> None:
        self.inner = StaticJwks(document)
        self.lookups: list[tuple[str, str]] = []

    async def find(self, kid: str, alg: str) -> Key | None:
        self.lookups.append((kid, alg))
        return await self.inner.find(kid, alg)


class UnavailableKeys:
    async def find(self, kid: str, alg: str) -> Key | None:
        raise JwksUnavailable("down")


def make_verifier(
    keys: Any = None, *, algorithms: frozenset[str] | None = None, **kw: Any
) -> TokenVerifier:
    config = IssuerConfig(
        keys if keys is not None else StaticJwks(JWKS),
        frozenset({AUDIENCE, "https://gateway.test/other"}),
        *([algorithms] if algorithms else []),
    )
    kw.setdefault("rules", IdentityRules(fhir_user_bases=frozenset({AUDIENCE})))
    kw.setdefault("clock", lambda: NOW)
    return TokenVerifier({ISSUER: config}, **kw)


async def refusal(token: str, verifier: TokenVerifier | None = None) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await (verifier or make_verifier()).verify(f"Bearer {token}")
    return info.value


def _swap_payload(token: str, **overrides: Any) -> str:
    head, _, signature = token.split(".")
    return f"{head}.{mint(ED, **overrides).split('.')[1]}.{signature}"


def _flip_last_signature_byte(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(__import__("base64").urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 0x01
    return f"{head}.{payload}.{b64(bytes(raw))}"


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: mint(RSA),
        lambda: mint(EC),
        lambda: mint(ED),
        lambda: mint_with_joserfc(RSA),
        lambda: mint_with_joserfc(EC),
        lambda: mint(ED, aud=["https://someone.else", AUDIENCE]),
        lambda: mint(ED, aud="https://gateway.test/other"),
        lambda: mint(ED, exp=int(NOW) - 29),
        lambda: mint(ED, nbf=int(NOW) + 29),
        lambda: mint(ED, nbf=None, iat=None, jti=None),
        lambda: mint(ED, header={"typ": None}),
        lambda: mint(ED, header={"typ": "JWT", "jku": "https://evil.test/jwks"}),
    ],
    ids=[
        "rs256",
        "es256",
        "eddsa",
        "rs256-signed-by-joserfc",
        "es256-signed-by-joserfc",
        "aud-list",
        "second-audience",
        "exp-within-leeway",
        "nbf-within-leeway",
        "only-required-claims",
        "untyped",
        "jku-ignored",
    ],
)
async def test_valid_token_is_accepted(make_token: Callable[[], str]) -> None:
    identity = await make_verifier().verify(f"Bearer {make_token()}")
    assert identity.subject == "alice"
    assert identity.issuer == ISSUER


async def test_identity_carries_the_smart_claims() -> None:
    token = mint(
        ED,
        purpose_of_use=[{"system": "urn:x", "code": "ETREAT"}, "TREAT"],
        roles=["doctor"],
    )
    identity = await make_verifier().verify(f"Bearer {token}")
    assert identity.fhir_user == "Practitioner/9"
    assert identity.patient == "123"
    assert identity.client_id == "app-1"
    assert identity.token_id == "token-1"
    assert identity.expires_at == NOW + 300
    assert identity.kind == "patient"
    assert [s.text for s in identity.scopes] == ["patient/Observation.rs"]
    assert identity.purpose_of_use == (
        ("urn:x", "ETREAT"),
        ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT"),
    )
    assert identity.roles == {"doctor"}


async def test_scheme_is_case_insensitive_and_spaces_are_tolerated() -> None:
    verifier = make_verifier()
    assert (await verifier.verify(f"bearer {mint()}")).subject == "alice"
    assert (await verifier.verify(f"BEARER   {mint()}  ")).subject == "alice"


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        # time (RFC 7519 §4.1.4-6, leeway 30 s)
        (lambda: mint(ED, exp=int(NOW) - 31), "expired"),
        (lambda: mint(ED, exp=int(NOW) - 30), "expired"),
        (lambda: mint(ED, exp=None), "exp"),
        (lambda: mint(ED, exp="soon"), "exp"),
        (lambda: mint(ED, exp=True), "exp"),
        (lambda: mint(ED, exp=10**400), "exp"),
        (lambda: mint(ED, nbf=int(NOW) + 31), "not valid yet"),
        (lambda: mint(ED, iat=int(NOW) + 3600), "issued in the future"),
        # audience (RFC 7519 §4.1.3)
        (lambda: mint(ED, aud="https://someone.else/fhir"), "aud"),
        (lambda: mint(ED, aud=["https://someone.else/fhir"]), "aud"),
        (lambda: mint(ED, aud=[]), "aud"),
        (lambda: mint(ED, aud=None), "aud"),
        (lambda: mint(ED, aud=[AUDIENCE, 7]), "aud"),
        # issuer and keys
        (lambda: mint(ED, iss=OTHER_ISSUER), "issuer is not trusted"),
        (lambda: mint(ED, iss=None), "issuer is not trusted"),
        (lambda: mint(ED, iss=[ISSUER]), "issuer is not trusted"),
        (lambda: mint(ED, header={"kid": "unknown"}), "signing key is unknown"),
        (lambda: mint(ED, header={"kid": None}), "names no signing key"),
        (lambda: mint(EC, header={"kid": "rsa-1"}), "signing key is unknown"),
        (lambda: mint(ROTATED), "signing key is unknown"),
        # integrity
        (lambda: _swap_payload(mint(ED), sub="mallory"), "signature is invalid"),
        (lambda: _flip_last_signature_byte(mint(RSA)), "signature is invalid"),
        (lambda: _flip_last_signature_byte(mint(EC)), "signature is invalid"),
        (lambda: mint(RSA).rsplit(".", 1)[0] + ".", "signature is invalid"),
        # subject and SMART claims
        (lambda: mint(ED, sub=None), "sub"),
        (lambda: mint(ED, sub=""), "sub"),
        (lambda: mint(ED, fhirUser="Observation/1"), "fhirUser"),
        # a loosely read fhirUser became Patient/x, or any server's user (now refused)
        (lambda: mint(ED, fhirUser="Practitioner/../Patient/x"), "fhirUser: expected Type/id"),
        (
            lambda: mint(ED, fhirUser="https://evil.test/fhir/Practitioner/9"),
            "fhirUser: the URL is not under this gateway's FHIR base",
        ),
        (lambda: mint(ED, patient="../Patient/1"), "patient"),
        (lambda: mint(ED, scope=7), "scope"),
        # algorithms and structure
        (lambda: forge({"alg": "none", "kid": "ed-1"}, claims()), "algorithm is not allowed"),
        (lambda: hs256_with_public_key(RSA), "algorithm is not allowed"),
        (lambda: "not-a-jwt", "compact serialization"),
    ],
    ids=[
        "expired",
        "expired-at-leeway-edge",
        "no-exp",
        "exp-string",
        "exp-bool",
        "exp-overflow",
        "nbf-future",
        "iat-future",
        "wrong-aud",
        "wrong-aud-list",
        "empty-aud-list",
        "no-aud",
        "aud-list-not-strings",
        "unknown-issuer",
        "no-issuer",
        "issuer-not-string",
        "unknown-kid",
        "no-kid",
        "kid-of-another-key-type",
        "key-not-published-yet",
        "tampered-payload",
        "tampered-rsa-signature",
        "tampered-ec-signature",
        "signature-stripped",
        "no-sub",
        "empty-sub",
        "fhir-user-not-a-user",
        "fhir-user-dot-segments",
        "fhir-user-on-another-server",
        "patient-not-an-id",
        "scope-not-string",
        "alg-none",
        "hs256-with-rsa-public-key",
        "not-a-jws",
    ],
)
async def test_token_is_refused(make_token: Callable[[], str], reason: str) -> None:
    error = await refusal(make_token())
    assert reason in error.diagnostics
    assert error.status == 401
    assert error.www_authenticate.startswith('Bearer error="invalid_token", error_description="')


@pytest.mark.parametrize(
    "token",
    [forge({"alg": "none", "kid": "rsa-1"}, claims()), hs256_with_public_key(RSA)],
    ids=["alg-none", "hs256-with-rsa-public-key"],
)
async def test_forbidden_algorithms_fail_before_any_key_lookup(token: str) -> None:
    """RFC 8725 §2.1: the RSA public key must never be tried as an HMAC secret."""
    keys = SpyKeys(JWKS)
    await refusal(token, make_verifier(keys))
    assert keys.lookups == []


async def test_algorithm_must_be_allowed_for_the_issuer() -> None:
    keys = SpyKeys(JWKS)
    error = await refusal(mint(ED), make_verifier(keys, algorithms=frozenset({"RS256"})))
    assert "not allowed for its issuer" in error.diagnostics
    assert keys.lookups == []


async def test_key_published_for_encryption_is_ignored() -> None:
    keys = StaticJwks({"keys": [public_jwk(ED, use="enc")]})
    error = await refusal(mint(ED), make_verifier(keys))
    assert "signing key is unknown" in error.diagnostics


async def test_leeway_is_configurable() -> None:
    strict = make_verifier(leeway=0)
    await refusal(mint(ED, exp=int(NOW)), strict)
    assert (await strict.verify(f"Bearer {mint(ED, exp=int(NOW) + 1)}")).subject == "alice"
    with pytest.raises(ValueError, match="leeway"):
        make_verifier(leeway=-1)


# --- the Authorization header and the challenge (RFC 6750) ------------------------------------


@pytest.mark.parametrize(
    ("header", "challenge"),
    [
        (None, "Bearer"),
        ("", "Bearer"),
        ("   ", "Bearer"),
        ("Basic YWxpY2U6c2VjcmV0", 'Bearer error="invalid_request"'),
        ("Bearer", 'Bearer error="invalid_request"'),
        ("Bearer a b", 'Bearer error="invalid_request"'),
        ("Bearer a,b", 'Bearer error="invalid_request"'),
        ("Bearertoken", 'Bearer error="invalid_request"'),
    ],
    ids=["absent", "empty", "blank", "basic", "no-token", "two-tokens", "comma", "no-space"],
)
async def test_header_problems(header: str | None, challenge: str) -> None:
    with pytest.raises(Unauthorized) as info:
        await make_verifier().verify(header)
    assert info.value.www_authenticate.startswith(challenge)


async def test_missing_credentials_get_a_bare_challenge_with_realm() -> None:
    with pytest.raises(Unauthorized) as info:
        await make_verifier(realm="consentry").verify(None)
    assert info.value.www_authenticate == 'Bearer realm="consentry"'
    assert info.value.code == "login"


def test_challenge_quotes_are_never_broken() -> None:
    value = bearer_challenge(error="invalid_token", description='say "hi" \\ é')
    assert value == 'Bearer error="invalid_token", error_description="say ?hi? ? ?"'


def test_render_error_sends_the_challenge() -> None:
    status, headers, _ = render_error(
        Unauthorized("expired", www_authenticate='Bearer error="invalid_token"')
    )
    assert status == 401
    assert (b"www-authenticate", b'Bearer error="invalid_token"') in headers


async def test_the_token_is_never_logged_or_echoed() -> None:
    token = _swap_payload(mint(ED), sub="mallory")
    with capture_logs() as logs:
        error = await refusal(token)
    assert logs == [
        {"event": "bearer token refused", "log_level": "info", "reason": error.diagnostics}
    ]
    for part in token.split("."):
        assert part not in error.diagnostics
        assert part not in error.www_authenticate


async def test_unreadable_keys_are_a_503_not_a_401() -> None:
    with pytest.raises(ServiceUnavailable):
        await make_verifier(UnavailableKeys()).verify(f"Bearer {mint(ED)}")


# --- rotation through the verifier ------------------------------------------------------------


async def test_rotation_new_key_is_accepted_after_refetch() -> None:
    router = respx.Router(assert_all_called=False)
    route = router.get(JWKS_URL)
    route.side_effect = [
        httpx.Response(200, json=jwks(ED)),
        httpx.Response(200, json=jwks(ED, ROTATED)),
        httpx.Response(200, json=jwks(ED, ROTATED)),
    ]
    ticks = iter(range(0, 10_000, 60))
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        keys = JwksCache(JWKS_URL, client=client, refresh_interval=30, clock=lambda: next(ticks))
        verifier = make_verifier(keys)
        assert (await verifier.verify(f"Bearer {mint(ED)}")).subject == "alice"
        assert (await verifier.verify(f"Bearer {mint(ROTATED)}")).subject == "alice"
        error = await refusal(mint(ED, header={"kid": "ed-3"}), verifier)
    assert "signing key is unknown" in error.diagnostics
    assert route.call_count == 3  # initial load, rotation, one more try for ed-3


# --- pure claim checks ------------------------------------------------------------------------


def test_check_claims_accepts_a_valid_set() -> None:
    check_claims(claims(), audiences=frozenset({AUDIENCE}), now=NOW, leeway=30)


# --- property: flipping any byte breaks verification ------------------------------------------

_VERIFIER = make_verifier(rules=IdentityRules())
_TOKENS = {"EdDSA": mint(ED), "ES256": mint(EC), "RS256": mint(RSA)}


@settings(max_examples=300, deadline=None)
@given(
    alg=st.sampled_from(sorted(_TOKENS)),
    segment=st.sampled_from([0, 1, 2]),
    position=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_any_byte_flip_breaks_verification(
    alg: str, segment: int, position: float, mask: int
) -> None:
    """Flipping any bits of any one byte of the header, payload or signature is refused."""
    parts = _TOKENS[alg].split(".")
    target = parts[segment]
    index = int(position * len(target))
    parts[segment] = target[:index] + chr(ord(target[index]) ^ mask) + target[index + 1 :]
    tampered = ".".join(parts)
    with pytest.raises(Unauthorized):
        asyncio.run(_VERIFIER.verify(f"Bearer {tampered}"))


# --- the cache of verified tokens ---------------------------------------------------------------


class MovingClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def test_a_token_is_verified_once_then_taken_from_the_cache() -> None:
    spy = SpyKeys(JWKS)
    verifier = make_verifier(spy)
    token = f"Bearer {mint(ED)}"
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert first == second
    assert len(spy.lookups) == 1


async def test_a_cached_token_still_expires() -> None:
    """The cache never extends a token: past ``exp`` (plus leeway) it is refused as before."""
    clock = MovingClock()
    verifier = make_verifier(clock=clock)
    token = f"Bearer {mint(ED, exp=int(NOW) + 10)}"
    await verifier.verify(token)
    clock.now = NOW + 10 + DEFAULT_LEEWAY
    with pytest.raises(Unauthorized):
        await verifier.verify(token)


async def test_a_cached_token_is_checked_again_after_the_cache_lifetime() -> None:
    """A key withdrawn from the issuer's set stops its tokens within ``CACHE_SECONDS``."""
    clock = MovingClock()
    spy = SpyKeys(JWKS)
    verifier = make_verifier(spy, clock=clock)
    token = f"Bearer {mint(ED, exp=int(NOW) + 3600)}"
    await verifier.verify(token)
    clock.now = NOW + CACHE_SECONDS
    await verifier.verify(token)
    assert len(spy.lookups) == 2


async def test_a_changed_token_is_never_a_cache_hit() -> None:
    verifier = make_verifier()
    token = mint(ED)
    await verifier.verify(f"Bearer {token}")
    await refusal(_flip_last_signature_byte(token), verifier)


async def test_a_token_stays_proved_past_the_cache_lifetime_until_it_expires() -> None:
    """What the proxy's address budget asks before any token work: a token verified once is
    proved (let past the budget, and verified again) until its own ``exp`` plus leeway, not
    only for the cache's minute. Else a flood of bad tokens behind a shared address would
    lock a valid one out once its cache entry lapsed. A token never verified, a refused one
    and an expired one are not proved."""
    clock = MovingClock()
    verifier = make_verifier(clock=clock)
    token = f"Bearer {mint(ED, exp=int(NOW) + 3600)}"
    assert not verifier.proved(token)
    assert not verifier.proved(None)
    await verifier.verify(token)
    assert verifier.proved(token)
    assert verifier.proved(f"  {token} ")  # compared as verify() compares it
    clock.now = NOW + CACHE_SECONDS + 1
    assert verifier.proved(token)
    clock.now = NOW + 3600 + DEFAULT_LEEWAY
    assert not verifier.proved(token)
    bad = f"Bearer {_flip_last_signature_byte(mint(ED))}"
    with pytest.raises(Unauthorized):
        await verifier.verify(bad)
    assert not verifier.proved(bad)
