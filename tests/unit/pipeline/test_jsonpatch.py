"""JSON Patch (RFC 6902) over decoded JSON: the RFC's examples, RFC 6901 pointers, atomic
failure as 422 without values, limits, and the input left untouched."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.errors import UnprocessableEntity
from middleware.fhir import jsoncodec
from middleware.pipeline.jsonpatch import MAX_OPERATIONS, MAX_POINTER_DEPTH, apply_patch

FAILS = object()  # expected "result" of a patch that must be refused

# -- RFC 6902 Appendix A -----------------------------------------------------------------------

APPENDIX_A: list[tuple[str, Any, Any, Any]] = [
    (
        "A.1 adding an object member",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux"}],
        {"baz": "qux", "foo": "bar"},
    ),
    (
        "A.2 adding an array element",
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    (
        "A.3 removing an object member",
        {"baz": "qux", "foo": "bar"},
        [{"op": "remove", "path": "/baz"}],
        {"foo": "bar"},
    ),
    (
        "A.4 removing an array element",
        {"foo": ["bar", "qux", "baz"]},
        [{"op": "remove", "path": "/foo/1"}],
        {"foo": ["bar", "baz"]},
    ),
    (
        "A.5 replacing a value",
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6 moving a value",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7 moving an array element",
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8 testing a value: success",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [
            {"op": "test", "path": "/baz", "value": "qux"},
            {"op": "test", "path": "/foo/1", "value": 2},
        ],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (
        "A.9 testing a value: error",
        {"baz": "qux"},
        [{"op": "test", "path": "/baz", "value": "bar"}],
        FAILS,
    ),
    (
        "A.10 adding a nested member object",
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11 ignoring unrecognized elements",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    (
        "A.12 adding to a nonexistent target",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz/bat", "value": "qux"}],
        FAILS,
    ),
    (
        # A duplicate "op" cannot survive decoding: the gateway's decoder keeps the last one,
        # which here is a remove of a missing member, so the patch is still refused.
        "A.13 invalid JSON Patch document",
        {"foo": "bar"},
        jsoncodec.decode(b'[{"op": "add", "path": "/baz", "value": "qux", "op": "remove"}]'),
        FAILS,
    ),
    (
        "A.14 ~ escape ordering",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": 10}],
        {"/": 9, "~1": 10},
    ),
    (
        "A.15 comparing strings and numbers",
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": "10"}],
        FAILS,
    ),
    (
        "A.16 adding an array value",
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
]


@pytest.mark.parametrize(
    ("document", "patch", "expected"),
    [row[1:] for row in APPENDIX_A],
    ids=[row[0] for row in APPENDIX_A],
)
def test_rfc6902_appendix_a(document: Any, patch: Any, expected: Any) -> None:
    """Each RFC 6902 Appendix A example gives the RFC's result, or is refused with 422."""
    if expected is FAILS:
        with pytest.raises(UnprocessableEntity):
            apply_patch(document, patch)
    else:
        assert apply_patch(document, patch) == expected


# -- RFC 6901 pointers ---------------------------------------------------------------------

RFC6901_DOC: dict[str, Any] = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        # RFC 6901 §5, the JSON String representation column
        ("", RFC6901_DOC),
        ("/foo", ["bar", "baz"]),
        ("/foo/0", "bar"),
        ("/", 0),
        ("/a~1b", 1),
        ("/c%d", 2),
        ("/e^f", 3),
        ("/g|h", 4),
        ("/i\\j", 5),
        ('/k"l', 6),
        ("/ ", 7),
        ("/m~0n", 8),
    ],
    ids=["root", "foo", "foo-0", "empty-key", "~1", "%", "^", "|", "backslash", "quote", " ", "~0"],
)
def test_rfc6901_section5_pointers(pointer: str, value: Any) -> None:
    """Every pointer of RFC 6901 §5 names the value the RFC says it does."""
    assert apply_patch(RFC6901_DOC, [{"op": "test", "path": pointer, "value": value}]) == (
        RFC6901_DOC
    )


@pytest.mark.parametrize(
    ("pointer", "key"),
    [
        ("/a~1b", "a/b"),
        ("/m~0n", "m~n"),
        ("/~01", "~1"),  # "~0" then "1", not "~" + "~1" (RFC 6901 §4: ~1 is decoded first)
        ("/~10", "/0"),
        ("/~0~1", "~/"),
    ],
    ids=["slash", "tilde", "tilde-one", "slash-zero", "both"],
)
def test_escapes_decode_into_keys(pointer: str, key: str) -> None:
    """``add`` through an escaped pointer creates the unescaped key."""
    assert apply_patch({}, [{"op": "add", "path": pointer, "value": 1}]) == {key: 1}


@pytest.mark.parametrize(
    "pointer", ["/a~2b", "/a~", "/~", "/ok/~x"], ids=["~2", "trailing", "alone", "deeper"]
)
def test_bad_escapes_are_refused(pointer: str) -> None:
    """A ``~`` not followed by ``0`` or ``1`` is not a JSON Pointer (RFC 6901 §3)."""
    with pytest.raises(UnprocessableEntity, match="'~'"):
        apply_patch({"ok": {}}, [{"op": "add", "path": pointer, "value": 1}])


# -- the operations beyond the appendix ------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "patch", "expected"),
    [
        # the whole document
        ({"a": 1}, [{"op": "add", "path": "", "value": [1]}], [1]),
        ({"a": 1}, [{"op": "replace", "path": "", "value": None}], None),
        ("leaf", [{"op": "replace", "path": "", "value": {"b": 2}}], {"b": 2}),
        # add replaces an existing member (RFC 6902 §4.1)
        ({"a": 1}, [{"op": "add", "path": "/a", "value": 2}], {"a": 2}),
        # add at the end by index and by "-"; at the front
        ({"a": [1]}, [{"op": "add", "path": "/a/1", "value": 2}], {"a": [1, 2]}),
        ({"a": []}, [{"op": "add", "path": "/a/-", "value": 2}], {"a": [2]}),
        ({"a": [1]}, [{"op": "add", "path": "/a/0", "value": 0}], {"a": [0, 1]}),
        # on objects "-" and digits are ordinary keys
        ({"a": {}}, [{"op": "add", "path": "/a/-", "value": 1}], {"a": {"-": 1}}),
        ({"a": {"01": 1}}, [{"op": "remove", "path": "/a/01"}], {"a": {}}),
        # null is a value, not a missing one
        ({}, [{"op": "add", "path": "/a", "value": None}], {"a": None}),
        ({"a": None}, [{"op": "test", "path": "/a", "value": None}], {"a": None}),
        # replace in an array
        ({"a": [1, 2]}, [{"op": "replace", "path": "/a/1", "value": 3}], {"a": [1, 3]}),
        # move and copy
        ({"a": 1}, [{"op": "move", "from": "/a", "path": "/a"}], {"a": 1}),
        ({"a": 1}, [{"op": "move", "from": "", "path": ""}], {"a": 1}),
        ({"a": {"b": 1}}, [{"op": "move", "from": "/a/b", "path": "/c"}], {"a": {}, "c": 1}),
        ({"a": [1, 2]}, [{"op": "move", "from": "/a/0", "path": "/a/-"}], {"a": [2, 1]}),
        (
            {"a": {"b": 1}},
            [{"op": "copy", "from": "/a", "path": "/c"}],
            {"a": {"b": 1}, "c": {"b": 1}},
        ),
        ({"a": [1]}, [{"op": "copy", "from": "/a/0", "path": "/a/0"}], {"a": [1, 1]}),
        # operations see the results of the ones before them
        (
            {},
            [
                {"op": "add", "path": "/a", "value": {}},
                {"op": "add", "path": "/a/b", "value": [1]},
                {"op": "test", "path": "/a/b/0", "value": 1},
            ],
            {"a": {"b": [1]}},
        ),
        # an empty patch is the identity
        ({"a": 1}, [], {"a": 1}),
    ],
    ids=[
        "add-root",
        "replace-root-null",
        "replace-root-leaf",
        "add-existing-member",
        "add-end-index",
        "add-dash-empty",
        "add-front",
        "dash-key",
        "digit-key",
        "add-null",
        "test-null",
        "replace-array",
        "move-same",
        "move-root-same",
        "move-up",
        "move-to-end",
        "copy-object",
        "copy-array-element",
        "sequential",
        "empty-patch",
    ],
)
def test_operations(document: Any, patch: Any, expected: Any) -> None:
    assert apply_patch(document, patch) == expected


@pytest.mark.parametrize(
    ("actual", "value", "equal"),
    [
        # a boolean only equals a boolean (JSON true is not 1, RFC 6902 §4.6)
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (True, True, True),
        (0, 0, True),
        # objects ignore member order; arrays do not
        ({"a": 1, "b": [2]}, {"b": [2], "a": 1}, True),
        ([1, 2], [2, 1], False),
        ([1], [1, 1], False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": True}, {"a": 1}, False),
        # containers never equal leaves
        ([], None, False),
        ({}, [], False),
        ("x", ["x"], False),
        # null
        (None, None, True),
        (None, False, False),
        # decimals keep their text: 5.40 is not 5.4 (FHIR R4 §2.24.0.1 decimal)
        (msgspec.Raw(b"5.40"), msgspec.Raw(b"5.40"), True),
        (msgspec.Raw(b"5.40"), msgspec.Raw(b"5.4"), False),
    ],
    ids=[
        "true-vs-1",
        "1-vs-true",
        "false-vs-0",
        "true",
        "zero",
        "member-order",
        "array-order",
        "array-length",
        "extra-member",
        "nested-bool",
        "array-vs-null",
        "object-vs-array",
        "leaf-vs-array",
        "null",
        "null-vs-false",
        "decimal-same",
        "decimal-precision",
    ],
)
def test_test_op_equality(actual: Any, value: Any, equal: bool) -> None:
    patch = [{"op": "test", "path": "/v", "value": value}]
    if equal:
        assert apply_patch({"v": actual}, patch) == {"v": actual}
    else:
        with pytest.raises(UnprocessableEntity, match="test"):
            apply_patch({"v": actual}, patch)


def test_decimals_from_the_codec_survive_a_patch() -> None:
    """Decoded decimals are opaque leaves: they move, compare and re-encode byte for byte."""
    document = jsoncodec.decode(b'{"valueQuantity": {"value": 5.40}, "x": [1.000]}')
    patch = jsoncodec.decode(
        b'[{"op": "test", "path": "/valueQuantity/value", "value": 5.40},'
        b' {"op": "move", "from": "/x/0", "path": "/y"}]'
    )
    assert jsoncodec.encode(apply_patch(document, patch)) == (
        b'{"valueQuantity":{"value":5.40},"x":[],"y":1.000}'
    )


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "patch", "message"),
    [
        # the patch's shape
        ({}, {"op": "add", "path": "/a", "value": 1}, "not an array"),
        ({}, "[]", "not an array"),
        ({}, None, "not an array"),
        ({}, ["add"], "operation 0: not an object"),
        ({}, [{"path": "/a", "value": 1}], "'op'"),
        ({}, [{"op": "ADD", "path": "/a", "value": 1}], "'op'"),
        ({}, [{"op": "merge", "path": "/a", "value": 1}], "'op'"),
        ({}, [{"op": 1, "path": "/a", "value": 1}], "'op'"),
        ({}, [{"op": "add", "value": 1}], "'path' is missing"),
        ({}, [{"op": "add", "path": 1, "value": 1}], "'path' is missing or not a string"),
        ({}, [{"op": "add", "path": "a", "value": 1}], "'path' is not a JSON Pointer"),
        ({}, [{"op": "add", "path": "/a"}], "add: 'value' is missing"),
        ({"a": 1}, [{"op": "replace", "path": "/a"}], "replace: 'value' is missing"),
        ({"a": 1}, [{"op": "test", "path": "/a"}], "test: 'value' is missing"),
        ({"a": 1}, [{"op": "move", "path": "/b"}], "'from' is missing"),
        ({"a": 1}, [{"op": "copy", "path": "/b", "from": "a"}], "'from' is not a JSON Pointer"),
        # missing targets
        ({"a": 1}, [{"op": "remove", "path": "/b"}], "does not exist"),
        ({"a": 1}, [{"op": "replace", "path": "/b", "value": 1}], "does not exist"),
        ({"a": 1}, [{"op": "test", "path": "/b", "value": 1}], "does not exist"),
        ({"a": 1}, [{"op": "move", "from": "/b", "path": "/c"}], "does not exist"),
        ({"a": 1}, [{"op": "move", "from": "/b", "path": "/b"}], "does not exist"),
        ({"a": 1}, [{"op": "copy", "from": "/b", "path": "/c"}], "does not exist"),
        ({"a": 1}, [{"op": "add", "path": "/a/b", "value": 1}], "not an object or array"),
        ({"a": "s"}, [{"op": "test", "path": "/a/0", "value": "s"}], "not an object or array"),
        ({}, [{"op": "remove", "path": ""}], "whole document"),
        # array indexes (RFC 6901 §4)
        ({"a": [1]}, [{"op": "add", "path": "/a/2", "value": 1}], "out of range"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/1"}], "out of range"),
        ({"a": [1]}, [{"op": "replace", "path": "/a/1", "value": 1}], "out of range"),
        ({"a": [1]}, [{"op": "test", "path": "/a/1", "value": 1}], "out of range"),
        ({"a": [1, 2]}, [{"op": "remove", "path": "/a/01"}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/00"}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/-1"}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/+0"}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/ 0"}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/x"}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/" + "9" * 5000}], "leading zeros"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/-"}], "'-'"),
        ({"a": [1]}, [{"op": "replace", "path": "/a/-", "value": 1}], "'-'"),
        ({"a": [1]}, [{"op": "move", "from": "/a/-", "path": "/b"}], "'-'"),
        # moving into one's own child (RFC 6902 §4.4)
        ({"a": {"b": {}}}, [{"op": "move", "from": "/a", "path": "/a/b"}], "children"),
        ({"a": {"b": {}}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}], "children"),
        ({"a": 1}, [{"op": "move", "from": "", "path": "/a"}], "children"),
        # a failed test
        ({"a": 1}, [{"op": "test", "path": "/a", "value": 2}], "test:"),
        ({"a": 1}, [{"op": "test", "path": "", "value": {}}], "test:"),
    ],
    ids=lambda v: None if not isinstance(v, str) else v[:40],
)
def test_problems_are_unprocessable(document: Any, patch: Any, message: str) -> None:
    """Every problem is a 422 ``processing`` naming it; nothing is returned."""
    with pytest.raises(UnprocessableEntity, match=message) as info:
        apply_patch(document, patch)
    assert info.value.status == 422
    assert info.value.code == "processing"


def test_error_names_the_operation_index() -> None:
    patch = [
        {"op": "test", "path": "/a", "value": 1},
        {"op": "add", "path": "/b", "value": 2},
        {"op": "remove", "path": "/missing"},
    ]
    with pytest.raises(UnprocessableEntity, match=r"^JSON Patch operation 2: ") as info:
        apply_patch({"a": 1}, patch)
    # raised ``from None``: no internal exception rides along into logs or responses
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


SECRET = "SECRET-PHI-7731"


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "test", "path": f"/{SECRET}-gone", "value": SECRET}],
        [{"op": "test", "path": "/name", "value": "another value"}],
        [{"op": "test", "path": f"/{SECRET}", "value": SECRET}],
        [{"op": "replace", "path": f"/{SECRET}/x", "value": SECRET}],
        [{"op": "remove", "path": f"/name/{SECRET}"}],
        [{"op": "add", "path": f"/name/~{SECRET}", "value": SECRET}],
        [{"op": "add", "path": f"{SECRET}", "value": SECRET}],
        [{"op": SECRET, "path": "/name"}],
        [{"op": "move", "from": f"/{SECRET}-gone", "path": "/x"}],
        [{"op": "move", "from": "/name", "path": f"/name/{SECRET}"}],
        [{"op": "copy", "from": "/name/9", "path": "/x"}],
    ],
    ids=[
        "test-missing",
        "test-failed",
        "test-failed-secret-key",
        "replace-missing",
        "remove-index",
        "bad-escape",
        "bad-pointer",
        "unknown-op",
        "move-missing",
        "move-child",
        "copy-range",
    ],
)
def test_errors_carry_no_values(patch: Any) -> None:
    """Diagnostics name the operation and the problem, never a value, key or pointer."""
    document = {"name": SECRET, SECRET: [SECRET]}
    with pytest.raises(UnprocessableEntity) as info:
        apply_patch(document, patch)
    assert SECRET not in str(info.value)
    assert SECRET not in info.value.diagnostics
    assert info.value.diagnostics.startswith("JSON Patch operation 0: ")


# -- limits ----------------------------------------------------------------------------------


def test_operation_limit() -> None:
    """Up to MAX_OPERATIONS operations are applied; one more is refused outright."""
    ops = [{"op": "add", "path": "/a/-", "value": 1}] * MAX_OPERATIONS
    assert apply_patch({"a": []}, ops) == {"a": [1] * MAX_OPERATIONS}
    with pytest.raises(UnprocessableEntity, match="more than 1000 operations"):
        apply_patch({"a": []}, [*ops, {"op": "test", "path": "/a/0", "value": 1}])


def _nested(depth: int) -> Any:
    document: Any = {}
    for _ in range(depth):
        document = {"a": document}
    return document


def test_pointer_depth_limit() -> None:
    """A pointer of MAX_POINTER_DEPTH tokens works; one more token is refused."""
    document = _nested(MAX_POINTER_DEPTH)
    at_limit = "/a" * (MAX_POINTER_DEPTH - 1) + "/b"
    result = apply_patch(document, [{"op": "add", "path": at_limit, "value": 1}])
    assert apply_patch(result, [{"op": "test", "path": at_limit, "value": 1}]) == result
    too_deep = "/a" * MAX_POINTER_DEPTH + "/b"
    for member in ("path", "from"):
        op = {"op": "copy", "path": "/x", "from": "/a"} | {member: too_deep}
        with pytest.raises(UnprocessableEntity, match=f"'{member}' is deeper than 64"):
            apply_patch(document, [op])


def test_deep_documents_do_not_exhaust_the_stack() -> None:
    """Copy and comparison are iterative: a document deeper than the codec decodes (it refuses
    more than 256 levels) is fine too."""
    text = b'{"a":' + b"[" * 900 + b"1.0" + b"]" * 900 + b"}"

    def nested() -> Any:
        inner: Any = 1.0
        for _ in range(900):
            inner = [inner]
        return inner

    document = {"a": nested()}
    patch = [{"op": "test", "path": "/a", "value": nested()}]
    assert jsoncodec.encode(apply_patch(document, patch)) == text


# -- the input is never changed ----------------------------------------------------------


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "add", "path": "/a/b/-", "value": 4}],
        [{"op": "remove", "path": "/a/b/0"}],
        [{"op": "replace", "path": "/a/c", "value": {"d": 1}}],
        [{"op": "move", "from": "/a/b", "path": "/e"}],
        [{"op": "copy", "from": "/a", "path": "/a/c/x"}],
        [{"op": "add", "path": "/a/b/0", "value": 0}, {"op": "test", "path": "/a/b/9", "value": 0}],
    ],
    ids=["add", "remove", "replace", "move", "copy", "failed"],
)
def test_input_is_not_mutated(patch: Any) -> None:
    document = {"a": {"b": [1, 2, 3], "c": {"k": "v"}}}
    before_doc, before_patch = copy.deepcopy(document), copy.deepcopy(patch)
    try:
        result = apply_patch(document, patch)
    except UnprocessableEntity:
        result = None
    assert document == before_doc
    assert patch == before_patch
    if result is not None:
        assert result is not document
        assert result["a"] is not document["a"]


def test_result_shares_nothing_with_the_patch_or_the_copy_source() -> None:
    """Values are copied in: changing the result changes neither the patch nor the source of
    a ``copy``."""
    value = {"list": [1]}
    patch = [
        {"op": "add", "path": "/v", "value": value},
        {"op": "copy", "from": "/v", "path": "/w"},
    ]
    result = apply_patch({}, patch)
    result["v"]["list"].append(2)
    assert value == {"list": [1]}
    assert result["w"] == {"list": [1]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=30,
)


@given(document=st.dictionaries(st.text(max_size=4), json_values, max_size=5), value=json_values)
def test_add_then_test_holds_and_input_survives(document: dict[str, Any], value: Any) -> None:
    """For any document and value: after adding the value under a new key, testing for it
    succeeds, and the document given is unchanged."""
    before = copy.deepcopy(document)
    key = "~new/key"
    pointer = "/~0new~1key"
    result = apply_patch(
        document,
        [
            {"op": "add", "path": pointer, "value": value},
            {"op": "test", "path": pointer, "value": value},
        ],
    )
    assert result == {**before, key: value}
    assert document == before
