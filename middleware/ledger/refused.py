"""A store's refusal of some entries of a batch, not of the batch.

An append is one transaction, so a store that cannot take one entry of a batch (the SQLite
store that cannot announce a consent entry: :mod:`middleware.storage.consent_seq`) rolls the
whole batch back. The group-commit writer (:mod:`middleware.ledger.writer`) batches entries
of unrelated requests together; :class:`EntriesRefused` names the refused ones by their
position in the batch, so the writer fails only their appenders and appends the others again
without them.
"""

from __future__ import annotations

from middleware.errors import ServiceUnavailable

__all__ = ["EntriesRefused"]


class EntriesRefused(ServiceUnavailable):
    """The entries at ``positions`` (0-based, in the batch given to ``LogStore.append``)
    cannot be appended now, and the append was rolled back; a batch without them may
    succeed. Still a :class:`ServiceUnavailable` (503) for their appenders."""

    def __init__(self, message: str, positions: frozenset[int]) -> None:
        super().__init__(message)
        self.positions = positions
