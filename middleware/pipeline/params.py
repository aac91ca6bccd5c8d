"""Search parameters as the pipeline reads and re-sends them.

Parameters are decoded once (``application/x-www-form-urlencoded``, the form of both a query
string and a ``POST _search`` body, FHIR R4 search.html#Introduction) into ``(name, value)``
pairs, judged, possibly narrowed, and encoded again for the upstream. Decoding is strict: bytes
that are not UTF-8 after percent-decoding are a 400, never guessed at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode

from middleware.errors import BadRequest

__all__ = ["MAX_PARAMS", "decode_params", "encode_params"]

#: More parameters than this is an attack on the parser or the upstream, not a search.
MAX_PARAMS: Final = 256
# Characters FHIR search syntax gives meaning to and servers read unencoded (modifiers, token
# ``system|code``, OR commas, references and ``$`` in prefixes): keeping them as is keeps the
# forwarded query readable in upstream logs; everything else is percent-encoded (RFC 3986).
_SAFE: Final = ",|:/$"


def decode_params(raw: bytes) -> list[tuple[str, str]]:
    """``raw`` (a query string or form body) as decoded pairs, order kept; raises
    :class:`BadRequest` for undecodable text or more than :data:`MAX_PARAMS` pairs."""
    if not raw:
        return []
    try:
        text = raw.decode("ascii")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the search parameters cannot be decoded") from exc
    return pairs


def encode_params(params: Sequence[tuple[str, str]]) -> str:
    """``params`` as a query string the upstream decodes back to the same pairs."""
    return urlencode(list(params), quote_via=quote, safe=_SAFE)
