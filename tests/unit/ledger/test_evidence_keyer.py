"""evidence_keyer: an export's entry keys, one keyed BLAKE2b state copied per salt."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.ledger.errors import MalformedError
from middleware.ledger.signing import evidence_key, evidence_keyer


@given(st.binary(min_size=32, max_size=32), st.lists(st.binary(max_size=80), max_size=8))
def test_keyer_makes_the_keys_evidence_key_makes(patient_key: bytes, salts: list[bytes]) -> None:
    """Every salt, in any order and repeated, gets evidence_key's key (the copied state is
    not changed by an earlier salt)."""
    key_of = evidence_keyer(patient_key)
    for salt in [*salts, *salts]:
        assert key_of(salt) == evidence_key(patient_key, salt)


def test_keyer_is_keyed_personalised_blake2b() -> None:
    """The same bytes as RFC 7693 keyed BLAKE2b-256 with the evidence personalisation,
    computed here without the copied state."""
    patient_key, salt = bytes(range(32)), bytes(range(32, 64))
    expected = hashlib.blake2b(
        salt, digest_size=32, key=patient_key, person=b"consentry/evkey1"
    ).digest()
    assert evidence_keyer(patient_key)(salt) == expected


@pytest.mark.parametrize(
    "patient_key",
    [b"", bytes(31), bytes(33), bytearray(32)],
    ids=["empty", "31", "33", "bytearray"],
)
def test_keyer_refuses_a_key_of_the_wrong_size_or_type(patient_key: bytes) -> None:
    with pytest.raises(MalformedError):
        evidence_keyer(patient_key)
