"""An entry's leaf bytes for a chain link (``NewEntry.leaf_bytes``), made by relinking the bytes
encoded on construction, equal the encoding of the checked :class:`Leaf`, and a link the Leaf
refuses is refused with the Leaf's error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import NO_INDEX, EntryFlag, EntryKind, decode_leaf, encode_leaf

_PSEUDONYMS = st.one_of(st.none(), st.binary(min_size=16, max_size=16).filter(any))
_LINKS = st.one_of(
    st.none(),
    st.integers(0, NO_INDEX - 1),
    st.sampled_from([-1, NO_INDEX, NO_INDEX + 1, 0, NO_INDEX - 1]),
)


@settings(max_examples=500)
@given(
    kind=st.sampled_from(list(EntryKind)),
    recorded_us=st.integers(0, 2**64 - 1),
    pseudonym=_PSEUDONYMS,
    consent=st.one_of(st.none(), st.integers(0, NO_INDEX - 1)),
    flags=st.sampled_from([EntryFlag.NONE, EntryFlag.PERMIT, EntryFlag.PERMIT | 4]),
    previous=_LINKS,
)
def test_relinked_bytes_are_the_checked_leafs_encoding(
    kind: EntryKind,
    recorded_us: int,
    pseudonym: bytes | None,
    consent: int | None,
    flags: EntryFlag,
    previous: int | None,
) -> None:
    entry = NewEntry.create(
        kind, b"evidence", recorded_us=recorded_us, pseudonym=pseudonym, consent=consent,
        flags=flags,
    )  # fmt: skip
    try:
        expected = encode_leaf(entry.leaf(previous))
    except MalformedError as exc:
        with pytest.raises(MalformedError, match=f"^{exc}$"):
            entry.leaf_bytes(previous)
        return
    got = entry.leaf_bytes(previous)
    assert got == expected
    assert decode_leaf(got).previous == previous


@pytest.mark.parametrize(
    ("pseudonym", "previous", "error"),
    [
        (None, 0, "no per-patient chain"),
        (b"\x01" * 16, -1, "previous index -1 is out of range"),
        (b"\x01" * 16, NO_INDEX, "out of range"),
    ],
    ids=["no-pseudonym", "negative", "reserved"],
)
def test_a_link_the_leaf_refuses_is_refused(
    pseudonym: bytes | None, previous: int, error: str
) -> None:
    entry = NewEntry.create(EntryKind.DISCLOSURE, b"e", recorded_us=1, pseudonym=pseudonym)
    with pytest.raises(MalformedError, match=error):
        entry.leaf_bytes(previous)
