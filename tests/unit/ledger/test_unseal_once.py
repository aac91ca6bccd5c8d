"""unseal_once opens exactly what PyNaCl's SecretBox opens (libsodium's
crypto_secretbox_open_easy, the all-zero nonce): the same plaintext for sealed bytes, None for
any truncated, extended or changed ones and for another key."""

from __future__ import annotations

import nacl.exceptions
import nacl.secret
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.signing import seal_once, unseal_once

NONCE = bytes(24)


def reference(key: bytes, sealed: bytes) -> bytes | None:
    try:
        return nacl.secret.SecretBox(key).decrypt(sealed, NONCE)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
        return None


@settings(max_examples=500)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=300),
    st.sampled_from(["none", "cut", "extend", "flip", "prefix", "other-key", "random"]),
    st.data(),
)
def test_unseal_once_is_secretbox_decrypt(
    key: bytes, plain: bytes, change: str, data: st.DataObject
) -> None:
    sealed = seal_once(key, plain)
    if change == "cut":
        sealed = sealed[: data.draw(st.integers(0, len(sealed)))]
    elif change == "extend":
        sealed += data.draw(st.binary(min_size=1, max_size=4))
    elif change == "flip":
        at = data.draw(st.integers(0, len(sealed) - 1))
        sealed = sealed[:at] + bytes([sealed[at] ^ 1]) + sealed[at + 1 :]
    elif change == "prefix":
        sealed = bytes(16) + sealed
    elif change == "other-key":
        key = bytes(b ^ 0xFF for b in key)
    elif change == "random":
        sealed = data.draw(st.binary(max_size=64))
    opened = unseal_once(key, sealed)
    assert opened == reference(key, sealed)
    assert change != "none" or opened == plain
