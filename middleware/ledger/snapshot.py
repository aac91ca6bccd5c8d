"""A log as stored, read at one moment and not yet checked: the verifier's and export's input.

Storage readers (``middleware.storage.ledger_dump``) and the export reader
(``middleware.ledger.export``) produce a :class:`LogSnapshot`; the verifier
(``middleware.ledger.verify``) judges it. Nothing in it has been trusted: rows may be out of
order, hashes may not match their leaves, notes may be forged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from middleware.ledger.entry import Evidence

__all__ = ["LogSnapshot"]


@dataclass(frozen=True, slots=True, repr=False)
class LogSnapshot:
    """One log's rows.

    ``leaves`` in stored index order; ``indexes`` the index stored with each (``None`` when
    the source has no separate index column, as in an export, where position is the index);
    ``leaf_hashes`` the hash stored with each (``None`` when the source stores none);
    ``checkpoints`` every signed note, in size order as stored; ``evidence`` by index, only
    what is present (shredded or withheld evidence is absent); ``state`` the stored
    ``(size, root)`` of the tree-state row, if the source has one.
    """

    leaves: list[bytes]
    checkpoints: list[str]
    evidence: dict[int, Evidence] = field(default_factory=dict)
    indexes: list[int] | None = None
    leaf_hashes: list[bytes] | None = None
    state: tuple[int, bytes] | None = None

    def __repr__(self) -> str:
        # Short on purpose: a log can hold millions of leaves, and asyncio formats the repr
        # of a coroutine's result when it finishes.
        return (
            f"LogSnapshot(leaves={len(self.leaves)}, checkpoints={len(self.checkpoints)}, "
            f"evidence={len(self.evidence)})"
        )
