"""Ledger entries: a fixed-width, versioned, PHI-free binary leaf.

A :class:`Leaf` says *that* something happened, to *which* pseudonymous patient chain, *when*,
and *commits* to the evidence (the AuditEvent or Consent kept beside the ledger). It holds no
identifier, name, code or resource: the pseudonym is random (:func:`new_pseudonym`), never
derived from an identifier, and the evidence appears only as a salted hash. Shredding the
evidence and its salt leaves every leaf, root and proof verifiable (architecture invariant 4).

Version 1 encoding, 80 bytes, integers unsigned big-endian:

=======  =====  ===============================================================================
offset   size   field
=======  =====  ===============================================================================
0        4      :data:`LEAF_TAG` ``b"CSRY"``: separates leaf bytes from anything else we hash
4        1      :data:`LEAF_VERSION` ``0x01``
5        1      :class:`EntryKind`
6        2      :class:`EntryFlag` bits; bits not defined in version 1 must be zero
8        8      recorded time, microseconds since 1970-01-01T00:00:00Z
16       16     patient pseudonym; all zero = no patient (``admin``, ``key-event``)
32       8      index of the previous entry with the same pseudonym; ``2**64-1`` = none
40       8      index of the consent entry a decision relied on; ``2**64-1`` = none
48       32     evidence commitment, :func:`commit_evidence`
=======  =====  ===============================================================================

The Merkle leaf hash is computed over exactly these stored bytes (``merkle.leaf_hash``), never
over a re-serialised :class:`Leaf`. Reading is strict: any other length, tag, version, kind,
flag bit or an inconsistent field raises :class:`MalformedError`, so every valid :class:`Leaf`
has exactly one encoding. Those checks are written once, in :func:`leaf_link`; the other
readers (:func:`leaf_fields`, :func:`decode_leaf`) are built on it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import operator
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from middleware.ledger.errors import MalformedError

__all__ = [
    "EVIDENCE_PREFIX",
    "LEAF_SIZE",
    "LEAF_TAG",
    "LEAF_VERSION",
    "NO_INDEX",
    "PSEUDONYM_SIZE",
    "SALT_SIZE",
    "EntryFlag",
    "EntryKind",
    "Leaf",
    "LeafFields",
    "commit_evidence",
    "decode_leaf",
    "encode_leaf",
    "leaf_fields",
    "leaf_link",
    "micros",
    "micros_at",
    "new_pseudonym",
    "new_salt",
    "relinked",
]

LEAF_TAG = b"CSRY"
LEAF_VERSION = 1
PSEUDONYM_SIZE = 16
SALT_SIZE = 32
COMMITMENT_SIZE = 32
#: Reserved uint64 meaning "no index"; the largest usable index is therefore 2**64 - 2.
NO_INDEX = 2**64 - 1
#: Domain-separation prefix of :func:`commit_evidence` (ASCII, NUL-terminated, versioned).
EVIDENCE_PREFIX = b"consentry/ledger/evidence/v1\x00"

_LAYOUT = struct.Struct(">4sBBHQ16sQQ32s")
LEAF_SIZE = _LAYOUT.size
#: The ``previous`` field: 8 bytes at offset 32 (the layout above).
_PREVIOUS_AT = 32
_INDEX = struct.Struct(">Q")
_NO_PATIENT = bytes(PSEUDONYM_SIZE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EntryKind(enum.IntEnum):
    """What an entry records. Values are the kind byte; never renumber, only add."""

    CONSENT = 1
    CONSENT_REVOKE = 2
    ACCESS_DECISION = 3
    ACCESS_OUTCOME = 4
    DISCLOSURE = 5
    ADMIN = 6
    KEY_EVENT = 7

    @property
    def label(self) -> str:
        """The kind as the issue and exports spell it (``consent-revoke``)."""
        return self.name.lower().replace("_", "-")


class EntryFlag(enum.IntFlag):
    """Flag bits of version 1. Other bits are reserved and must be zero."""

    NONE = 0
    #: The decision permitted access (absent on a decision means it denied).
    PERMIT = 0x0001
    #: Access was granted under break-the-glass (emergency) rules.
    BREAK_THE_GLASS = 0x0002
    #: Access was permitted only to a narrowed view (filtered query, redacted answer).
    NARROWED = 0x0004


#: Every bit an :class:`EntryFlag` defines (a new flag is added there only). Plain ints on
#: purpose: IntFlag's ``~`` only complements *defined* bits.
_KNOWN_FLAG_BITS = functools.reduce(operator.or_, (int(flag) for flag in EntryFlag), 0)
_UNKNOWN_FLAG_BITS = ~_KNOWN_FLAG_BITS


@dataclass(frozen=True, slots=True)
class Leaf:
    """One ledger entry, validated on construction (invalid values raise MalformedError).

    ``recorded_us`` is microseconds since the Unix epoch (see :func:`micros`). ``pseudonym`` is
    16 random bytes or ``None`` for entries about no patient; ``previous`` (the per-patient
    chain) requires a pseudonym. Indexes are ledger positions, ``0 <= i < NO_INDEX``.
    """

    kind: EntryKind
    recorded_us: int
    pseudonym: bytes | None
    commitment: bytes
    previous: int | None = None
    consent: int | None = None
    flags: EntryFlag = EntryFlag.NONE

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EntryKind):
            raise MalformedError(f"kind must be an EntryKind, not {self.kind!r}")
        if not isinstance(self.flags, EntryFlag) or int(self.flags) & _UNKNOWN_FLAG_BITS:
            raise MalformedError(f"undefined flag bits in {int(self.flags):#06x}")
        if not 0 <= self.recorded_us < 2**64:
            raise MalformedError("recorded time is outside the uint64 microsecond range")
        if self.pseudonym is not None and (
            len(self.pseudonym) != PSEUDONYM_SIZE or self.pseudonym == _NO_PATIENT
        ):
            raise MalformedError(f"a pseudonym is {PSEUDONYM_SIZE} random bytes, not all zero")
        if len(self.commitment) != COMMITMENT_SIZE:
            raise MalformedError(f"the evidence commitment is {COMMITMENT_SIZE} bytes")
        for name, index in (("previous", self.previous), ("consent", self.consent)):
            if index is not None and not 0 <= index < NO_INDEX:
                raise MalformedError(f"{name} index {index} is out of range")
        if self.pseudonym is None and self.previous is not None:
            raise MalformedError("an entry without a pseudonym has no per-patient chain")

    @property
    def recorded_at(self) -> datetime:
        """The recorded time as an aware UTC datetime."""
        return _EPOCH + timedelta(microseconds=self.recorded_us)


def encode_leaf(leaf: Leaf) -> bytes:
    """The canonical version-1 bytes of ``leaf`` (layout in the module docstring)."""
    return _LAYOUT.pack(
        LEAF_TAG,
        LEAF_VERSION,
        leaf.kind,
        leaf.flags,
        leaf.recorded_us,
        leaf.pseudonym or _NO_PATIENT,
        NO_INDEX if leaf.previous is None else leaf.previous,
        NO_INDEX if leaf.consent is None else leaf.consent,
        leaf.commitment,
    )


def relinked(encoded: bytes, previous: int | None) -> bytes:
    """``encoded`` (canonical leaf bytes) with ``previous`` as its previous index: the
    encoding of the same leaf linked so, without building and checking a :class:`Leaf` again
    (a store links every entry it sequences). The caller checks ``previous`` as
    :class:`Leaf` would: an index in range, on a leaf with a pseudonym."""
    end = _PREVIOUS_AT + _INDEX.size
    link = _INDEX.pack(NO_INDEX if previous is None else previous)
    return encoded[:_PREVIOUS_AT] + link + encoded[end:]


class LeafFields(NamedTuple):
    """A valid leaf's fields as :func:`leaf_fields` reads them: :class:`Leaf`'s, ``kind`` and
    ``flags`` plain integers (an :class:`EntryKind` value, :class:`EntryFlag` bits)."""

    kind: int
    flags: int
    recorded_us: int
    pseudonym: bytes | None
    previous: int | None
    consent: int | None
    commitment: bytes


#: The fields :func:`leaf_link` checks: tag and version (one 5-byte string: one comparison),
#: kind, flags, pseudonym, previous.
_CHECKED = struct.Struct(f">5sBH8x{PSEUDONYM_SIZE}sQ{8 + COMMITMENT_SIZE}x")
_HEAD = LEAF_TAG + bytes([LEAF_VERSION])
#: The rest :func:`leaf_fields` reads: kind, flags, recorded time, consent, commitment.
_REST = struct.Struct(f">5xBHQ{PSEUDONYM_SIZE + 8}xQ{COMMITMENT_SIZE}s")
_KINDS = frozenset(int(k) for k in EntryKind)
#: ``LeafFields`` without its generated ``__new__`` (a Python call; ``_make`` does the same).
_new_fields = tuple.__new__


def leaf_link(data: bytes) -> tuple[bytes | None, int | None]:
    """The pseudonym and ``previous`` index of the leaf ``data`` (None: no patient, no earlier
    entry); raises :class:`MalformedError` on anything but the canonical bytes of a
    :class:`Leaf`: another length, tag, version, kind, a flag bit not defined, or a chain
    link without a pseudonym.

    This is the one check of leaf bytes: :func:`leaf_fields` and :func:`decode_leaf` are
    built on it, and the code that reads every leaf of a log (the replay) calls it directly,
    so a new kind or flag is added in one place (the enums). It reads only the fields it
    checks and builds nothing (about 0.15 µs a leaf). The fields it does not read need no
    check: any value of the recorded time and consent index is valid (``NO_INDEX`` reads as
    None), and the commitment is any 32 bytes.
    """
    try:
        head, kind, flags, pseudonym, previous = _CHECKED.unpack(data)
    except struct.error:
        raise MalformedError(f"a leaf is {LEAF_SIZE} bytes, not {len(data)}") from None
    if head != _HEAD:
        if head[:4] != LEAF_TAG:
            raise MalformedError("not a Consentry ledger leaf (bad tag)")
        raise MalformedError(f"unsupported leaf version {head[4]}")
    if kind not in _KINDS:
        raise MalformedError(f"unknown entry kind {kind}")
    if flags & _UNKNOWN_FLAG_BITS:
        raise MalformedError(f"undefined flag bits in {flags:#06x}")
    if pseudonym == _NO_PATIENT:
        if previous != NO_INDEX:
            raise MalformedError("an entry without a pseudonym has no per-patient chain")
        return None, None
    return pseudonym, None if previous == NO_INDEX else previous


def leaf_fields(data: bytes) -> LeafFields:
    """The fields of the leaf ``data`` when :func:`leaf_link` accepts it, else the
    :class:`MalformedError` it raises: :func:`decode_leaf` without building a :class:`Leaf`
    and its enums (about 0.35 µs a leaf; a :class:`Leaf` costs 2 µs more). For code that
    reads every leaf of an export and compares fields."""
    pseudonym, previous = leaf_link(data)
    kind, flags, recorded, consent, commitment = _REST.unpack(data)
    return _new_fields(
        LeafFields,
        (
            kind,
            flags,
            recorded,
            pseudonym,
            previous,
            None if consent == NO_INDEX else consent,
            commitment,
        ),
    )


def decode_leaf(data: bytes) -> Leaf:
    """Parse canonical leaf bytes; raises :class:`MalformedError` on anything else (the checks
    are :func:`leaf_link`'s)."""
    pseudonym, previous = leaf_link(data)
    kind, flags, recorded, consent, commitment = _REST.unpack(data)
    return Leaf(
        kind=EntryKind(kind),
        recorded_us=recorded,
        pseudonym=pseudonym,
        commitment=commitment,
        previous=previous,
        consent=None if consent == NO_INDEX else consent,
        flags=EntryFlag(flags),
    )


def new_pseudonym() -> bytes:
    """16 fresh random bytes naming one patient's chain; never derived from an identifier."""
    while True:
        pseudonym = secrets.token_bytes(PSEUDONYM_SIZE)
        if pseudonym != _NO_PATIENT:  # all zero means "no patient"; 2**-128, but exact
            return pseudonym


def new_salt() -> bytes:
    """32 fresh random bytes for :func:`commit_evidence`; stored with the evidence."""
    # SALT_SIZE is also token_bytes' own default (32): token_bytes(None) is an equivalent
    # mutant; the size stays explicit because commit_evidence requires exactly SALT_SIZE.
    return secrets.token_bytes(SALT_SIZE)


def commit_evidence(salt: bytes, evidence: bytes) -> bytes:
    """``SHA-256(EVIDENCE_PREFIX || salt || evidence)``: the leaf's evidence commitment.

    ``evidence`` is the stored canonical bytes (never a re-serialised model). The salt is
    exactly :data:`SALT_SIZE` bytes, so prefix, salt and evidence split unambiguously, and it
    is kept beside the evidence, not in the ledger: without it a commitment cannot be tested
    against guessed evidence, and deleting both crypto-shreds the link.
    """
    if len(salt) != SALT_SIZE:
        raise MalformedError(f"the evidence salt is {SALT_SIZE} bytes, not {len(salt)}")
    return hashlib.sha256(EVIDENCE_PREFIX + salt + evidence).digest()


def micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact integer arithmetic)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise MalformedError("a recorded time must be timezone-aware")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def micros_at(seconds: float) -> int:
    """:func:`micros` of a wall-clock reading (seconds since the epoch, as ``time.time``
    gives), taken as a UTC datetime first so both agree to the microsecond."""
    return micros(datetime.fromtimestamp(seconds, UTC))
