"""The JSON codec keeps numbers exactly as written (FHIR decimal precision)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.fhir import jsoncodec


@pytest.mark.parametrize(
    "text",
    [
        b'{"value":5.40}',
        b'{"value":1.000}',
        b'{"value":12345678901234567890.123456789012}',
        b'{"value":123456789012345678901234567890}',
        b'{"value":1e2}',
        b'{"value":-0.0}',
        b'{"value":6.02E+23}',
        b'{"z":1,"a":2,"m":{"y":[3.10,"x"]}}',
    ],
    ids=[
        "trailing-zero",
        "three-zeros",
        "20-digit-decimal",
        "big-int",
        "exponent",
        "neg-zero",
        "big-exp",
        "key-order",
    ],
)
def test_round_trip_is_byte_exact(text: bytes) -> None:
    assert jsoncodec.encode(jsoncodec.decode(text)) == text


@given(
    st.lists(
        st.from_regex(r"-?(0|[1-9][0-9]{0,25})\.[0-9]{1,20}", fullmatch=True),
        min_size=1,
        max_size=10,
    )
)
def test_any_decimal_text_survives(decimals: list[str]) -> None:
    text = ('{"values":[' + ",".join(decimals) + "]}").encode()
    assert jsoncodec.encode(jsoncodec.decode(text)) == text


def test_malformed_json_raises_decode_error() -> None:
    with pytest.raises(jsoncodec.DecodeError):
        jsoncodec.decode(b'{"a":')
