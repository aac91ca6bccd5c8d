"""The ledger leaf: one canonical encoding, strict decoding, and no PHI-shaped fields."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import (
    EVIDENCE_PREFIX,
    LEAF_SIZE,
    NO_INDEX,
    EntryFlag,
    EntryKind,
    Leaf,
    commit_evidence,
    decode_leaf,
    encode_leaf,
    micros,
    new_pseudonym,
    new_salt,
)

PSEUDONYM = bytes(range(1, 17))
COMMITMENT = bytes(range(32))

leaves = st.builds(
    Leaf,
    kind=st.sampled_from(EntryKind),
    recorded_us=st.integers(0, 2**64 - 1),
    pseudonym=st.binary(min_size=16, max_size=16).filter(any),
    commitment=st.binary(min_size=32, max_size=32),
    previous=st.none() | st.integers(0, NO_INDEX - 1),
    consent=st.none() | st.integers(0, NO_INDEX - 1),
    flags=st.integers(0, 7).map(EntryFlag),
) | st.builds(
    Leaf,
    kind=st.sampled_from([EntryKind.ADMIN, EntryKind.KEY_EVENT]),
    recorded_us=st.integers(0, 2**64 - 1),
    pseudonym=st.none(),
    commitment=st.binary(min_size=32, max_size=32),
)


@given(leaves)
def test_encode_then_decode_is_identity(leaf: Leaf) -> None:
    data = encode_leaf(leaf)
    assert len(data) == LEAF_SIZE
    assert decode_leaf(data) == leaf
    assert encode_leaf(decode_leaf(data)) == data


@given(leaves, st.data())
def test_changing_any_byte_changes_or_breaks_the_leaf(leaf: Leaf, data: st.DataObject) -> None:
    encoded = bytearray(encode_leaf(leaf))
    at = data.draw(st.integers(0, LEAF_SIZE - 1))
    encoded[at] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(MalformedError):  # rejecting the bytes is fine too
        assert decode_leaf(bytes(encoded)) != leaf


def test_known_encoding() -> None:
    """Pins the version-1 layout byte for byte (the module docstring's table)."""
    leaf = Leaf(
        kind=EntryKind.ACCESS_DECISION,
        recorded_us=1_700_000_000_000_000,
        pseudonym=PSEUDONYM,
        commitment=COMMITMENT,
        previous=7,
        consent=None,
        flags=EntryFlag.PERMIT | EntryFlag.NARROWED,
    )
    assert encode_leaf(leaf).hex() == (
        "43535259"  # "CSRY"
        "01"  # version
        "03"  # access-decision
        "0005"  # permit | narrowed
        "00060a24181e4000"  # 1_700_000_000_000_000 us
        "0102030405060708090a0b0c0d0e0f10"  # pseudonym
        "0000000000000007"  # previous
        "ffffffffffffffff"  # consent: none
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # commitment
    )


def _valid() -> bytes:
    return encode_leaf(Leaf(EntryKind.CONSENT, 1, PSEUDONYM, COMMITMENT))


def _patch(at: int, value: bytes) -> bytes:
    data = _valid()
    return data[:at] + value + data[at + len(value) :]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(_valid()[:-1], id="one-byte-short"),
        pytest.param(_valid() + b"\x00", id="one-byte-long"),
        pytest.param(_patch(0, b"CSRX"), id="bad-tag"),
        pytest.param(_patch(4, b"\x02"), id="unknown-version"),
        pytest.param(_patch(4, b"\x00"), id="version-zero"),
        pytest.param(_patch(5, b"\x00"), id="kind-zero"),
        pytest.param(_patch(5, b"\x08"), id="unknown-kind"),
        pytest.param(_patch(6, b"\x80\x00"), id="reserved-flag-bit"),
        pytest.param(_patch(6, b"\x00\x08"), id="next-reserved-flag-bit"),
        pytest.param(_patch(16, bytes(16) + (5).to_bytes(8, "big")), id="chain-without-patient"),
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(MalformedError):
        decode_leaf(data)


# (id, bytes, the reason given): an export's or a store's bad leaf is reported with this text
DECODE_REASONS = [
    pytest.param(b"", f"a leaf is {LEAF_SIZE} bytes, not 0", id="empty"),
    pytest.param(_patch(0, b"CSRX"), "not a Consentry ledger leaf (bad tag)", id="bad-tag"),
    pytest.param(_patch(4, b"\x02"), "unsupported leaf version 2", id="unknown-version"),
    pytest.param(_patch(5, b"\x08"), "unknown entry kind 8", id="unknown-kind"),
    pytest.param(_patch(6, b"\x80\x00"), "undefined flag bits in 0x8000", id="reserved-flag"),
    pytest.param(
        _patch(16, bytes(16) + (5).to_bytes(8, "big")),
        "an entry without a pseudonym has no per-patient chain",
        id="chain-without-patient",
    ),
    pytest.param(
        _valid() + b"\x00", f"a leaf is {LEAF_SIZE} bytes, not {LEAF_SIZE + 1}", id="long"
    ),
]


@pytest.mark.parametrize(("data", "reason"), DECODE_REASONS)
def test_decode_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedError) as caught:
        decode_leaf(data)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        pytest.param({"kind": 1}, "kind must be an EntryKind, not 1", id="kind-not-enum"),
        pytest.param(
            {"recorded_us": -1},
            "recorded time is outside the uint64 microsecond range",
            id="negative-time",
        ),
        pytest.param(
            {"recorded_us": 2**64},
            "recorded time is outside the uint64 microsecond range",
            id="time-overflow",
        ),
        pytest.param(
            {"pseudonym": b"short"},
            "a pseudonym is 16 random bytes, not all zero",
            id="short-pseudonym",
        ),
        pytest.param(
            {"pseudonym": bytes(16)},
            "a pseudonym is 16 random bytes, not all zero",
            id="all-zero-pseudonym",
        ),
        pytest.param(
            {"commitment": b"x" * 31},
            "the evidence commitment is 32 bytes",
            id="short-commitment",
        ),
        pytest.param({"previous": -1}, "previous index -1 is out of range", id="negative-previous"),
        pytest.param(
            {"previous": NO_INDEX},
            f"previous index {NO_INDEX} is out of range",
            id="previous-is-sentinel",
        ),
        pytest.param(
            {"consent": NO_INDEX},
            f"consent index {NO_INDEX} is out of range",
            id="consent-is-sentinel",
        ),
        pytest.param(
            {"pseudonym": None, "previous": 3},
            "an entry without a pseudonym has no per-patient chain",
            id="chain-without-patient",
        ),
        pytest.param({"flags": 1}, "undefined flag bits in 0x0001", id="flags-not-enum"),
        pytest.param(
            {"flags": EntryFlag(0x100)}, "undefined flag bits in 0x0100", id="reserved-flag"
        ),
    ],
)
def test_invalid_leaf_cannot_be_built(fields: dict[str, object], reason: str) -> None:
    """Each invalid field is refused, and the error names what is wrong."""
    base: dict[str, object] = {
        "kind": EntryKind.CONSENT,
        "recorded_us": 0,
        "pseudonym": PSEUDONYM,
        "commitment": COMMITMENT,
    }
    with pytest.raises(MalformedError) as caught:
        Leaf(**(base | fields))  # type: ignore[arg-type]
    assert str(caught.value) == reason


# --- kinds, time -----------------------------------------------------------------------------


def test_entry_kind_labels_match_the_issue() -> None:
    assert [k.label for k in EntryKind] == [
        "consent",
        "consent-revoke",
        "access-decision",
        "access-outcome",
        "disclosure",
        "admin",
        "key-event",
    ]
    assert [int(k) for k in EntryKind] == list(range(1, 8))


@given(st.datetimes(timezones=st.just(UTC), min_value=datetime(1970, 1, 1)))
def test_micros_round_trips_through_recorded_at(moment: datetime) -> None:
    leaf = Leaf(EntryKind.ADMIN, micros(moment), None, COMMITMENT)
    assert leaf.recorded_at == moment


def test_micros_is_exact_and_zone_independent() -> None:
    paris = timezone(timedelta(hours=1))
    assert micros(datetime(1970, 1, 1, 1, 0, 0, 1, tzinfo=paris)) == 1
    with pytest.raises(MalformedError):
        micros(datetime(2024, 1, 1))  # naive: ambiguous


class _NoOffset(tzinfo):
    """A zone that knows no UTC offset: as ambiguous as no zone (Python's "naive" rule)."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


def test_micros_refuses_a_zone_without_offset() -> None:
    with pytest.raises(MalformedError) as caught:
        micros(datetime(2024, 1, 1, tzinfo=_NoOffset()))
    assert str(caught.value) == "a recorded time must be timezone-aware"


# --- randomness and commitments ---------------------------------------------------------------


def test_pseudonyms_and_salts_are_fresh_random_bytes() -> None:
    pseudonyms = {new_pseudonym() for _ in range(64)}
    salts = {new_salt() for _ in range(64)}
    assert len(pseudonyms) == 64
    assert all(len(p) == 16 and any(p) for p in pseudonyms)
    assert len(salts) == 64
    assert all(len(s) == 32 for s in salts)


def test_commitment_is_prefixed_salted_sha256() -> None:
    salt = bytes(32)
    expected = hashlib.sha256(b"consentry/ledger/evidence/v1\x00" + salt + b"{}").digest()
    assert EVIDENCE_PREFIX == b"consentry/ledger/evidence/v1\x00"
    assert commit_evidence(salt, b"{}") == expected


def test_commitment_depends_on_salt_and_evidence() -> None:
    a, b = new_salt(), new_salt()
    assert commit_evidence(a, b"evidence") != commit_evidence(b, b"evidence")
    assert commit_evidence(a, b"evidence") != commit_evidence(a, b"evidencf")


@pytest.mark.parametrize("salt", [b"", bytes(16), bytes(33)], ids=["empty", "16", "33"])
def test_commitment_requires_a_32_byte_salt(salt: bytes) -> None:
    with pytest.raises(MalformedError, match=rf"^the evidence salt is 32 bytes, not {len(salt)}$"):
        commit_evidence(salt, b"evidence")
