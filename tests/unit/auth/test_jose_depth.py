"""Token JSON nested too deep is refused before it is decoded (auth.jose)."""

from __future__ import annotations

import base64
import json

import pytest

from middleware.auth.jose import MAX_TOKEN_JSON_DEPTH, JoseError, parse_compact


def segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


HEADER = segment(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
SIGNATURE = segment(b"s" * 64)


def nested(levels: int) -> bytes:
    return b'{"sub":"a","x":' + b"[" * (levels - 1) + b"1" + b"]" * (levels - 1) + b"}"


@pytest.mark.parametrize("levels", [MAX_TOKEN_JSON_DEPTH + 1, 1_000, 5_000])
def test_a_payload_nested_past_the_limit_is_a_jose_error(levels: int) -> None:
    """Attack: claims of 1,000 nested arrays. They are decoded before the signature is
    checked, and ``json.loads`` raised RecursionError (a 500 for anyone); now a JoseError
    (401), decided before decoding."""
    with pytest.raises(JoseError, match="nests too deep"):
        parse_compact(f"{HEADER}.{segment(nested(levels))}.{SIGNATURE}")


def test_a_header_nested_past_the_limit_is_a_jose_error() -> None:
    header = segment(b'{"alg":"ES256","x":' + b"[" * 1_000 + b"]" * 1_000 + b"}")
    with pytest.raises(JoseError, match="header nests too deep"):
        parse_compact(f"{header}.{segment(nested(2))}.{SIGNATURE}")


def test_a_payload_at_the_limit_is_parsed() -> None:
    parsed = parse_compact(f"{HEADER}.{segment(nested(MAX_TOKEN_JSON_DEPTH))}.{SIGNATURE}")
    assert parsed.claims["sub"] == "a"
