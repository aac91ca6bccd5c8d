"""The pipeline's entry: one :class:`~middleware.pipeline.exchange.Ask` to the half that
enforces its interaction.

Reads, searches, history and operations go to :class:`~middleware.pipeline.flow.Flow`;
create, update, patch and delete to :class:`~middleware.pipeline.writes.Writes`; batch and
transaction to :class:`~middleware.pipeline.bundles.Bundles` (which runs each entry through
the read or write half itself: an entry is never another Bundle); a Bulk Data ``$export``
kick-off to :class:`~middleware.pipeline.export.Exports`. Each half is built before
this one and handed in, so nothing is wired after construction and no half calls back up.
A half that is not given is refused (403), never skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final

from middleware.errors import Forbidden
from middleware.fhir.request import Interaction
from middleware.pipeline.bundles import Bundles
from middleware.pipeline.exchange import Answer, Ask
from middleware.pipeline.export import EXPORT_OPERATIONS, Exports
from middleware.pipeline.flow import Flow
from middleware.pipeline.writes import Writes

__all__ = ["Pipeline"]

_BUNDLES: Final = frozenset({Interaction.BATCH, Interaction.TRANSACTION})


class Pipeline:
    """The enforcement pipeline of one gateway: ``reads`` (which also owns the break-the-glass
    sessions and the wall clock every half reads), ``writes``, ``bundles`` and ``exports``."""

    def __init__(
        self,
        reads: Flow,
        writes: Writes | None = None,
        bundles: Bundles | None = None,
        exports: Exports | None = None,
    ) -> None:
        self.reads = reads
        self.writes = writes
        self.bundles = bundles
        self.exports = exports

    def run(self, ask: Ask) -> Awaitable[Answer]:
        """The answer to ``ask``, to await; raises :class:`~middleware.errors.GatewayError`
        for every refusal (a missing half's when called, the half's when awaited). Not a
        coroutine itself: the half's is returned, so the hot path makes one, not two."""
        request = ask.request
        if request.interaction is Interaction.OPERATION and request.operation in EXPORT_OPERATIONS:
            if self.exports is None:
                raise Forbidden("bulk export is not enabled on this gateway")
            return self.exports.kick_off(ask)
        if not request.is_write:
            return self.reads.run(ask)
        if self.writes is None:
            raise Forbidden("writes are not enabled on this gateway")
        if ask.request.interaction in _BUNDLES:
            if self.bundles is None:
                raise Forbidden("batch and transaction are not enabled on this gateway")
            return self.bundles(ask)
        return self.writes(ask)
