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

Several gateway processes may share one outbox file. Each intent is *owned* by the process
that wrote it, which holds a :class:`Lease` in the file (renewed with each intent it writes
and each reconcile it runs): another process reconciles the intent only once its owner is
gone (the lease expired, or the owner's process no longer exists on this host), never a write
still in flight. Each row carries a MAC under a key derived from the ledger key
(:func:`~middleware.ledger.signing.keyed_digest`), checked before replay: a row written or
changed by anything but a gateway holding that key, or of a kind the outbox never holds, is
moved to a dead-letter table (logged), never replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Lease", "OpenIntent", "Outbox", "OutboxRow"]


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
    mac: bytes = b""


@dataclass(frozen=True, slots=True)
class Lease:
    """A gateway process's claim on its intents: ``owner`` is a random id drawn at its start;
    ``host``, ``pid`` and ``started`` (the process's start time as the kernel counts it, ""
    when unknown) tell a process on the same host whether that owner still runs;
    ``expires_us`` (microseconds since the epoch) is when the claim lapses unless renewed."""

    owner: str
    host: str
    pid: int
    started: str
    expires_us: int


@dataclass(frozen=True, slots=True)
class OpenIntent:
    """An intent not yet settled or resolved: its ``probe``, its ``owner`` and that owner's
    ``lease`` (None when it has none: an intent from before owners, or a lease dropped),
    when it was written (``created_us``, 0 when unknown) and how many reconciles could not
    decide it (``attempts``)."""

    intent: str
    probe: str
    owner: str | None
    lease: Lease | None
    created_us: int
    attempts: int


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
    the intent are dropped, in one transaction); :meth:`intents` lists the open ones
    (:meth:`open_intents` with their owner, lease, age and attempts). :meth:`renew` writes a
    process's lease (``hold`` renews the one it is given in its transaction);
    :meth:`attempted` counts one undecided reconcile of an intent; :meth:`dead_letter` moves a
    row that must not be replayed out of the queue, with a reason.
    """

    async def put(self, rows: list[OutboxRow], *, settles: str | None = None) -> None: ...

    async def pending(self, limit: int = 1000) -> list[OutboxRow]: ...

    async def count(self) -> int: ...

    async def hold(
        self,
        intent: str,
        probe: str,
        variants: dict[str, list[OutboxRow]],
        *,
        lease: Lease | None = None,
        created_us: int = 0,
    ) -> None: ...

    async def renew(self, lease: Lease) -> None: ...

    async def open_intents(self) -> list[OpenIntent]: ...

    async def attempted(self, intent: str) -> None: ...

    async def dead_letter(self, row_id: int, reason: str) -> None: ...

    async def dead_letters(self) -> int: ...

    async def settle(self, intent: str) -> None: ...

    async def resolve(self, intent: str, variant: str) -> None: ...

    async def intents(self) -> list[tuple[str, str]]: ...

    async def remove(self, row_id: int) -> None: ...

    def close(self) -> None: ...
