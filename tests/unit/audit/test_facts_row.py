"""The fast row path (facts_row) gives exactly what row_of(decode_facts(...)) gives: the same
row for valid facts, the same ValueError (type and message) for anything else, and the fast
path itself (not its fallback) accepts every valid encoding."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit import facts_row
from middleware.audit.evidence import EVIDENCE_HEADER, EvidenceKeyError, Opening, open_entry
from middleware.audit.facts import AuditFacts, decode_facts, encode_facts, row_of
from middleware.audit.facts_row import open_row, row_from_facts
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.ledger.signing import seal_once
from tests.unit.audit.test_facts import FACTS, MALFORMED, facts_st

KINDS = st.sampled_from([int(k) for k in EntryKind])
FLAGS = st.integers(0, 7)
PSEUDONYMS = st.none() | st.binary(min_size=16, max_size=16)


def reference(plain: bytes, **leaf: Any) -> AuditRow | str:
    """row_of(decode_facts(plain)), or the error it raises as ``type: message``."""
    try:
        return row_of(decode_facts(plain), **leaf)
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"


def fast(plain: bytes, **leaf: Any) -> AuditRow | str:
    try:
        return row_from_facts(plain, **leaf)
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=400)
@given(facts_st, KINDS, FLAGS, PSEUDONYMS, st.integers(-1, 2**40))
def test_valid_facts_give_row_ofs_row_on_the_fast_path(
    facts: AuditFacts, kind: int, flags: int, pseudonym: bytes | None, index: int
) -> None:
    plain = encode_facts(facts)
    leaf = {"kind": kind, "flags": flags, "pseudonym": pseudonym, "index": index}
    want = reference(plain, **leaf)
    assert fast(plain, **leaf) == want
    if isinstance(want, AuditRow):  # accepted without the fallback
        assert facts_row._row(plain, kind, flags, pseudonym, index) == want


@settings(max_examples=400)
@given(facts_st, st.data())
def test_a_changed_byte_is_judged_as_decode_facts_judges_it(facts: AuditFacts, data: Any) -> None:
    raw = bytearray(encode_facts(facts))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    leaf = {"kind": 4, "flags": data.draw(FLAGS), "pseudonym": None}
    assert fast(bytes(raw), **leaf) == reference(bytes(raw), **leaf)


#: Values a wire field may be swapped for: every type the schema has, and the edge values.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, 2, -1, 999, 1000, "", "x", "Patient/p", "Patient/", "permit"]),
    st.sampled_from(["deny", "maybe", "user", "robot", "read", "dance", "exchange", "decision"]),
    st.sampled_from(["break-glass-started", "outcome", b"", b"GET /"]),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.floats(allow_nan=False),
)
LISTS = st.lists(VALUES, max_size=11) | st.lists(st.lists(VALUES, max_size=3), max_size=3)


@settings(max_examples=600)
@given(facts_st, st.data())
def test_a_changed_field_is_judged_as_decode_facts_judges_it(facts: AuditFacts, data: Any) -> None:
    wire = list(msgspec.msgpack.decode(encode_facts(facts)))
    at = data.draw(st.integers(0, len(wire) - 1))
    inner = wire[at]
    if isinstance(inner, list) and inner and data.draw(st.booleans()):
        inner = list(inner)
        inner[data.draw(st.integers(0, len(inner) - 1))] = data.draw(VALUES | LISTS)
        wire[at] = inner
    else:
        wire[at] = data.draw(VALUES | LISTS)
    plain = msgspec.msgpack.encode(wire)
    leaf = {"kind": 3, "flags": data.draw(FLAGS), "pseudonym": None}
    assert fast(plain, **leaf) == reference(plain, **leaf)


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_facts_raise_decode_facts_error(data: bytes) -> None:
    want = reference(data, kind=4, flags=0, pseudonym=None)
    assert isinstance(want, str)
    assert fast(data, kind=4, flags=0, pseudonym=None) == want


def test_an_exchange_without_interaction_raises_row_ofs_error() -> None:
    plain = encode_facts(AuditFacts(event="exchange", recorded_us=1, request_id="r",
                                    gateway=FACTS.gateway))  # fmt: skip
    want = reference(plain, kind=4, flags=0, pseudonym=None)
    assert want == "ValueError: an exchange's facts name its interaction"
    assert fast(plain, kind=4, flags=0, pseudonym=None) == want


# -- open_row ----------------------------------------------------------------------------------

KEY = bytes(range(32))
SALT = bytes(32)


def sealed(plain: bytes, key: bytes = KEY) -> bytes:
    return EVIDENCE_HEADER + seal_once(key, plain)


def test_open_row_is_row_of_open_entry() -> None:
    evidence = sealed(encode_facts(FACTS))
    kind, flags, pseudonym = int(EntryKind.ACCESS_OUTCOME), int(EntryFlag.PERMIT), b"\x01" * 16
    facts = open_entry(Opening(SALT, evidence, KEY))
    want = row_of(facts, kind=kind, flags=flags, pseudonym=pseudonym, index=5)
    assert open_row(KEY, evidence, kind=kind, flags=flags, pseudonym=pseudonym, index=5) == want


@pytest.mark.parametrize(
    ("key", "evidence"),
    [
        (KEY, b"{}"),  # not sealed (a legacy Bundle)
        (KEY[:31], sealed(b"x")),  # not an entry key
        (bytes(32), sealed(encode_facts(FACTS))),  # another entry's key
        (KEY, sealed(encode_facts(FACTS))[:-1]),  # a changed byte
        (KEY, sealed(b"\xc1")),  # opens, but not facts
    ],
    ids=["not-sealed", "short-key", "wrong-key", "truncated", "not-facts"],
)
def test_open_row_refuses_what_open_entry_refuses(key: bytes, evidence: bytes) -> None:
    with pytest.raises(ValueError) as want:
        open_entry(Opening(SALT, evidence, key))
    with pytest.raises(ValueError) as got:
        open_row(key, evidence, kind=4, flags=0, pseudonym=None)
    assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
    assert isinstance(got.value, EvidenceKeyError) == isinstance(want.value, EvidenceKeyError)
