"""The canonical form patients sign (``jsoncodec.encode_canonical``) is exactly what its
documentation says, checked against an independent encoder (the standard library's ``json``)
and hand-written bytes; where it departs from RFC 8785 (numbers), the departure is pinned."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.fhir import jsoncodec

# JSON without non-integer numbers and with integers JCS writes as digits (|n| < 2**53): here
# the documented form, RFC 8785 and json.dumps(sort_keys, compact, ensure_ascii=False) agree.
_KEYS = st.text(alphabet=st.characters(codec="utf-8", max_codepoint=0xFFFF))
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(alphabet=st.characters(codec="utf-8"))
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(_VALUES)
def test_without_decimals_it_is_the_standard_sorted_compact_form(value: object) -> None:
    """Keys sorted by code point, no whitespace, UTF-8, RFC 8785 string escapes: the bytes
    the standard library writes with sorted keys, compact separators and no ASCII escaping."""
    reference = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    decoded = jsoncodec.decode(reference.encode())
    assert jsoncodec.encode_canonical(decoded) == reference.encode("utf-8")


@pytest.mark.parametrize(
    ("sent", "signed"),
    [
        (b'{"value": 5.40}', b'{"value":5.40}'),  # JCS: 5.4
        (b'{"value": 1E2}', b'{"value":1E2}'),  # JCS: 100
        (b'{"value": -0.0}', b'{"value":-0.0}'),  # JCS: 0
        (b'{"value": -0}', b'{"value":0}'),  # an integer: its value
        (b'{"value": 100000000000000000000000}', b'{"value":100000000000000000000000}'),
        (
            b'{"b": "\\u00e9\\/\\u2028", "a": "\\u001f\\n"}',
            '{"a":"\\u001f\\n","b":"é/\u2028"}'.encode(),
        ),
    ],
    ids=["trailing-zero", "exponent", "negative-zero", "integer-zero", "big-integer", "escapes"],
)
def test_numbers_keep_the_text_the_client_sent(sent: bytes, signed: bytes) -> None:
    """Defect this pins: the codec claimed RFC 8785 output, but keeps numbers as written (a
    FHIR decimal's precision is its text), so a signer using a JCS library signed other
    bytes than the gateway verifies. The form is now stated as it is; these are its bytes."""
    assert jsoncodec.encode_canonical(jsoncodec.decode(sent)) == signed
