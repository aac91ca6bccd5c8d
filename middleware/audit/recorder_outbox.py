"""The recorder's outbox path: a write's outcome kept in the outbox when the ledger refuses it,
and the replay that moves it into the ledger later.

A write's ``outcome`` is recorded after the upstream applied the write, so it must not be lost
when the ledger refuses it: :class:`OutboxRecorder` (a layer of
:class:`~middleware.audit.recorder.AuditRecorder`, over the direct path of
:mod:`middleware.audit.recorder_direct`) appends it under the idempotency keys of its intent
and, if the ledger or the pseudonym store refuses, makes the same entries durable in the
:class:`~middleware.audit.outbox.Outbox` instead. A row keeps its facts sealed when the
patient's key was at hand, else unsealed (the row's MAC, :func:`row_mac`, covers them either
way); :meth:`OutboxRecorder.replay` seals and appends them, dead-lettering a row whose MAC does
not verify or whose kind the outbox never holds.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from dataclasses import replace

from middleware.audit.evidence import (
    NO_PATIENT,
    Opening,
    is_sealed,
    open_entry,
    seal_facts,
)
from middleware.audit.facts import AuditFacts, decode_facts, encode_facts, row_of
from middleware.audit.outbox import Outbox, OutboxRow
from middleware.audit.plan import Planned
from middleware.audit.recorder_direct import DirectRecorder, unavailable
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind, new_salt
from middleware.ledger.signing import evidence_key, keyed_digest
from middleware.logging import get_logger

__all__ = ["OutboxRecorder", "row_mac"]


class OutboxRecorder(DirectRecorder):
    """The outcome's outbox path and the replay (module docstring); state set by
    ``AuditRecorder.__init__``."""

    outbox: Outbox | None
    _row_key: bytes
    _replay_lock: asyncio.Lock
    # Rows kept since the last replay (rows from an earlier run: start-up replays them).
    _deferred: bool
    _replaying: asyncio.Task[int] | None
    dead_lettered: int

    async def _record_outcome(
        self,
        plans: list[Planned],
        rid: str,
        outbox: Outbox,
        intent: str | None,
    ) -> list[int]:
        """A write's outcome: appended under the idempotency keys of its ``intent`` (else
        fresh ones); if the ledger (or the pseudonym store) refuses, the same entries go to
        the outbox and ``[]`` is returned. Raises ServiceUnavailable only when the outbox
        cannot take them either. The intent is settled either way."""
        batch = intent or uuid.uuid4().hex
        rows = await self._rows(plans, rid, batch)
        if all(row.patient is None for row in rows):
            try:
                # Equal lengths by construction: strict= mutants are equivalent.
                entries = [
                    await self._entry(row, row.pseudonym, p.facts)
                    for row, p in zip(rows, plans, strict=True)
                ]
                indexes = await self._append_all(entries, rid)
            except ServiceUnavailable:
                pass  # to the outbox, under the same keys (a lost commit is not doubled)
            else:
                self._kick()
                if intent is not None:
                    try:
                        await outbox.settle(intent)
                    # Harmless: its variants share these keys, so a replay adds nothing.
                    except Exception as exc:  # noqa: BLE001
                        # equivalent mutants (name): our log lines do not render a logger name
                        get_logger("consentry.audit").warning(
                            "audit intent not settled",
                            request_id=rid,
                            error_type=type(exc).__name__,
                        )
                return indexes
        try:
            await outbox.put(rows, settles=intent)
        except Exception as exc:  # any failure of the outbox's own storage: nothing is durable
            raise unavailable(rid, exc) from exc
        self._deferred = True
        # equivalent mutants (name): our log lines do not render a logger name
        get_logger("consentry.audit").warning(
            "write outcome kept in the audit outbox", request_id=rid, entries=len(rows)
        )
        return []

    async def _rows(self, plans: list[Planned], rid: str, batch: str) -> list[OutboxRow]:
        """The outbox rows of ``plans`` under idempotency keys of ``batch``. A pseudonym or key
        the stores cannot give now is left for replay: the row keeps the ``Patient/<id>`` and
        its facts unsealed."""
        patients = [p.facts.patient for p in plans if p.facts.patient]
        try:
            pseudonyms = await self._pseudonyms(rid, patients)
        except ServiceUnavailable:
            pseudonyms = {}  # resolved on replay, from the patient reference kept in the row
        # equivalent mutant (always .get): pseudonyms.get(None) is None too
        named = [
            None if p.facts.patient is None else pseudonyms.get(p.facts.patient) for p in plans
        ]
        try:
            # Equal lengths by construction: strict= mutants are equivalent.
            keys = await self._keys(
                rid, [n for n, p in zip(named, plans, strict=True) if n or not p.facts.patient]
            )
        except ServiceUnavailable:
            keys = {}  # sealed on replay
        rows = []
        # Equal lengths by construction: strict= mutants are equivalent.
        for n, (p, pseudonym) in enumerate(zip(plans, named, strict=True)):
            salt = new_salt()
            facts = encode_facts(p.facts)
            # equivalent mutant (`or True`): one exchange's plans all name a patient or none, so
            # NO_PATIENT's key is never fetched beside a patient missing its pseudonym
            key = keys.get(pseudonym or NO_PATIENT) if pseudonym or not p.facts.patient else None
            rows.append(
                OutboxRow(
                    request_id=rid,
                    kind=int(p.kind),
                    recorded_us=p.facts.recorded_us,
                    salt=salt,
                    evidence=facts if key is None else seal_facts(key, salt, facts),
                    pseudonym=pseudonym,
                    patient=p.facts.patient if pseudonym is None else None,
                    consent=p.consent,
                    flags=int(p.flags),
                    idempotency_key=f"outcome:{batch}:{n}",
                )
            )
        return [replace(row, mac=row_mac(self._row_key, row)) for row in rows]

    async def _entry(
        self, row: OutboxRow, pseudonym: bytes | None, made_of: AuditFacts | None = None
    ) -> NewEntry:
        """The ledger entry an outbox row stands for (its salt and key kept: the same entry),
        its facts sealed now if they were not, with its audit-index row. Evidence from before
        sealed facts (a JSON Bundle) is appended as it is, without a row. ``made_of``: the
        facts the row was just made of (the outcome's own append), so sealed evidence is not
        opened again to learn them. Raises ServiceUnavailable when the key cannot be had,
        ValueError for a row that does not open or decode."""
        evidence = row.evidence
        audit_row = None
        if not evidence.startswith(b"{"):
            if made_of is not None and is_sealed(evidence):
                facts = made_of  # sealed from these facts a moment ago (_rows)
            else:
                key = (await self._keys(row.request_id, [pseudonym]))[pseudonym or NO_PATIENT]
                if is_sealed(evidence):
                    # equivalent mutant (salt None): open_entry reads the key, not the salt
                    facts = open_entry(Opening(row.salt, evidence, evidence_key(key, row.salt)))
                else:
                    facts = decode_facts(evidence)
                    evidence = seal_facts(key, row.salt, evidence)
            audit_row = row_of(facts, kind=row.kind, flags=row.flags, pseudonym=pseudonym)
        return NewEntry(
            kind=EntryKind(row.kind),
            recorded_us=row.recorded_us,
            salt=row.salt,
            evidence=evidence,
            pseudonym=pseudonym,
            consent=row.consent,
            flags=EntryFlag(row.flags),
            idempotency_key=row.idempotency_key,
            row=audit_row,
        )

    async def replay(self) -> int:
        """Append the outbox's rows to the ledger, oldest first, dropping each once committed;
        stop at the first that fails (logged: request id and error type). Return how many
        rows still wait (0 without an outbox; -1 when the outbox itself cannot be read). Safe
        to call concurrently and repeatedly."""
        outbox = self.outbox
        if outbox is None:
            return 0
        async with self._replay_lock:
            try:
                remaining = await self._replay(outbox)
            # Readiness and start-up call this: whatever failed (the ledger, the pseudonym
            # store, the outbox's own file, a row that no longer decodes) is reported as rows
            # still waiting, never raised.
            except Exception as exc:  # noqa: BLE001
                # equivalent mutants (name): our log lines do not render a logger name
                get_logger("consentry.audit").warning(
                    "audit outbox replay stopped", error_type=type(exc).__name__
                )
                remaining = -1
        self._deferred = remaining != 0
        return remaining

    async def _replay(self, outbox: Outbox) -> int:
        for row in await outbox.pending():
            refused = self._refusal(row)
            if refused is not None:
                await self._dead_letter(outbox, row, refused)
                continue
            try:
                pseudonym = row.pseudonym
                if pseudonym is None and row.patient is not None:
                    found = await self._pseudonyms(row.request_id, [row.patient])
                    pseudonym = found[row.patient]
                entry = await self._entry(row, pseudonym)
            except ServiceUnavailable:
                break  # the pseudonym store still refuses: the rows wait for the next replay
            except (ValueError, TypeError):
                await self._dead_letter(outbox, row, "malformed")
                continue
            try:
                await self._ledger.append(entry)
            except ServiceUnavailable:
                break  # the stores still refuse: the rows wait for the next replay
            await outbox.remove(row.id)
        return await outbox.count()

    def _refusal(self, row: OutboxRow) -> str | None:
        """Why ``row`` must not be replayed (None: it may): a MAC that does not verify (the
        row was not written by a gateway holding the ledger key, or was changed since), or a
        kind the outbox never holds (only a write's outcome waits there)."""
        if not hmac.compare_digest(row.mac, row_mac(self._row_key, row)):
            return "mac"
        if row.kind != EntryKind.ACCESS_OUTCOME:
            return "kind"
        return None

    async def _dead_letter(self, outbox: Outbox, row: OutboxRow, reason: str) -> None:
        """Move ``row`` aside, never to be replayed; logged (request id and reason only)."""
        await outbox.dead_letter(row.id, reason)
        self.dead_lettered += 1
        # equivalent mutants (name): our log lines do not render a logger name
        get_logger("consentry.audit").error(
            "audit outbox row dead-lettered", request_id=row.request_id, reason=reason
        )

    def _kick(self) -> None:
        """After the ledger committed: replay the outbox in the background if rows may wait."""
        if self._deferred and (self._replaying is None or self._replaying.done()):
            self._replaying = asyncio.get_running_loop().create_task(self.replay())


def row_mac(key: bytes, row: OutboxRow) -> bytes:
    """The MAC of everything of ``row`` that becomes the ledger entry (not its id, nor the
    intent and variant it is held under: those change as it is resolved)."""

    def optional(value: bytes | str | int | None) -> bytes:
        # None and an empty value must differ.
        if value is None:
            return b""
        return b"=" + (value if isinstance(value, bytes) else str(value).encode())

    return keyed_digest(
        key,
        [
            b"consentry/outbox-row/v1",
            row.request_id.encode(),
            str(row.kind).encode(),
            str(row.recorded_us).encode(),
            row.salt,
            row.evidence,
            optional(row.pseudonym),
            optional(row.patient),
            optional(row.consent),
            str(row.flags).encode(),
            row.idempotency_key.encode(),
        ],
    )
