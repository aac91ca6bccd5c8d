"""check_key_name's whitespace test (a regular expression) against ``str.isspace``."""

from __future__ import annotations

import pytest

from middleware.ledger.errors import MalformedError
from middleware.ledger.note import check_key_name


def test_every_code_point_is_refused_in_a_key_name_exactly_when_it_is_a_space() -> None:
    """C2SP signed-note: a key name has no Unicode space; every code point but the
    surrogates (not UTF-8) and the controls below U+0020 (refused anyway) is tried."""
    for code in range(0x20, 0x110000):
        c = chr(code)
        if 0xD800 <= code <= 0xDFFF or c == "+":
            continue
        if c.isspace():
            with pytest.raises(MalformedError):
                check_key_name(f"a{c}b")
        else:
            assert check_key_name(f"a{c}b") == f"a{c}b"
