"""A ledger store that fails on demand, for the tests of what the gateway does when its
audit trail cannot be written (fail closed: nothing released that was not recorded)."""

from __future__ import annotations

from collections.abc import Sequence

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.sequencer import CheckpointSigner
from middleware.storage.ledger_memory import MemoryLogStore

__all__ = ["OutageStore"]


class OutageStore(MemoryLogStore):
    """A memory log that refuses batches while :attr:`down` (a store outage), or commits one
    and then loses the answer (:attr:`lose_answer`: the commit happened, the caller hears an
    error)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lose_answer = False

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        if batch and self.down:
            raise ServiceUnavailable("ledger store cannot commit")
        results = await super().append(batch, sign=sign)
        if batch and self.lose_answer:
            self.lose_answer = False
            raise ServiceUnavailable("connection lost before the commit's answer")
        return results
