"""Detached Ed25519 signatures (ledger.signing.verify_detached): RFC 8032 vectors, round
trips, and every malformed input answered False, never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.ledger.signing import SigningKey, verify_detached

# RFC 8032 §7.1, TEST 2 (one-byte message 0x72).
RFC8032_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC8032_MESSAGE = bytes.fromhex("72")
RFC8032_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)
KEY = SigningKey.from_seed("patient", bytes(range(32)))


def test_the_rfc_8032_vector_verifies() -> None:
    assert verify_detached(RFC8032_PUBLIC, RFC8032_MESSAGE, RFC8032_SIGNATURE)


@given(st.binary(max_size=512))
def test_a_signature_verifies_over_its_message_only(message: bytes) -> None:
    signature = KEY.sign(message)
    assert verify_detached(KEY.public_key, message, signature)
    assert not verify_detached(KEY.public_key, message + b"\x00", signature)


@given(st.integers(0, 63), st.integers(1, 255))
def test_flipping_any_signature_bit_breaks_it(position: int, flip: int) -> None:
    signature = bytearray(RFC8032_SIGNATURE)
    signature[position] ^= flip
    assert not verify_detached(RFC8032_PUBLIC, RFC8032_MESSAGE, bytes(signature))


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (RFC8032_PUBLIC[:31], RFC8032_SIGNATURE),
        (RFC8032_PUBLIC, RFC8032_SIGNATURE[:63]),
        (RFC8032_PUBLIC + b"\x00", RFC8032_SIGNATURE),
        (bytes(32), RFC8032_SIGNATURE),
        (KEY.public_key, RFC8032_SIGNATURE),
    ],
    ids=["short-key", "short-signature", "long-key", "zero-key", "other-key"],
)
def test_malformed_inputs_are_false(public_key: bytes, signature: bytes) -> None:
    assert not verify_detached(public_key, RFC8032_MESSAGE, signature)
