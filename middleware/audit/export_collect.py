"""Gather what an export needs from a ledger: the checkpoint, leaves, proofs, openings.

:func:`collect_export` reads, for the report's rows (audit index rows, fetched by the caller),
a signed checkpoint (the latest), every leaf hash up to its size (the proofs are against that
one checkpoint, RFC 9162 §2.1.3.1), the leaves and evidence of the exported entries, and
opens each entry for the verifier: the entry key is ``evidence_key(patient key, salt)``
(:mod:`middleware.audit.evidence`), the patient key unwrapped once per pseudonym. For a
per-patient export it reads the patient's pseudonym chain and plans the lines with
:func:`~middleware.audit.export.plan_chain`: the period's chain entries (the report's rows as
``row``, the others as ``other``) between the ``before`` and ``after`` boundaries.

Where the entries come from is a :class:`LogView`: :class:`StoreView` reads a live store entry
by entry (a patient's few thousand entries), :class:`SnapshotView` the whole log read in one
transaction (``storage.ledger_bulk``; an export of most of the log, where one read per entry
would dominate). The format itself is :mod:`middleware.audit.export`'s.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from middleware.audit.evidence import is_sealed, unwrap_key
from middleware.audit.export import (
    EntryOpening,
    ExportEntry,
    ExportHeader,
    Role,
    entries_for,
    plan_chain,
    plan_tail,
)
from middleware.audit.export_columns import columns_for
from middleware.audit.proofs import ProofMaker
from middleware.audit.row import AuditRow
from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.errors import LedgerError, MalformedError, VerificationError
from middleware.ledger.leaf import PSEUDONYM_SIZE, decode_leaf, leaf_link
from middleware.ledger.merkle import HASH_SIZE, leaf_hash
from middleware.ledger.note import parse_note
from middleware.ledger.signing import evidence_keyer
from middleware.ledger.tree import hash_leaves
from middleware.storage.ledger_base import LogStore, signed_as
from middleware.storage.ledger_bulk import BulkLog

__all__ = [
    "ExportSpec",
    "LogView",
    "SnapshotView",
    "StoreView",
    "StoredEvidence",
    "collect_export",
    "proof_tree",
]

#: An entry's stored evidence as a view returns it: ``(index, salt, data)``, the row as the
#: database driver returns it (no object built per entry).
StoredEvidence = tuple[int, bytes, bytes]

#: Leaves fetched in one read when the wanted indexes are this close together.
_GAP = 512
_PSEUDONYM = slice(16, 16 + PSEUDONYM_SIZE)  # the leaf's pseudonym bytes (ledger.leaf layout)


class LogView(Protocol):
    """The ledger as an export reads it; ``note`` is the signed checkpoint the proofs are
    against and ``size`` its tree size. ``hashes_from_leaves``: whether :meth:`leaf_hashes`
    hashes the very leaf bytes :meth:`leaves` returns (then each exported leaf hashes to its
    proof's leaf by construction), rather than reading stored hashes."""

    note: str
    size: int
    hashes_from_leaves: bool

    async def leaf_hashes(self) -> list[bytes]: ...

    async def leaves(self, indexes: Sequence[int]) -> dict[int, bytes]: ...

    async def evidence(self, indexes: Sequence[int]) -> Mapping[int, StoredEvidence]: ...

    async def chain(self, pseudonym: bytes) -> list[int]: ...


class StoreView:
    """A live store read entry by entry; :meth:`open` takes its latest checkpoint."""

    hashes_from_leaves = False  # the store's leaf_hash column

    def __init__(self, store: LogStore, note: str, size: int) -> None:
        self.store, self.note, self.size = store, note, size

    @classmethod
    async def open(cls, store: LogStore) -> StoreView:
        stored = await store.checkpoint()
        if stored is None or stored.size == 0:
            raise LedgerError("the log has no signed checkpoint with entries yet")
        return cls(store, stored.note, stored.size)

    @classmethod
    async def at(cls, store: LogStore, note: str) -> StoreView:
        """The view at the checkpoint ``note`` states: one the store signed (the same
        text), carried with more signatures (a witnessed checkpoint's cosignatures), which
        the export's header then holds. The proofs are against its size."""
        stored = await signed_as(store, note)
        if stored is None or stored.size == 0:
            raise LedgerError("the witnessed checkpoint is not one this log signed")
        return cls(store, note, stored.size)

    async def leaf_hashes(self) -> list[bytes]:
        return await self.store.leaf_hashes(0, self.size)

    async def leaves(self, indexes: Sequence[int]) -> dict[int, bytes]:
        wanted = sorted(set(indexes))
        out: dict[int, bytes] = {}
        start = 0
        while start < len(wanted):  # one read per run of nearby indexes
            end = start
            while end + 1 < len(wanted) and wanted[end + 1] - wanted[end] <= _GAP:
                end += 1
            lo = wanted[start]
            read = await self.store.leaves(lo, wanted[end] + 1)
            out.update((i, read[i - lo]) for i in wanted[start : end + 1])
            start = end + 1
        return out

    async def evidence(self, indexes: Sequence[int]) -> dict[int, StoredEvidence]:
        out: dict[int, StoredEvidence] = {}
        for index in indexes:
            found = await self.store.evidence(index)
            if found is not None:
                out[index] = (index, found.salt, found.data)
        return out

    async def chain(self, pseudonym: bytes) -> list[int]:
        return [i for i in await self.store.chain(pseudonym) if i < self.size]


class SnapshotView:
    """The whole log as ``read_bulk`` read it: its latest checkpoint, leaves and evidence."""

    hashes_from_leaves = True  # hash_leaves of the snapshot's leaves, no stored hashes read

    def __init__(self, log: BulkLog) -> None:
        if log.note is None:
            raise LedgerError("the log has no signed checkpoint yet")
        self.note = log.note
        self.size = parse_checkpoint(parse_note(self.note).text).size
        if self.size == 0 or self.size > len(log.leaves):
            raise LedgerError("the log's latest checkpoint does not cover its leaves")
        self._log = log

    async def leaf_hashes(self) -> list[bytes]:
        return hash_leaves(self._log.leaves[: self.size])

    def leaf(self, index: int) -> bytes:
        """The stored leaf at ``index`` (unchecked)."""
        return self._log.leaves[index]

    async def leaves(self, indexes: Sequence[int]) -> dict[int, bytes]:
        return dict(zip(indexes, map(self._log.leaves.__getitem__, indexes), strict=True))

    async def evidence(self, indexes: Sequence[int]) -> dict[int, StoredEvidence]:
        stored = self._log.evidence
        return {i: stored[i] for i in indexes if i in stored}

    async def chain(self, pseudonym: bytes) -> list[int]:
        leaves = self._log.leaves
        return [i for i in range(self.size) if leaves[i][_PSEUDONYM] == pseudonym]


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """What is exported: the ``report`` kind and its scope; ``pseudonym``: the patient's
    chain, for a per-patient export (None: no completeness proof); ``rules``: the report's
    inclusion rules for the header (``export_rules.rules_json``), the verifier re-applies them."""

    report: str
    patient: str | None = None
    agent: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    pseudonym: bytes | None = None
    rules: Mapping[str, Any] | None = None


async def collect_export(
    view: LogView,
    spec: ExportSpec,
    rows: Sequence[AuditRow],
    *,
    wrapped_keys: Callable[[Sequence[bytes]], Awaitable[Mapping[bytes, bytes]]],
    wrap_key: bytes,
    tree: ProofMaker | None = None,
) -> tuple[ExportHeader, Iterator[ExportEntry]]:
    """The header and the entry lines of an export of ``rows`` (module docstring), with the
    columns of ``spec.report``'s kind (``export_columns``; a row the kind does not show is
    left out, or an ``other`` line of a chain).
    ``wrapped_keys(pseudonyms)`` is the store's ``audit_keys_get`` (one read for every
    patient of the file: a read each was some 35 µs a patient); ``wrap_key`` the ledger
    key's evidence wrap key. An entry whose patient key is gone (shredded) has no opening.
    ``tree``: :func:`proof_tree` of ``view`` made already (an export made in parts shares
    one); None: made here."""
    size = view.size
    origin = parse_checkpoint(parse_note(view.note).text).origin
    if tree is None:
        tree = await proof_tree(view)
    names, columns_of = columns_for(spec.report)
    columns: dict[int, Sequence[str]] = {}  # the rows the report shows, by ledger index
    for row in rows:
        index = row.index
        if 0 <= index < size and (cells := columns_of(row)) is not None:
            columns[index] = cells
    lines: list[tuple[Role, int]]
    checked_tree = tree if not view.hashes_from_leaves else None
    chain_leaves: dict[int, bytes] = {}  # checked by _check_chain, its lines not read again
    if spec.pseudonym is not None:
        chain = await view.chain(spec.pseudonym)
        chain_leaves = await view.leaves(chain)
        # Every chain leaf against the verified tree, not only those the file will hold:
        # their times decide which entries plan_chain puts in it.
        timed = _check_chain(chain, chain_leaves, spec.pseudonym, checked_tree)
        before, inside, after = plan_chain(timed, spec.since_us, spec.until_us)
        lines = [("before", before)] if before is not None else []
        lines += [("row" if i in columns else "other", i) for i in inside]
        lines += [("after", after)] if after is not None else []
        if after is None:  # the chain's end, proved by every later leaf (export.plan_tail)
            lines += [("tail", i) for i in plan_tail(lines[-1][1] if lines else None, size)]
    else:
        lines = [("row", i) for i in sorted(columns)]
    leaves = chain_leaves | await view.leaves([i for _, i in lines if i not in chain_leaves])
    _check_lines(lines, leaves, checked_tree, spec.pseudonym, hashed=chain_leaves)
    opened = [i for role, i in lines if role in ("row", "other")]
    evidence = await view.evidence(opened)
    # None: no opening (no evidence, a legacy Bundle, or the patient's key is gone).
    openings: dict[int, EntryOpening | None] = dict.fromkeys(opened)
    sealed = [(i, e) for i in opened if (e := evidence.get(i)) is not None and is_sealed(e[2])]
    # Each patient key unwrapped once, and keyed once for its entries' keys (evidence_keyer).
    keyers: dict[bytes, Callable[[bytes], bytes] | None] = {}
    pseudonyms = list(dict.fromkeys(leaves[i][_PSEUDONYM] for i, _ in sealed))
    stored_keys = await wrapped_keys(pseudonyms) if pseudonyms else {}
    for pseudonym in pseudonyms:
        wrapped = stored_keys.get(pseudonym)  # all zero: no patient (evidence.NO_PATIENT)
        keyers[pseudonym] = (
            None if wrapped is None else evidence_keyer(unwrap_key(wrap_key, wrapped))
        )
    for index, (_, salt, data) in sealed:
        key_of = keyers[leaves[index][_PSEUDONYM]]
        if key_of is not None:
            openings[index] = EntryOpening(salt, data, key_of(salt))
    header = ExportHeader(
        report=spec.report,
        checkpoint=view.note,
        origin=origin,
        patient=spec.patient,
        agent=spec.agent,
        since_us=spec.since_us,
        until_us=spec.until_us,
        chain=spec.pseudonym,
        columns=names,
        rules=spec.rules,
    )
    entries = entries_for(
        lines, tree=tree, size=size, leaves=leaves, openings=openings, columns=columns
    )
    return header, entries


async def proof_tree(view: LogView) -> ProofMaker:
    """The tree the proofs are made from: ``view``'s leaf hashes, checked to have its signed
    checkpoint's size and root (RFC 9162 §2.1.1)."""
    checkpoint = parse_checkpoint(parse_note(view.note).text)
    tree = ProofMaker(await view.leaf_hashes())
    _check_tree(tree, checkpoint.size, checkpoint.root_hash, view.size)
    return tree


# -- what the export checks of the log it reads ----------------------------------------------
# An export may read a log opened without its replay (cli_reports.export): these checks refuse,
# for everything the file will hold, what the replay would have refused, so a forged log never
# gives an export (which verify-export would then reject line by line).


def _check_tree(tree: ProofMaker, signed_size: int, signed_root: bytes, size: int) -> None:
    """The leaf hashes the proofs are made from have the checkpoint's size and root."""
    if signed_size != size or tree.size != size:
        raise VerificationError(
            "the log's leaves do not cover its latest checkpoint", expected=size, computed=tree.size
        )
    computed = tree.root()
    if not hmac.compare_digest(computed, signed_root):
        raise VerificationError(
            f"the leaves have another root than the checkpoint for size {size}",
            expected=signed_root,
            computed=computed,
        )


def _check_chain(
    chain: Sequence[int],
    leaves: Mapping[int, bytes],
    pseudonym: bytes,
    tree: ProofMaker | None,
) -> list[tuple[int, int]]:
    """``(index, recorded_us)`` of the patient's chain, each leaf valid, hashing to the
    tree's leaf at its index (None: ``tree`` was made from these very leaves), of
    ``pseudonym`` and naming the one before as ``previous`` (the first none): the stored
    pseudonym column the store found the chain by cannot hide or add an entry, and a leaf
    changed under its stored hash cannot move an entry out of the period (plan_chain plans
    by these times, also for entries the file will not hold)."""
    timed: list[tuple[int, int]] = []
    previous: int | None = None
    for index in chain:
        data = leaves[index]
        try:
            leaf = decode_leaf(data)
        except MalformedError as exc:
            raise VerificationError(f"leaf {index} is malformed: {exc}") from exc
        _check_hash(tree, index, data)
        if leaf.pseudonym != pseudonym or leaf.previous != previous:
            raise VerificationError(
                f"the patient's chain is broken at leaf {index}",
                expected=previous,
                computed=leaf.previous,
            )
        timed.append((index, leaf.recorded_us))
        previous = index
    return timed


def _check_lines(
    lines: Sequence[tuple[Role, int]],
    leaves: Mapping[int, bytes],
    tree: ProofMaker | None,
    pseudonym: bytes | None,
    hashed: Container[int] = (),
) -> None:
    """Each line's leaf is a valid leaf whose hash is the one its proof is made from (None:
    ``tree`` was made from these very leaves, ``LogView.hashes_from_leaves``; ``hashed``: the
    indexes :func:`_check_chain` checked already), and a ``tail`` leaf is not the patient's
    (the tail proves the chain ends)."""
    if tree is not None and _hashes_match(tree, [i for _, i in lines if i not in hashed], leaves):
        tree = None  # every hash checked at once: the loop below then finds no mismatch
    for role, index in lines:
        leaf = leaves[index]
        try:
            pseudonym_of_leaf, _ = leaf_link(leaf)
        except MalformedError as exc:
            raise VerificationError(f"leaf {index} is malformed") from exc
        if index not in hashed:
            _check_hash(tree, index, leaf)
        if role == "tail" and pseudonym_of_leaf == pseudonym:
            raise VerificationError(f"leaf {index} of the patient's chain is not in its chain")


def _hashes_match(tree: ProofMaker, indexes: Sequence[int], leaves: Mapping[int, bytes]) -> bool:
    """Whether each leaf at ``indexes`` hashes to ``tree``'s leaf at its index: the checks of
    :func:`_check_hash`, in one batch (``hash_leaves``, one comparison of the concatenated
    hashes, about a third of the cost of a call per leaf). False: some leaf does not (or is
    no bytes, or some stored hash is not :data:`HASH_SIZE` bytes), and the caller checks
    them one by one to report the first as before."""
    try:
        computed = b"".join(hash_leaves(map(leaves.__getitem__, indexes)))
    except TypeError:  # not bytes: _check_hash reports it as it did
        return False
    stored = list(map(tree.leaf_hash, indexes))
    # Equal concatenations are equal hashes only if each stored one is 32 bytes, as each
    # computed one is: two neighbours' stored hashes re-split (31 + 33 bytes) keep both the
    # concatenation and the root (a node hashes L || R), yet neither leaf's proof is right.
    if not set(map(len, stored)) <= {HASH_SIZE}:  # a set: 0.5 ms for 25,000, any() 0.8
        return False
    return hmac.compare_digest(computed, b"".join(stored))


def _check_hash(tree: ProofMaker | None, index: int, leaf: bytes) -> None:
    """``leaf`` hashes to ``tree``'s leaf at ``index``, the hash its proof is made from and
    the tree checked against the signed root (_check_tree); None: nothing to check."""
    if tree is not None and not hmac.compare_digest(
        computed := leaf_hash(leaf), expected := tree.leaf_hash(index)
    ):
        raise VerificationError(
            f"stored hash of leaf {index} does not match its bytes",
            expected=expected,
            computed=computed,
        )
