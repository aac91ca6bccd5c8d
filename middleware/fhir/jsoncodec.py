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

__all__ = ["DecodeError", "decode", "encode", "encode_canonical"]

DecodeError = msgspec.DecodeError

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=msgspec.Raw)
_encoder = msgspec.json.Encoder()
_canonical = msgspec.json.Encoder(order="sorted")


def decode(data: bytes) -> Any:
    """Parse JSON bytes; decimals stay :class:`msgspec.Raw` with their original text.

    Raises :data:`DecodeError` for malformed JSON.
    """
    return _decoder.decode(data)


def encode(value: Any) -> bytes:
    """Serialise what :func:`decode` produced (or plain data) to compact JSON bytes."""
    return _encoder.encode(value)


def encode_canonical(value: Any) -> bytes:
    """The canonical bytes of what :func:`decode` produced: object keys sorted by code point
    at every level, no insignificant whitespace, UTF-8, decimals exactly as written.

    For FHIR JSON (ASCII keys, no floats re-rounded) this is the RFC 8785 (JCS) form, so a
    signer can compute it with any JCS library or with ``json.dumps(value, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``. Encoding the decoded canonical bytes again
    gives the same bytes.
    """
    return _canonical.encode(value)
