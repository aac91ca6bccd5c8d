"""``read_body``: the declared Content-Length is read as ASCII digits only, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.asgi import read_body
from middleware.errors import PayloadTooLarge


def one_chunk(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


@pytest.mark.parametrize("declared", ["\xb2", "1\xb2", "\u0663", "\uff11"])
async def test_a_content_length_of_non_ascii_digits_is_not_a_500(declared: str) -> None:
    """Attack: ``"\\xb2".isdigit()`` is True (a superscript two, one latin-1 byte), so the
    cap check called ``int()`` on it, which raised ValueError: a 500 under any ASGI server
    that passes such a header (or in process). Such a value is not a length the cap reads;
    the body is then read under the cap as it arrives."""
    assert await read_body(one_chunk(b"{}"), {"content-length": declared}, 10) == b"{}"


async def test_a_content_length_too_long_for_int_is_413() -> None:
    """A declared length of 5,000 digits (more than ``int()`` converts) is over any cap: 413
    before anything is read, not a ValueError."""
    with pytest.raises(PayloadTooLarge):
        await read_body(one_chunk(b""), {"content-length": "9" * 5000}, 10)


async def test_an_ascii_content_length_over_the_cap_is_413_and_within_it_is_read() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body(one_chunk(b""), {"content-length": "11"}, 10)
    assert await read_body(one_chunk(b"0123456789"), {"content-length": "10"}, 10) == b"0123456789"
