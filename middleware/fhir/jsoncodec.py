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

from middleware.fhir.limits import HARD_MAX_JSON_DEPTH, STORED_MAX_JSON_DEPTH, check_depth

__all__ = ["DecodeError", "decode", "encode", "encode_canonical"]

DecodeError = msgspec.DecodeError

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=msgspec.Raw)
_encoder = msgspec.json.Encoder()
_canonical = msgspec.json.Encoder(order="sorted")


def decode(data: bytes, *, max_depth: int = HARD_MAX_JSON_DEPTH) -> Any:
    """Parse JSON bytes; decimals stay :class:`msgspec.Raw` with their original text.

    Raises :data:`DecodeError` for malformed JSON, and its subclass
    :class:`~middleware.fhir.limits.JsonTooDeep` for JSON nesting deeper than ``max_depth``
    (measured before decoding: the decoder recurses per level). Never :class:`RecursionError`.
    Only the gateway's own stored records are read with more than the default (at most
    :data:`~middleware.fhir.limits.STORED_MAX_JSON_DEPTH`).
    """
    check_depth(data, min(max_depth, STORED_MAX_JSON_DEPTH))
    try:
        return _decoder.decode(data)
    except RecursionError as exc:  # a caller already deep in its stack; never a 500
        raise DecodeError("JSON nests too deep to decode here") from exc


def encode(value: Any) -> bytes:
    """Serialise what :func:`decode` produced (or plain data) to compact JSON bytes."""
    return _encoder.encode(value)


def encode_canonical(value: Any) -> bytes:
    """The canonical bytes of what :func:`decode` produced; what a patient's detached
    signature and the consent ledger entries cover.

    Exactly: UTF-8; no insignificant whitespace; object keys sorted by Unicode code point at
    every level; strings escaped as RFC 8785 §3.2.2.2 does (``\\"``, ``\\\\``, ``\\b \\f \\n
    \\r \\t``, other U+0000..U+001F as ``\\u00xx`` in lower case, everything else written as
    itself, ``/`` included); numbers as they were written in the decoded text: a number with
    a fraction or exponent keeps its text byte for byte (``5.40``, ``1E2``, ``-0.0``), an
    integer is its value in plain decimal digits (``-0`` becomes ``0``).

    This is **not** RFC 8785 (JCS) for numbers: JCS re-serialises each number in its
    ECMAScript shortest form (``5.4``, ``100``, ``0``, ``1e+23``), which would erase the
    precision a FHIR decimal carries in its text (R4 §2.24.0.1). The two agree on JSON whose
    numbers are all integers of magnitude below 2**53 and decimals already in shortest form
    without an exponent, and whose keys hold no character above U+FFFF (JCS sorts by UTF-16
    code units; every FHIR element name is ASCII). A signer computes these bytes with a JSON
    parser that keeps numbers' text, or with a JCS library only when the numbers of what it
    signs are already in that shortest form (then the bytes are the same).
    Encoding the decoded canonical bytes again gives the same bytes.
    """
    return _canonical.encode(value)
