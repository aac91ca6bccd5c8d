"""The leaf readers judge bytes exactly as decode_leaf did before leaf_link became their one
check (``leaf_reference``, an independent copy): leaf_fields and decode_leaf read the same
fields of every valid leaf, leaf_link its pseudonym and previous index, and all three raise
the same MalformedError (message included) for any other bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger import leaf as leaf_module
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import (
    LEAF_SIZE,
    NO_INDEX,
    Leaf,
    LeafFields,
    decode_leaf,
    encode_leaf,
    leaf_fields,
    leaf_link,
)
from tests.unit.ledger.leaf_reference import reference_decode_leaf
from tests.unit.ledger.test_leaf import leaves


def fields_of(leaf: Leaf) -> LeafFields:
    return LeafFields(
        int(leaf.kind), int(leaf.flags), leaf.recorded_us, leaf.pseudonym, leaf.previous,
        leaf.consent, leaf.commitment,
    )  # fmt: skip


def judged(read: Any, data: bytes) -> object:
    """What ``read`` makes of ``data``: its fields, or the MalformedError's message."""
    try:
        got = read(data)
    except MalformedError as exc:
        return f"MalformedError: {exc}"
    return got if isinstance(got, LeafFields) else fields_of(got)


def link_judged(data: bytes) -> object:
    """What leaf_link makes of ``data``: ``(pseudonym, previous)``, or the error's message."""
    try:
        return leaf_link(data)
    except MalformedError as exc:
        return f"MalformedError: {exc}"


def assert_judged_as_before(data: bytes) -> None:
    """Each reader accepts ``data`` as the reference does, with its fields or its error."""
    expected = judged(reference_decode_leaf, data)
    assert judged(leaf_fields, data) == expected
    assert judged(decode_leaf, data) == expected
    link = (expected.pseudonym, expected.previous) if isinstance(expected, LeafFields) else expected
    assert link_judged(data) == link


@given(leaves)
def test_valid_leaves_read_as_decode_leaf_read_them(leaf: Leaf) -> None:
    data = encode_leaf(leaf)
    assert leaf_fields(data) == fields_of(reference_decode_leaf(data))
    assert decode_leaf(data) == reference_decode_leaf(data) == leaf
    assert leaf_link(data) == (leaf.pseudonym, leaf.previous)


@settings(max_examples=500)
@given(leaves, st.data())
def test_changed_bytes_are_judged_as_decode_leaf_judged_them(leaf: Leaf, data: Any) -> None:
    raw = bytearray(encode_leaf(leaf))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, LEAF_SIZE - 1))] = data.draw(st.integers(0, 255))
    assert_judged_as_before(bytes(raw))


LAYOUT = struct.Struct(">4sBBHQ16sQQ32s")


@settings(max_examples=500)
@given(
    st.sampled_from([b"CSRY", b"CSRZ"]),
    st.sampled_from([0, 1, 2]),
    st.integers(0, 9),
    st.integers(0, 0xFFFF) | st.integers(0, 7),
    st.integers(0, 2**64 - 1),
    st.sampled_from([bytes(16), bytes(range(16))]),
    st.sampled_from([NO_INDEX, 0, 5]),
    st.sampled_from([NO_INDEX, 0, 5]),
)
def test_every_field_is_judged_as_decode_leaf_judged_it(
    tag: bytes, version: int, kind: int, flags: int, recorded: int, pseudonym: bytes,
    previous: int, consent: int,
) -> None:  # fmt: skip
    data = LAYOUT.pack(tag, version, kind, flags, recorded, pseudonym, previous, consent, bytes(32))
    assert_judged_as_before(data)


@pytest.mark.parametrize("size", [0, 1, LEAF_SIZE - 1, LEAF_SIZE + 1, 2 * LEAF_SIZE])
def test_another_length_is_decode_leafs_error(size: int) -> None:
    assert_judged_as_before(bytes(size))


def test_a_valid_leaf_is_read_without_a_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """leaf_fields and leaf_link build no Leaf and no enums (their speed is that)."""
    data = encode_leaf(Leaf(leaf_module.EntryKind.ADMIN, 7, None, bytes(32)))
    for name in ("decode_leaf", "Leaf", "EntryKind", "EntryFlag"):
        monkeypatch.setattr(leaf_module, name, None)
    assert leaf_fields(data) == LeafFields(6, 0, 7, None, None, None, bytes(32))
    assert leaf_link(data) == (None, None)
