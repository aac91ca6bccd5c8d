"""JWK Sets: which published keys may verify tokens, and which are ignored (and why)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OKPKey

from middleware.auth.keys import MAX_KEYS, InvalidJwks, parse_jwks

from .tokens import EC, ED, RSA, b64, public_jwk


def _small_rsa_jwk() -> dict[str, Any]:
    # Built by hand: importing a 1024-bit key into joserfc would only warn, never refuse.
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": "small",
        "n": b64(numbers.n.to_bytes(128, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }


def test_sig_keys_of_the_three_types_are_kept() -> None:
    table = parse_jwks({"keys": [public_jwk(RSA), public_jwk(EC), public_jwk(ED)]})
    assert table.ignored == ()
    assert table.find("rsa-1", "RS256") is not None
    assert table.find("ec-1", "ES256") is not None
    assert table.find("ed-1", "EdDSA") is not None
    assert table.find("rsa-1", "ES256") is None
    assert table.find("nope", "EdDSA") is None


def test_use_and_alg_are_optional() -> None:
    bare = {k: v for k, v in public_jwk(ED).items() if k not in ("use", "alg")}
    assert parse_jwks({"keys": [bare]}).find("ed-1", "EdDSA") is not None


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        (public_jwk(ED, use="enc"), "use is not 'sig'"),
        (public_jwk(ED, key_ops=["encrypt"]), "key_ops"),
        (public_jwk(ED, key_ops="verify"), "key_ops"),
        (public_jwk(ED, alg="HS256"), "alg is not"),
        (public_jwk(ED, alg="RS256"), "alg does not fit"),
        (public_jwk(RSA, alg="ES256"), "alg does not fit"),
        ({k: v for k, v in public_jwk(ED).items() if k != "kid"}, "no kid"),
        (public_jwk(ED, kid=""), "no kid"),
        ({**ED.as_dict(private=True), "kid": "ed-1"}, "private key members"),
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, "key type"),
        ({**ECKey.generate_key("P-384").as_dict(private=False), "kid": "p384"}, "P-256"),
        ({**OKPKey.generate_key("X25519").as_dict(private=False), "kid": "x"}, "Ed25519"),
        (_small_rsa_jwk(), "shorter than 2048"),
        ({"kty": "RSA", "kid": "r", "e": "AQAB"}, "shorter than 2048"),
        (public_jwk(EC, x="AAAA"), "not a valid JWK"),
        ("not-an-object", "not a JSON object"),
    ],
    ids=[
        "use-enc",
        "key-ops-no-verify",
        "key-ops-not-list",
        "alg-hmac",
        "alg-wrong-for-okp",
        "alg-wrong-for-rsa",
        "no-kid",
        "empty-kid",
        "private-key",
        "symmetric",
        "p384",
        "x25519",
        "rsa-1024",
        "rsa-no-modulus",
        "bad-point",
        "not-object",
    ],
)
def test_key_is_ignored(jwk: Any, reason: str) -> None:
    table = parse_jwks({"keys": [jwk, public_jwk(RSA)]})
    assert list(table.keys) == ["rsa-1"]
    assert len(table.ignored) == 1
    assert reason in table.ignored[0]
    assert table.ignored[0].startswith("key 0")


def test_reasons_name_the_kid_but_no_key_material() -> None:
    table = parse_jwks({"keys": [public_jwk(ED, use="enc")]})
    assert table.ignored == ("key 0 (kid 'ed-1'): use is not 'sig'",)


def test_same_kid_on_two_key_types_is_resolved_by_algorithm() -> None:
    table = parse_jwks({"keys": [public_jwk(RSA, kid="k"), public_jwk(ED, kid="k")]})
    assert table.find("k", "RS256") is not None
    assert table.find("k", "EdDSA") is not None


def test_same_kid_twice_for_one_algorithm_is_ambiguous() -> None:
    other = OKPKey.generate_key("Ed25519")
    table = parse_jwks({"keys": [public_jwk(ED), {**other.as_dict(private=False), "kid": "ed-1"}]})
    assert table.find("ed-1", "EdDSA") is None


def test_only_the_first_keys_are_read() -> None:
    many = [public_jwk(ED, kid=f"k{i}") for i in range(MAX_KEYS + 5)]
    table = parse_jwks({"keys": many})
    assert len(table.keys) == MAX_KEYS
    assert table.ignored[-1].startswith("keys beyond")


@pytest.mark.parametrize(
    "document",
    [[], {}, {"keys": {}}, "keys", None],
    ids=["array", "no-keys", "keys-not-array", "string", "null"],
)
def test_not_a_jwk_set(document: Any) -> None:
    with pytest.raises(InvalidJwks):
        parse_jwks(document)
