"""JSON nesting measured before decoding (fhir.limits), and the codec refusing deep JSON with
its own DecodeError rather than RecursionError (fhir.jsoncodec)."""

from __future__ import annotations

import json
import sys
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.fhir import jsoncodec, limits
from middleware.fhir.limits import HARD_MAX_JSON_DEPTH, JsonTooDeep, check_depth, depth
from tests.unit.fhir.limits_reference import reference_depth_bound


def reference_depth(value: Any) -> int:
    """The nesting of a value the standard library decoded: an independent count."""
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


def decoder_depth(data: bytes) -> int:
    """How deep a stack-based decoder gets on ``data`` before it stops, valid or not: a plain
    scan that honours strings and stops at the first bracket that does not close its opener
    (what a decoder refuses there) or at a backslash outside a string (refused there too: the
    scan reads one as an escape, like any other), independent of the implementation under
    test."""
    stack: list[int] = []
    deepest, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5C:
            break
        elif byte in b"[{":
            stack.append(byte)
            deepest = max(deepest, len(stack))
        elif byte in b"]}" and (not stack or stack.pop() != (0x5B if byte == 0x5D else 0x7B)):
            break
    return deepest


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # scalars and flat containers
        (b"1", 0),
        (b'"[[[["', 0),
        (b"[]", 1),
        (b"{}", 1),
        (b'{"a":[1,{"b":[]}]}', 4),
        # brackets inside strings, escapes included, do not count
        (b'["[", "]]]", "\\"[[", "\\\\"]', 1),
        (b'{"k[": "v{{{"}', 1),
        (b'["\\u005b"]', 1),
        # siblings do not add up
        (b"[[],[],[[]],[]]", 3),
    ],
    ids=[
        "scalar",
        "string",
        "array",
        "object",
        "mixed",
        "brackets-in-strings",
        "brackets-in-keys",
        "escaped-bracket",
        "siblings",
    ],
)
def test_depth_of_valid_json(data: bytes, expected: int) -> None:
    assert depth(data) == expected
    assert reference_depth(json.loads(data)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 300,  # never closed
        b"[" * 150 + b"}" + b"[" * 150,  # closed by the wrong bracket
        b'["' + b"[" * 300,  # an unterminated string: its brackets count
        b"]" * 5 + b"[" * 300,  # stray closers first
        b"[[]" * 200,  # a spine of leaves, never closed
    ],
    ids=["unclosed", "mismatched", "unterminated-string", "stray-closers", "spine"],
)
def test_invalid_json_is_bounded_from_above(data: bytes) -> None:
    """Invalid JSON: the bound is never below what a decoder reaches before refusing it."""
    assert depth(data, 10_000) >= decoder_depth(data)


def test_the_scan_stops_once_past_the_limit() -> None:
    """A 16 MiB bracket run costs one substring search, not a walk."""
    data = b"[" * (8 << 20) + b"]" * (8 << 20)
    assert depth(data, 100) > 100


def _trees(max_leaves: int) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.one_of(st.none(), st.integers(), st.text(alphabet='[]{}"\\ab', max_size=6)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


@settings(max_examples=400)
@given(value=_trees(60))
def test_depth_is_exact_for_any_valid_json(value: Any) -> None:
    """Property: for valid JSON the bound is the nesting the standard library sees."""
    data = json.dumps(value).encode()
    assert depth(data, 10_000) == reference_depth(value)
    limit = max(reference_depth(value) - 1, 1)
    assert (depth(data, limit) > limit) == (reference_depth(value) > limit)


@settings(max_examples=400)
@given(
    data=st.binary(max_size=300) | st.text(alphabet='[]{}"\\ a1,:', max_size=300).map(str.encode)
)
def test_the_bound_holds_for_any_bytes(data: bytes) -> None:
    """Property: on any bytes, the bound is at least the depth a decoder reaches."""
    assert depth(data, 10_000) >= decoder_depth(data)


def test_check_depth_raises_a_decode_error_naming_the_limit() -> None:
    check_depth(b"[[1]]", 2)
    with pytest.raises(JsonTooDeep, match="deeper than 1 levels") as raised:
        check_depth(b"[[1]]", 1)
    assert isinstance(raised.value, jsoncodec.DecodeError)
    assert raised.value.limit == 1


@pytest.mark.parametrize("levels", [HARD_MAX_JSON_DEPTH + 1, 1_000, 100_000])
def test_the_codec_refuses_json_nested_deeper_than_its_limit(levels: int) -> None:
    """Attack: ``[`` x 1,000 made msgspec raise RecursionError, which callers (catching only
    DecodeError) turned into a 500. The codec measures first and raises DecodeError."""
    with pytest.raises(jsoncodec.DecodeError):
        jsoncodec.decode(b"[" * levels + b"]" * levels)


def test_the_codec_takes_json_at_its_limit_and_a_caller_may_lower_it() -> None:
    data = b"[" * HARD_MAX_JSON_DEPTH + b"]" * HARD_MAX_JSON_DEPTH
    assert isinstance(jsoncodec.decode(data), list)
    with pytest.raises(JsonTooDeep):
        jsoncodec.decode(b"[[[]]]", max_depth=2)


def test_a_recursion_error_in_the_decoder_becomes_a_decode_error() -> None:
    """A caller already deep in its stack: whatever the decoder raises is a DecodeError."""
    data = b"[" * 200 + b"]" * 200
    limit = sys.getrecursionlimit()

    def at(frames: int) -> object:
        return at(frames - 1) if frames else jsoncodec.decode(data)

    try:
        sys.setrecursionlimit(400)
        with pytest.raises(jsoncodec.DecodeError):
            at(300)
    finally:
        sys.setrecursionlimit(limit)


# -- the scan against its former self (tests/unit/fhir/limits_reference.py) ----------------

_MARKS = st.text(alphabet='[]{}"\\ a,:', max_size=300).map(str.encode)
_LIMITS = st.sampled_from([0, 1, 2, 3, 5, 8, 100, 10_000])


def _same_as_before(data: bytes, limit: int) -> None:
    """The bound and the decision of check_depth are those of the scan it replaced."""
    before = reference_depth_bound(data, limit)
    assert depth(data, limit) == before
    if before > limit:
        with pytest.raises(JsonTooDeep) as refused:
            check_depth(data, limit)
        assert refused.value.depth == before
    else:
        check_depth(data, limit)


@settings(max_examples=1500)
@given(data=st.binary(max_size=300) | _MARKS, limit=_LIMITS)
def test_the_scan_gives_the_former_bound_on_any_bytes(data: bytes, limit: int) -> None:
    """Property: the same bound as before on any bytes (escapes, quotes and brackets mixed,
    unterminated strings, stray backslashes), so every text refused before is refused."""
    _same_as_before(data, limit)


@settings(max_examples=400)
@given(value=_trees(60), limit=_LIMITS)
def test_the_scan_gives_the_former_bound_on_documents(value: Any, limit: int) -> None:
    """Property: valid JSON whose strings and keys hold brackets, quotes and backslashes."""
    _same_as_before(json.dumps(value).encode(), limit)
    _same_as_before(json.dumps(value, indent=1).encode(), limit)


@settings(max_examples=600)
@given(data=st.binary(max_size=300) | _MARKS, limit=_LIMITS)
def test_the_bounded_escape_walk_and_block_edges_change_nothing(data: bytes, limit: int) -> None:
    """Property: with no escape looked at one by one (the two whole-text passes instead),
    and with the string step cut into blocks of a few bytes, the bound is the same."""
    with (
        mock.patch.object(limits, "_ESCAPES_FREE", 0),
        mock.patch.object(limits, "_ESCAPES_SHIFT", 62),
    ):
        _same_as_before(data, limit)
    with mock.patch.object(limits, "_ESCAPES_FREE", 1):
        _same_as_before(data, limit)
    for block in (1, 2, 3, 7):
        with (
            mock.patch.object(limits, "_BLOCK", block),
            mock.patch.object(limits, "_SPLIT_BLOCK", block),
        ):
            assert depth(data, limit) == reference_depth_bound(data, limit)


@pytest.mark.parametrize(
    "data",
    [
        # escapes: a run of backslashes escapes the quote after it only when odd
        b'["\\\\"]',
        b'["\\\\\\"]]]]]',
        b'["\\\\\\\\"]',
        b'["a\\"[[[[["]',
        b'["\\u005d\\n"]',
        b'"\\',
        b"\\" * 9 + b'"[[[',
        b'\\""["',  # a backslash outside a string: read as an escape, as before
        # strings holding brackets next to empty strings (the pairs removed keep the parity)
        b'{"a":"[","b":"]","c":""}',
        b'["","[[","",""]',
        b'"["""[[',
        b'""""[""]',
        # unterminated strings
        b'["[[[',
        b'["a","[[[',
        b'"[""',
    ],
)
def test_the_scan_gives_the_former_bound_on_edge_cases(data: bytes) -> None:
    for limit in (0, 1, 2, 3, 10_000):
        _same_as_before(data, limit)


def test_a_small_text_with_few_brackets_is_not_scanned() -> None:
    """check_depth decides by counting ``[`` and ``{`` when that suffices, and scans when the
    count exceeds the limit, even if only strings hold the brackets."""
    with mock.patch.object(limits, "depth", side_effect=AssertionError) as scan:
        check_depth(b'{"a":[1,{"b":[]}]}', 4)
    scan.assert_not_called()
    check_depth(b'["[[[[[["]', 2)
    with pytest.raises(JsonTooDeep):
        check_depth(b"[[[[" + b" " * (1 << 15) + b"]]]]", 3)
