"""Fuzzing the JSON codec every body, answer, token-free record and stored consent goes through.

Three properties, each against an independent reference (the standard library's ``json``):
decimals keep their text through any tree, not only in flat lists; bytes that are not JSON, or
nest too deep, raise only :data:`~middleware.fhir.jsoncodec.DecodeError` (callers catch exactly
that: anything else was a 500); and the depth limit refuses exactly the trees deeper than it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from hypothesis import example, given, settings
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH, JsonTooDeep


class _Decimal(str):
    """A number's text, written by :func:`_dumps` without quotes."""


_MARK: Final = "\x00num\x00"
_MARKED: Final = re.compile(r'"\\u0000num\\u0000([^"\\]*)"')
_decimals = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
).filter(lambda text: any(c in text for c in ".eE"))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.text(alphabet=st.characters(codec="utf-8")),
    _decimals.map(_Decimal),
)
_trees = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=6), inner, max_size=4
        ),
    ),
    max_leaves=30,
)


def _dumps(value: Any, indent: int | None = None) -> bytes:
    """The standard library's JSON of ``value``, decimals written as their own text."""

    def mark(node: Any) -> Any:
        if isinstance(node, _Decimal):
            return _MARK + node
        if isinstance(node, dict):
            return {key: mark(item) for key, item in node.items()}
        if isinstance(node, list):
            return [mark(item) for item in node]
        return node

    separators = (",", ":") if indent is None else (", ", ": ")
    text = json.dumps(mark(value), ensure_ascii=False, separators=separators, indent=indent)
    return _MARKED.sub(r"\1", text).encode("utf-8")


@settings(max_examples=300)
@given(value=_trees, indent=st.sampled_from([None, 0, 2]))
@example(value={"valueQuantity": {"value": _Decimal("5.40")}}, indent=None)
@example(value=[_Decimal("-0.0"), _Decimal("6.02E+23"), 10**40], indent=2)
def test_any_tree_round_trips_with_every_decimal_as_written(value: Any, indent: int | None) -> None:
    """Decoding any JSON (compact or indented) and encoding it again gives the compact text
    the standard library writes for the same tree, each decimal byte for byte (``5.40`` stays
    ``5.40``: FHIR R4 §2.24.0.1); decoding is the standard library's reading of it."""
    compact = _dumps(value)
    decoded = jsoncodec.decode(_dumps(value, indent))
    assert jsoncodec.encode(decoded) == compact
    assert json.loads(jsoncodec.encode(decoded), parse_float=str) == json.loads(
        compact, parse_float=str
    )


_jsonish = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet='[]{}",:\\ 0123456789.-+eEtrufalsn\x00é\ud800', max_size=200).map(
        lambda text: text.encode("utf-8", "surrogatepass")
    ),
    _trees.map(_dumps).flatmap(
        lambda data: st.integers(0, max(len(data) - 1, 0)).map(lambda cut: data[:cut])
    ),
)


@settings(max_examples=500)
@given(data=_jsonish, max_depth=st.integers(min_value=1, max_value=STORED_MAX_JSON_DEPTH + 10))
@example(data=b"[" * 100_000, max_depth=STORED_MAX_JSON_DEPTH)
@example(data=b'{"a":' * 3_000 + b"1" + b"}" * 3_000, max_depth=256)
@example(data=b'"\\ud800"', max_depth=10)
@example(data=b"NaN", max_depth=10)
def test_any_bytes_decode_or_raise_only_a_decode_error(data: bytes, max_depth: int) -> None:
    """Arbitrary bytes, near-JSON and truncated JSON: a value, or DecodeError (what every
    caller catches); never RecursionError, UnicodeDecodeError or anything else. Whatever
    decodes is JSON the standard library reads the same way."""
    try:
        value = jsoncodec.decode(data, max_depth=max_depth)
    except jsoncodec.DecodeError:
        return
    reference = json.loads(data.decode("utf-8"), parse_float=str)
    assert json.loads(jsoncodec.encode(value), parse_float=str) == reference


def _nested(levels: int, kinds: list[bool]) -> bytes:
    opened = b"".join(b"[" if kinds[i % len(kinds)] else b'{"k":' for i in range(levels))
    closed = b"".join(b"]" if kinds[i % len(kinds)] else b"}" for i in reversed(range(levels)))
    return opened + b'"[{"' + closed


@settings(max_examples=200)
@given(
    limit=st.integers(min_value=1, max_value=600),
    offset=st.integers(min_value=-3, max_value=3),
    kinds=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_the_depth_limit_refuses_exactly_what_nests_deeper(
    limit: int, offset: int, kinds: list[bool]
) -> None:
    """JSON nested ``levels`` deep (arrays and objects mixed, a string of brackets at the
    bottom that does not count) decodes under any limit at or above ``levels`` and is refused
    with JsonTooDeep under any limit below it (the stored-record ceiling caps every limit)."""
    levels = max(1, limit + offset)  # around the limit, where an off-by-one shows
    data = _nested(levels, kinds)
    if levels > min(limit, STORED_MAX_JSON_DEPTH):
        try:
            jsoncodec.decode(data, max_depth=limit)
        except JsonTooDeep:
            return
        raise AssertionError(f"{levels} levels decoded under a limit of {limit}")
    assert jsoncodec.encode(jsoncodec.decode(data, max_depth=limit)) == data
