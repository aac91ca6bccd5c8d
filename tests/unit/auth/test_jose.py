"""JWS compact serialization: a published known answer, strict parsing, algorithm pinning."""

from __future__ import annotations

import json

import pytest
from joserfc.jwk import ECKey, Key, OKPKey

from middleware.auth.jose import (
    CompactJws,
    JoseError,
    b64url_decode,
    key_fits,
    parse_compact,
    sign_compact,
    verify_signature,
)

from .tokens import EC, ED, RSA, b64, claims, forge, mint

# RFC 8037 Appendix A.1 (key) and A.4 (JWS of "Example of Ed25519 signing").
RFC8037_KEY: dict[str, str | list[str]] = {
    "kty": "OKP",
    "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)

# --- known answers ----------------------------------------------------------------------------


def test_eddsa_signing_reproduces_rfc8037_a4() -> None:
    key = OKPKey.import_key(RFC8037_KEY)
    token = sign_compact({"alg": "EdDSA"}, b"Example of Ed25519 signing", key)
    assert token == RFC8037_JWS


def test_rfc8037_a5_validation() -> None:
    key = OKPKey.import_key({k: v for k, v in RFC8037_KEY.items() if k != "d"})
    head, payload, signature = RFC8037_JWS.split(".")
    jws = CompactJws({"alg": "EdDSA"}, {}, f"{head}.{payload}".encode(), b64url_decode(signature))
    assert verify_signature(jws, key)
    tampered = CompactJws({"alg": "EdDSA"}, {}, jws.signing_input + b"x", jws.signature)
    assert not verify_signature(tampered, key)


# --- strict base64url -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "segment",
    ["QQ==", "QR", "Q", "Q+", "Q/", "Q Q", "QQ.", "é"],
    ids=[
        "padded",
        "non-canonical-bits",
        "impossible-length",
        "plus",
        "slash",
        "space",
        "dot",
        "non-ascii",
    ],
)
def test_base64url_must_be_canonical_and_unpadded(segment: str) -> None:
    with pytest.raises(JoseError):
        b64url_decode(segment)


def test_base64url_round_trip() -> None:
    assert b64url_decode("QQ") == b"A"
    assert b64url_decode("") == b""


# --- parse_compact refusals -------------------------------------------------------------------

VALID_BODY = claims()


def _raw(header: bytes, body: bytes = b"{}") -> str:
    return f"{b64(header)}.{b64(body)}.{b64(b'sig')}"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        # algorithms: decided from the header before anything else
        (forge({"alg": "none"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": "None"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": "HS256", "kid": "rsa-1"}, VALID_BODY, b"x" * 32), "not allowed"),
        (forge({"alg": "HS512"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": "RS384"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": "PS256"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": "ES384"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": "Ed25519"}, VALID_BODY), "algorithm is not allowed"),
        (forge({"alg": ["RS256"]}, VALID_BODY), "algorithm is not allowed"),
        (forge({"typ": "JWT"}, VALID_BODY), "algorithm is not allowed"),
        # extensions and typing
        (forge({"alg": "RS256", "crit": ["exp"], "exp": 1}, VALID_BODY), "extension"),
        (forge({"alg": "RS256", "b64": False}, VALID_BODY), "extension"),
        (forge({"alg": "RS256", "typ": "dpop+jwt"}, VALID_BODY), "not typed"),
        (forge({"alg": "RS256", "kid": 7}, VALID_BODY), "key id"),
        # structure
        ("a.b", "compact serialization"),
        ("a.b.c.d", "compact serialization"),
        ("eyJ.eyJ.=", "compact serialization"),
        (_raw(b'{"alg":"RS256","alg":"EdDSA"}'), "header is not a JSON object"),
        (_raw(b'["alg"]'), "header is not a JSON object"),
        (_raw(b"\xff\xfe"), "header is not a JSON object"),
        (_raw(b'{"alg":"RS256"}', b'{"exp":NaN}'), "payload is not a JSON object"),
        (_raw(b'{"alg":"RS256"}', b'{"a":1,"a":2}'), "payload is not a JSON object"),
        (_raw(b'{"alg":"RS256"}', b'"text"'), "payload is not a JSON object"),
        ("a" * 20000, "too long"),
    ],
    ids=[
        "alg-none",
        "alg-None",
        "alg-HS256",
        "alg-HS512",
        "alg-RS384",
        "alg-PS256",
        "alg-ES384",
        "alg-Ed25519-name",
        "alg-not-a-string",
        "alg-missing",
        "crit",
        "b64-false",
        "typ-dpop",
        "kid-not-string",
        "two-segments",
        "four-segments",
        "bad-base64",
        "duplicate-header-member",
        "header-array",
        "header-not-utf8",
        "payload-nan",
        "duplicate-claim",
        "payload-string",
        "oversized",
    ],
)
def test_parse_compact_refuses(token: str, message: str) -> None:
    with pytest.raises(JoseError, match=message):
        parse_compact(token)


def test_parse_compact_reads_header_claims_and_signed_bytes() -> None:
    token = mint(ED)
    jws = parse_compact(token)
    assert jws.alg == "EdDSA"
    assert jws.kid == "ed-1"
    assert jws.claims == claims()
    assert jws.signing_input == token.rsplit(".", 1)[0].encode()
    assert verify_signature(jws, ED)


# --- key and algorithm fit --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "key", "fits"),
    [
        ("RS256", RSA, True),
        ("ES256", EC, True),
        ("EdDSA", ED, True),
        ("RS256", EC, False),
        ("ES256", RSA, False),
        ("EdDSA", EC, False),
        ("HS256", RSA, False),
        ("none", ED, False),
        ("ES256", ECKey.generate_key("P-384"), False),
        ("EdDSA", OKPKey.generate_key("X25519"), False),
        ("EdDSA", OKPKey.generate_key("Ed448"), False),
        ("EdDSA", OKPKey.import_key({**ED.as_dict(private=False), "use": "enc"}), False),
        ("EdDSA", OKPKey.import_key({**ED.as_dict(private=False), "alg": "ES256"}), False),
    ],
    ids=[
        "rsa-rs256",
        "ec-es256",
        "okp-eddsa",
        "ec-not-rs256",
        "rsa-not-es256",
        "ec-not-eddsa",
        "hs256-never",
        "none-never",
        "p384-not-es256",
        "x25519-not-eddsa",
        "ed448-not-eddsa",
        "use-enc",
        "key-alg-disagrees",
    ],
)
def test_key_fits(alg: str, key: Key, fits: bool) -> None:
    assert key_fits(alg, key) is fits


def test_signature_under_the_wrong_key_type_is_invalid() -> None:
    jws = parse_compact(mint(EC))
    assert not verify_signature(jws, RSA)
    assert not verify_signature(jws, ED)


def test_sign_refuses_public_keys_and_foreign_algorithms() -> None:
    public = OKPKey.import_key(ED.as_dict(private=False))
    with pytest.raises(JoseError):
        sign_compact({"alg": "EdDSA"}, {}, public)
    with pytest.raises(JoseError):
        sign_compact({"alg": "HS256"}, {}, RSA)


def test_claims_are_compact_json() -> None:
    token = sign_compact({"alg": "EdDSA"}, {"a": "é"}, ED)
    payload = b64url_decode(token.split(".")[1])
    assert payload == json.dumps({"a": "é"}, separators=(",", ":"), ensure_ascii=False).encode()
