"""One part of an export made in parts (:mod:`middleware.audit.export_parallel`): the lines
of a slice of recorded time, made by a forked worker (:func:`part_worker`, which writes them
to the file the command opened for it, without a name, and sends back what :data:`Outcome`
says) or by the command itself (:func:`make_part`, straight into the output). A worker dies
with the command (``export_signals.die_with_parent``).

A part opens the store itself, read only (``open_log_store(replay=False)``), reads its
slice's index rows and collects their lines against the snapshot and the tree it inherited
(:class:`Shared`; ``export_collect.collect_export``, which checks every leaf it reads as for
a sequential export), then encodes them as the sequential writer does
(``export_write.write_entries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import BinaryIO

from middleware.audit.cli_common import all_rows
from middleware.audit.export import ExportEntry, ExportHeader
from middleware.audit.export_collect import ExportSpec, SnapshotView, collect_export
from middleware.audit.export_signals import die_with_parent
from middleware.audit.export_write import write_entries
from middleware.audit.proofs import ProofMaker
from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage.ledger_open import open_log_store

__all__ = ["Outcome", "PartsJob", "Shared", "Slice", "make_part", "part_worker"]

#: A slice of recorded time: ``(since_us, until_us)``, inclusive; None: open.
Slice = tuple[int | None, int | None]
#: A part's outcome as a worker sends it: ``(rows read, lines written, lowest index,
#: highest index)`` (-1, -1: no row), or None when it failed.
Outcome = tuple[int, int, int, int] | None


@dataclass(frozen=True, slots=True)
class PartsJob:
    """What every part shares: the store (``url``, ``schema``), the index ``query`` the export
    stands for (no patient: a patient's export proves its chain, which is not cut), the
    file's ``fmt`` (``"ndjson"`` or ``"csv"``), its ``spec`` and the evidence ``wrap_key``."""

    url: str
    schema: str
    query: AuditQuery
    fmt: str
    spec: ExportSpec
    wrap_key: bytes


@dataclass(frozen=True, slots=True)
class Shared:
    """What a worker inherits by fork: the job, the snapshot and the checked tree."""

    job: PartsJob
    view: SnapshotView
    tree: ProofMaker


def part_worker(shared: Shared, period: Slice, fd: int, send: Connection, parent: int) -> None:
    """A worker's whole life (forked by ``parent``): its part written to the file open at
    ``fd`` (inherited: the command reads it when told), its outcome sent. Any failure is
    sent as None, without a trace on standard error (the sequential path then says what it
    is, and a trace could show a row's values)."""
    die_with_parent(parent)
    # The collector would walk the heap inherited from the parent (copy on write) to find no
    # cycle: the sequential export pauses it too (cli_reports._collector_paused).
    gc.freeze()
    gc.disable()
    outcome: Outcome = None
    # Any failure is reported as None; an interrupt ends the worker anyway.
    with contextlib.suppress(BaseException), open(fd, "wb", closefd=False) as sink:
        outcome = make_part(shared, period, sink)
    with contextlib.suppress(OSError):
        send.send(outcome)
    send.close()


def make_part(shared: Shared, period: Slice, sink: BinaryIO) -> Outcome:
    """The slice's lines written to ``sink``; what :data:`Outcome` says of them."""
    job, view = shared.job, shared.view
    rows, header, entries = asyncio.run(_collect_part(shared, period))
    lines = write_entries(header, entries, sink, job.fmt)
    # A superset of the lines' indexes (the rows of the proved tree): parts whose rows do not
    # overlap have lines that do not.
    indexes = [r.index for r in rows if 0 <= r.index < view.size]
    return len(rows), lines, min(indexes, default=-1), max(indexes, default=-1)


async def _collect_part(
    shared: Shared, period: Slice
) -> tuple[list[AuditRow], ExportHeader, Iterator[ExportEntry]]:
    """The slice's index rows and lines (made lazily from what was read: the store is closed
    before they are)."""
    job = shared.job
    store = await open_log_store(job.url, schema=job.schema, replay=False)
    try:
        since, until = period
        rows = await all_rows(store, replace(job.query, since_us=since, until_us=until))
        header, entries = await collect_export(
            shared.view,
            job.spec,
            rows,
            wrapped_keys=store.audit_keys_get,
            wrap_key=job.wrap_key,
            tree=shared.tree,
        )
    finally:
        await store.close()
    return rows, header, entries
