"""Fuzzing the bearer token parser and the claims reader behind it.

Two layers, both reachable by anyone who can send an ``Authorization`` header:

* :func:`~middleware.auth.jose.parse_compact` on compact tokens built from arbitrary header
  members, payload bytes and segment spellings: a parsed JWS that keeps every rule of the
  module docstring, or :class:`~middleware.auth.jose.JoseError`;
* :meth:`~middleware.auth.verify.TokenVerifier.verify` on *validly signed* tokens whose claims
  are arbitrary JSON (every claim the gateway reads given the wrong type, huge numbers, deep
  trees): an :class:`~middleware.auth.identity.Identity` whose registered claims hold, or a
  401. A signature is no reason to trust the shape of what was signed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from middleware.auth.identity import Identity, IdentityRules
from middleware.auth.jose import (
    ALGORITHMS,
    MAX_TOKEN_JSON_DEPTH,
    JoseError,
    b64url_decode,
    b64url_encode,
    parse_compact,
    sign_compact,
)
from middleware.auth.jwks import StaticJwks
from middleware.auth.verify import IssuerConfig, TokenVerifier
from middleware.errors import Unauthorized
from middleware.fhir.limits import depth
from tests.unit.auth.tokens import AUDIENCE, ED, ISSUER, JWKS, NOW, claims

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_ALGS: Final = ("RS256", "ES256", "EdDSA", "none", "HS256", "Ed25519", "rs256", "")


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


_GOOD_HEADER: Final = {"alg": "EdDSA", "typ": "at+jwt", "kid": "ed-1"}
# Mostly one or two members away from a header the parser accepts, so the checks after the
# first one are reached too; ``None`` removes the member.
_headers = st.dictionaries(
    st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku", "x"]),
    st.one_of(
        st.none(),
        st.sampled_from([*_ALGS, "JWT", "at+jwt", "JOSE", "ed-1", "https://attacker.test/k"]),
        st.integers(1, 80).map(_deep),
        _json,
    ),
    max_size=2,
).map(lambda changes: {k: v for k, v in {**_GOOD_HEADER, **changes}.items() if v is not None})
_payloads = st.one_of(
    st.just(json.dumps(claims()).encode()),
    _json.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=40),
    st.integers(1, 80).map(lambda levels: json.dumps({"sub": _deep(levels)}).encode()),
    st.just(b'{"sub":"a","sub":"b"}'),
    st.just(b'{"exp":NaN}'),
)


@st.composite
def _segments(draw: st.DrawFn, data: bytes) -> str:
    """``data`` as base64url, usually canonical, sometimes padded, re-spelt or cut."""
    text = b64url_encode(data)
    how = draw(
        st.sampled_from(["canonical"] * 5 + ["padded", "std-alphabet", "cut", "junk", "last"])
    )
    if how == "padded":
        return text + "=" * (-len(text) % 4)
    if how == "std-alphabet":
        return text.replace("-", "+").replace("_", "/")
    if how == "cut":
        return text[: draw(st.integers(0, len(text)))]
    if how == "last" and text:  # the same bytes with other trailing bits, or other bytes
        return text[:-1] + draw(st.sampled_from("AQgwBRhx-_"))
    if how == "junk":
        return text + draw(st.sampled_from(["A", "B", "AB", " ", ".", "é", "\x00"]))
    return text


@st.composite
def _tokens(draw: st.DrawFn) -> str:
    header = json.dumps(draw(_headers)).encode()
    payload = draw(_payloads)
    signature = draw(st.binary(max_size=64))
    parts = [draw(_segments(header)), draw(_segments(payload)), draw(_segments(signature))]
    return ".".join(draw(st.permutations(parts)) if draw(st.booleans()) else parts)


@settings(max_examples=1_000, suppress_health_check=[HealthCheck.too_slow])
@given(token=st.one_of(_tokens(), st.text(max_size=60)))
@example(token=b64url_encode(b'{"alg":"EdDSA","x":' + b"[" * 1_000 + b"]" * 1_000 + b"}") + ".e30.")
@example(token=b64url_encode(b'{"alg":"EdDSA"}') + "." + b64url_encode(b"[" * 5_000) + ".")
def test_any_compact_token_parses_to_a_strict_jws_or_a_jose_error(token: str) -> None:
    """Arbitrary headers (``none``, HS256, ``crit``, non-string ``kid``, deep members),
    payloads (not JSON, not an object, duplicate names, NaN, deep) and segment spellings
    (padding, the standard alphabet, cut, junk): a JoseError, or a JWS with an allowed
    ``alg``, no extension, a string ``kid``, canonical segments and shallow JSON objects."""
    try:
        jws = parse_compact(token)
    except JoseError:
        return
    assert jws.alg in ALGORITHMS
    assert not {"crit", "b64"} & jws.header.keys()
    assert isinstance(jws.header.get("kid", ""), str)
    assert isinstance(jws.claims, dict)
    head, payload, signature = token.split(".")
    for segment in (head, payload, signature):
        assert b64url_encode(b64url_decode(segment)) == segment
    assert depth(b64url_decode(payload), MAX_TOKEN_JSON_DEPTH) <= MAX_TOKEN_JSON_DEPTH
    assert jws.signing_input == f"{head}.{payload}".encode()


_READ: Final = (
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "scope",
    "patient",
    "fhirUser",
    "client_id",
    "azp",
    "jti",
    "roles",
    "purpose_of_use",
    "fhirContext",
)
_claim_values = st.one_of(
    _json,
    st.sampled_from([NOW - 100, NOW + 100, NOW + 1_000, NOW - 1_000]),
    st.sampled_from(
        [
            ISSUER,
            AUDIENCE,
            [AUDIENCE, 1],
            NOW + 100,
            NOW - 100,
            10**400,
            1e308,
            -1e308,
            "patient/*.rs user/Observation.cruds?category=x launch/patient",
            "Practitioner/../Patient/x",
            f"{AUDIENCE}/Patient/p1",
            "p1",
            "../p1",
            [{"system": "s", "code": "TREAT"}],
            "TREAT",
        ]
    ),
)


async def _verify(sent: dict[str, Any]) -> Identity:
    """``sent`` signed with a trusted key, verified at ``NOW``."""
    token = sign_compact({"alg": "EdDSA", "typ": "at+jwt", "kid": ED.kid}, sent, ED)
    verifier = TokenVerifier(
        {ISSUER: IssuerConfig(StaticJwks(JWKS), frozenset({AUDIENCE}))},
        rules=IdentityRules(fhir_user_bases=frozenset({AUDIENCE})),
        clock=lambda: NOW,
    )
    return await verifier.verify(f"Bearer {token}")


def test_the_unchanged_claims_verify() -> None:
    """The fuzzed claims start from a set that verifies, so the property below sees both
    outcomes (a verifier that refused everything would pass it vacuously)."""
    identity = asyncio.run(_verify(claims()))
    assert identity.subject == "alice"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(st.sampled_from(_READ), st.one_of(st.none(), _claim_values), max_size=3)
)
@example(changes={"aud": "https://other.test/fhir"})
@example(changes={"exp": NOW - 100})
@example(changes={"nbf": NOW + 100})
@example(changes={"iat": NOW + 100})
@example(changes={"exp": 10**400})
@example(changes={"nbf": 1e308, "iat": -(10**400)})
@example(changes={"aud": [AUDIENCE, {"a": 1}]})
@example(changes={"scope": ["patient/*.rs"], "roles": "admin"})
@example(changes={"purpose_of_use": {"system": ["x"]}})
def test_signed_tokens_with_any_claims_give_an_identity_or_a_401(changes: dict[str, Any]) -> None:
    """A valid signature over claims of any shape (``None`` removes the claim): the verifier
    returns an Identity only when the registered claims hold (issuer, audience, subject, not
    expired, not before ``nbf``/``iat``), and otherwise answers 401; never another exception."""
    sent = claims(**changes)
    try:
        identity = asyncio.run(_verify(sent))
    except Unauthorized:
        return
    assert isinstance(identity, Identity)
    assert identity.issuer == sent["iss"] == ISSUER
    assert isinstance(sent["sub"], str)
    assert identity.subject == sent["sub"]
    aud = sent["aud"]
    assert aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)
    assert identity.expires_at + 30 > NOW
    for name in ("nbf", "iat"):
        assert sent.get(name) is None or sent[name] <= NOW + 30
