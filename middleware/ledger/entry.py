"""The values that cross the ledger's storage boundary: what an appender hands in, what a store
hands back.

An appender describes an entry with :class:`NewEntry`: the kind, the patient pseudonym, the
evidence bytes and their salt, and an optional idempotency key. It does *not* know the entry's
index or the previous entry of the same pseudonym: only the store does, inside the transaction
that sequences the entry, so the store builds the :class:`~middleware.ledger.leaf.Leaf`
(:func:`NewEntry.leaf`). The evidence commitment is computed here, once, on construction.

Everything here is pure data: no I/O, no clock, no crypto library beyond :mod:`hashlib`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from middleware.audit.row import AuditRow
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import (
    NO_INDEX,
    EntryFlag,
    EntryKind,
    Leaf,
    commit_evidence,
    encode_leaf,
    new_salt,
    relinked,
)
from middleware.ledger.merkle import HASH_SIZE, CompactRange

__all__ = [
    "MAX_IDEMPOTENCY_KEY",
    "AppendResult",
    "Evidence",
    "NewEntry",
    "StoredCheckpoint",
    "TreeState",
]

#: Longest idempotency key accepted, in characters (a UUID or a hash fits many times over).
MAX_IDEMPOTENCY_KEY = 200


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry waiting to be sequenced; validated on construction (raises MalformedError).

    ``evidence`` is the exact byte string the commitment covers and the store keeps beside the
    ledger; it may be ciphertext (crypto-shredding by key deletion), which the store treats as
    opaque. ``salt`` is :data:`~middleware.ledger.leaf.SALT_SIZE` random bytes.

    ``idempotency_key`` (optional, 1..200 characters, never PHI: a request id or a hash of one)
    makes a retried append return the index of the first one instead of recording it twice.
    The first entry recorded under a key wins; a later entry with the same key is not compared
    with it, only reported as a duplicate.

    ``row`` (optional) is the entry's audit-index row (:mod:`middleware.audit.row`): the store
    writes it, with the entry's index, in the same transaction as the leaf, into the index
    tables beside the log (never into the leaf: it names patients). A duplicate writes none.
    """

    kind: EntryKind
    recorded_us: int
    salt: bytes
    evidence: bytes
    pseudonym: bytes | None = None
    consent: int | None = None
    flags: EntryFlag = EntryFlag.NONE
    idempotency_key: str | None = None
    row: AuditRow | None = field(default=None, repr=False)
    commitment: bytes = field(init=False, repr=False, compare=False)
    #: The leaf's bytes with no previous index, encoded (and so checked) on construction.
    unlinked: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.evidence, bytes):
            raise MalformedError("evidence is bytes")
        object.__setattr__(self, "commitment", commit_evidence(self.salt, self.evidence))
        key = self.idempotency_key
        if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
            raise MalformedError(
                f"an idempotency key is 1..{MAX_IDEMPOTENCY_KEY} printable characters"
            )
        # The Leaf's own checks: kind, flags, time, pseudonym, consent index.
        object.__setattr__(self, "unlinked", encode_leaf(self.leaf(None)))

    @classmethod
    def create(
        cls,
        kind: EntryKind,
        evidence: bytes,
        *,
        recorded_us: int,
        pseudonym: bytes | None = None,
        consent: int | None = None,
        flags: EntryFlag = EntryFlag.NONE,
        idempotency_key: str | None = None,
        row: AuditRow | None = None,
    ) -> NewEntry:
        """An entry with a fresh random salt (the usual way to make one)."""
        return cls(
            kind=kind,
            recorded_us=recorded_us,
            salt=new_salt(),
            evidence=evidence,
            pseudonym=pseudonym,
            consent=consent,
            flags=flags,
            idempotency_key=idempotency_key,
            row=row,
        )

    def leaf(self, previous: int | None) -> Leaf:
        """The ledger leaf for this entry once the store knows the pseudonym's previous index."""
        return Leaf(
            kind=self.kind,
            recorded_us=self.recorded_us,
            pseudonym=self.pseudonym,
            commitment=self.commitment,
            previous=previous,
            consent=self.consent,
            flags=self.flags,
        )

    def leaf_bytes(self, previous: int | None) -> bytes:
        """The canonical leaf bytes (``encode_leaf(self.leaf(previous))``): every field but
        ``previous`` was checked on construction, so only ``previous`` is checked here, as
        :class:`~middleware.ledger.leaf.Leaf` checks it (same errors), and the bytes encoded
        then are relinked (a store calls this for every entry it sequences)."""
        if previous is None:
            return self.unlinked
        if self.pseudonym is None or not 0 <= previous < NO_INDEX:
            return encode_leaf(self.leaf(previous))  # raises the Leaf's error
        return relinked(self.unlinked, previous)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an entry landed: its ``index`` and the tree ``size`` of the checkpoint that covers
    it (the size after its batch). ``duplicate`` is true when the idempotency key was already
    recorded and ``index`` is the earlier entry's."""

    index: int
    size: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Evidence:
    """The evidence kept beside a leaf: ``commit_evidence(salt, data)`` is the leaf's
    commitment unless someone changed it (the store does not check; verifiers do)."""

    salt: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: the tree ``size``, its ``root`` and the signed ``note``
    (C2SP tlog-checkpoint text plus signature lines)."""

    size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class TreeState:
    """The stored tree state: ``size`` leaves, the compact range (``hashes``, one subtree root
    per set bit of ``size``, leftmost first) and the ``root`` they give."""

    size: int
    hashes: tuple[bytes, ...]
    root: bytes

    def __post_init__(self) -> None:
        if len(self.root) != HASH_SIZE:
            raise MalformedError(f"a root hash is {HASH_SIZE} bytes")
        self.compact_range()  # validates size against the number and length of hashes

    @classmethod
    def of(cls, compact: CompactRange) -> TreeState:
        return cls(compact.size, compact.hashes, compact.root())

    def compact_range(self) -> CompactRange:
        return CompactRange(self.size, self.hashes)

    def packed_hashes(self) -> bytes:
        """The compact range as one byte string (how the SQL backends store it)."""
        return b"".join(self.hashes)

    @classmethod
    def unpack(cls, size: int, packed: bytes, root: bytes) -> TreeState:
        """The inverse of :meth:`packed_hashes`; raises MalformedError on a bad length."""
        if len(packed) != HASH_SIZE * size.bit_count():
            raise MalformedError("stored compact range has the wrong length")
        hashes = tuple(packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE))
        return cls(size, hashes, root)
