"""The log as a part of an export made in parts reads it (``export_parallel``):
:class:`RangeView`, a :class:`~middleware.audit.export_collect.LogView` of the signed
checkpoint, the stored leaf hashes (the command's, before its workers start) or a slice's own
leaves and evidence (each part's, ``storage.ledger_bulk.read_range``).

Why not the whole snapshot (``SnapshotView``): the command read every leaf and evidence row
before the fork, which delayed every part, and each worker then touched its inherited copy
(copy-on-write page faults). Nothing is trusted less: the view reads stored hashes, not the
leaves they were made from (``hashes_from_leaves`` False), so ``collect_export`` checks every
leaf a part reads hashes to the tree's leaf at its index, and the tree is checked against the
checkpoint's signed root (``export_collect.proof_tree``), as for a live store's export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from middleware.audit.export_collect import StoredEvidence
from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.note import parse_note

__all__ = ["RangeView", "checkpoint_size"]


def checkpoint_size(note: str | None, stored: int) -> int:
    """The tree size of the latest signed checkpoint ``note`` of a log of ``stored`` leaves;
    the errors ``SnapshotView`` raises for it (no note, no entry, more than is stored)."""
    if note is None:
        raise LedgerError("the log has no signed checkpoint yet")
    size = parse_checkpoint(parse_note(note).text).size
    if size == 0 or size > stored:
        raise LedgerError("the log's latest checkpoint does not cover its leaves")
    return size


class RangeView:
    """The checkpoint ``note`` (of tree ``size``) with the stored ``hashes`` of its leaves
    (the command's view: :meth:`leaf_hashes`), or with a part's ``leaves`` and ``evidence``
    (``ledger_bulk.LeafRange``'s). A leaf it was not given is an error (``KeyError``: the
    part fails and the export is made sequentially)."""

    hashes_from_leaves = False  # stored hashes: collect_export checks each leaf read

    def __init__(
        self,
        note: str,
        size: int,
        *,
        hashes: Sequence[bytes] = (),
        leaves: Mapping[int, bytes] | None = None,
        evidence: Mapping[int, StoredEvidence] | None = None,
    ) -> None:
        self.note, self.size = note, size
        self._hashes = hashes
        self._leaves: Mapping[int, bytes] = {} if leaves is None else leaves
        self._evidence: Mapping[int, StoredEvidence] = {} if evidence is None else evidence

    async def leaf_hashes(self) -> list[bytes]:
        return list(self._hashes[: self.size])

    async def leaves(self, indexes: Sequence[int]) -> dict[int, bytes]:
        return dict(zip(indexes, map(self._leaves.__getitem__, indexes), strict=True))

    async def evidence(self, indexes: Sequence[int]) -> dict[int, StoredEvidence]:
        stored = self._evidence
        return {i: stored[i] for i in indexes if i in stored}

    async def chain(self, pseudonym: bytes) -> list[int]:
        raise LedgerError("an export made in parts has no patient chain")
