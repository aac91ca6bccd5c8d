"""The audit outbox: a write's outcome entries kept durably, on local disk, until the ledger has
them.

A write is recorded twice (:mod:`middleware.pipeline.writes`): its decision before it is
forwarded, its outcome once the upstream answered. When the outcome cannot be committed to the
ledger (the store is down, its disk full, a commit whose answer was lost), the upstream has
*already* applied the write: answering 503 would tell the client nothing happened, and a retry
would write it twice. So the recorder puts the outcome entries here, in one fsynced SQLite
transaction, answers the client with what the upstream did, and replays the rows into the
ledger once it commits again (:meth:`~middleware.audit.recorder.AuditRecorder.replay`). Every
row carries a gateway-made idempotency key (never a client's ``X-Request-Id``), and the
failed append used the same one, so a row whose first append did commit is not recorded twice.

The outbox is a file of its own, not a table of the ledger's store: it must take rows exactly
when that store cannot. Rows hold the entry as the ledger will hold it (evidence, salt, flags,
consent index), with the patient's pseudonym, or the patient reference when the pseudonym
store was down too (resolved on replay). Evidence names the patient and the request, as the
store's evidence table does: the file needs the store's protection (mode 0600, same host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Outbox", "OutboxRow"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One ledger entry waiting in the outbox. ``pseudonym`` is None for an entry that names
    no patient (``patient`` None too) or whose pseudonym was not known yet (``patient`` is the
    ``Patient/<id>`` it must be resolved from). ``id`` is 0 until stored."""

    request_id: str
    kind: int
    recorded_us: int
    salt: bytes
    evidence: bytes
    pseudonym: bytes | None
    patient: str | None
    consent: int | None
    flags: int
    idempotency_key: str
    id: int = 0


class Outbox(Protocol):
    """Where outcome entries wait (:class:`~middleware.storage.audit_outbox.SqliteOutbox`).

    :meth:`put` returns once every row is durable, or raises (all or none), and in the same
    transaction settles the intent ``settles`` names; :meth:`pending` lists the rows ready for
    the ledger, oldest first, with their ``id``; :meth:`remove` drops one the ledger now holds;
    :meth:`count` counts those rows (not the intents).

    An *intent* is written before a write is forwarded: the outcome rows of each way it can
    have ended (``variants``: ``applied``, ``absent``, ``unknown``), held, not pending, and the
    ``probe`` that tells them apart by asking the upstream. :meth:`settle` drops it once the
    real outcome is recorded; :meth:`resolve` makes one variant's rows pending (the others and
    the intent are dropped, in one transaction); :meth:`intents` lists the open ones.
    """

    async def put(self, rows: list[OutboxRow], *, settles: str | None = None) -> None: ...

    async def pending(self, limit: int = 1000) -> list[OutboxRow]: ...

    async def count(self) -> int: ...

    async def hold(self, intent: str, probe: str, variants: dict[str, list[OutboxRow]]) -> None: ...

    async def settle(self, intent: str) -> None: ...

    async def resolve(self, intent: str, variant: str) -> None: ...

    async def intents(self) -> list[tuple[str, str]]: ...

    async def remove(self, row_id: int) -> None: ...

    def close(self) -> None: ...
