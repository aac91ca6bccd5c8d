"""Gather what an export needs from a ledger store: the checkpoint, leaves, proofs, openings.

:func:`collect_export` reads, for the report's rows (audit index rows, fetched by the caller),
the latest signed checkpoint, every leaf hash up to its size (the proofs are against that one
checkpoint, RFC 9162 §2.1.3.1), the leaves of the exported entries, and each entry's opening
through ``opening_of`` (:meth:`~middleware.audit.evidence.EvidenceReader.opening`). For a
per-patient export it reads the patient's pseudonym chain (``store.chain``) and plans the
lines with :func:`~middleware.audit.export.plan_chain`: the period's chain entries (the
report's rows as ``row``, the others as ``other``) between the ``before`` and ``after``
boundaries. The format itself is :mod:`middleware.audit.export`'s; this module only reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from middleware.audit.evidence import Opening
from middleware.audit.export import (
    EntryOpening,
    ExportEntry,
    ExportHeader,
    Role,
    entries_for,
    plan_chain,
    row_columns,
)
from middleware.audit.row import AuditRow
from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import decode_leaf
from middleware.ledger.note import parse_note
from middleware.ledger.tree import MerkleLevels

__all__ = ["ExportSource", "ExportSpec", "collect_export"]

#: Leaves fetched in one read when the wanted indexes are this close together.
_GAP = 512


class ExportSource(Protocol):
    """What an export reads of a log store (:class:`~middleware.storage.ledger_base.LogStore`)."""

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None: ...

    async def leaves(self, start: int, end: int) -> list[bytes]: ...

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]: ...

    async def chain(self, pseudonym: bytes) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """What is exported: the ``report`` kind and its scope; ``pseudonym``: the patient's
    chain, for a per-patient export (None: no completeness proof)."""

    report: str
    patient: str | None = None
    agent: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    pseudonym: bytes | None = None


async def collect_export(
    store: ExportSource,
    spec: ExportSpec,
    rows: Sequence[AuditRow],
    opening_of: Callable[[int], Awaitable[Opening | None]],
) -> tuple[ExportHeader, Iterator[ExportEntry]]:
    """The header and the entry lines of an export of ``rows`` (see the module docstring).
    Raises :class:`LedgerError` when the log has no checkpoint yet."""
    stored = await store.checkpoint()
    if stored is None or stored.size == 0:
        raise LedgerError("the log has no signed checkpoint with entries yet")
    size = stored.size
    origin = parse_checkpoint(parse_note(stored.note).text).origin
    tree = MerkleLevels(await store.leaf_hashes(0, size))
    reported = {row.index: row for row in rows if 0 <= row.index < size}
    lines: list[tuple[Role, int]]
    if spec.pseudonym is not None:
        chain = [i for i in await store.chain(spec.pseudonym) if i < size]
        chain_leaves = await _leaves(store, chain)
        timed = [(i, decode_leaf(chain_leaves[i]).recorded_us) for i in chain]
        before, inside, after = plan_chain(timed, spec.since_us, spec.until_us)
        lines = [("before", before)] if before is not None else []
        lines += [("row" if i in reported else "other", i) for i in inside]
        lines += [("after", after)] if after is not None else []
    else:
        lines = [("row", i) for i in sorted(reported)]
    leaves = await _leaves(store, [i for _, i in lines])
    openings: dict[int, EntryOpening | None] = {}
    for role, index in lines:
        if role in ("row", "other"):
            found = await opening_of(index)
            openings[index] = (
                None if found is None else EntryOpening(found.salt, found.evidence, found.key)
            )
    header = ExportHeader(
        report=spec.report,
        checkpoint=stored.note,
        origin=origin,
        patient=spec.patient,
        agent=spec.agent,
        since_us=spec.since_us,
        until_us=spec.until_us,
        chain=spec.pseudonym,
    )
    columns = {i: row_columns(row) for i, row in reported.items()}
    entries = entries_for(
        lines, tree=tree, size=size, leaves=leaves, openings=openings, columns=columns
    )
    return header, entries


async def _leaves(store: ExportSource, indexes: Iterable[int]) -> dict[int, bytes]:
    """The leaves of ``indexes``, read in runs of nearby indexes."""
    wanted = sorted(set(indexes))
    out: dict[int, bytes] = {}
    start = 0
    while start < len(wanted):
        end = start
        while end + 1 < len(wanted) and wanted[end + 1] - wanted[end] <= _GAP:
            end += 1
        lo, hi = wanted[start], wanted[end] + 1
        read = await store.leaves(lo, hi)
        out.update((i, read[i - lo]) for i in wanted[start : end + 1])
        start = end + 1
    return out
