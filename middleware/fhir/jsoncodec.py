"""JSON for FHIR bodies that keeps every number exactly as it was written.

FHIR decimals carry their precision in their text (R4 §2.24.0.1 "decimal": ``5.40`` is not
``5.4``). Decoding floats to binary floats would lose it, so floats are decoded into
:class:`msgspec.Raw` holding the original bytes, and re-encoded verbatim. Integers decode to
Python ints (arbitrary size). Key order and unknown elements survive because the result is
plain dicts and lists.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["DecodeError", "decode", "encode"]

DecodeError = msgspec.DecodeError

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=msgspec.Raw)
_encoder = msgspec.json.Encoder()


def decode(data: bytes) -> Any:
    """Parse JSON bytes; decimals stay :class:`msgspec.Raw` with their original text.

    Raises :data:`DecodeError` for malformed JSON.
    """
    return _decoder.decode(data)


def encode(value: Any) -> bytes:
    """Serialise what :func:`decode` produced (or plain data) to compact JSON bytes."""
    return _encoder.encode(value)
