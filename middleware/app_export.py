"""Wiring of the Bulk Data ``$export`` of patient data (:mod:`middleware.pipeline.export`, its
status and file endpoints :mod:`middleware.proxy.export_http`).

Jobs run on the audit export's job machine (:class:`~middleware.audit.bulk.ExportJobs`) with a
board of their own: beside a SQLite store, ``<store>.patient-exports`` (shared by the worker
processes, owners as keyed digests under the ledger key's ``patient-exports`` key, the
files' lines overwritten when deleted); with any other store, in each process's memory (only
the process that took the kick-off serves the job).
"""

from __future__ import annotations

from collections.abc import Callable

from middleware.audit.bulk import ExportJobs, Limits
from middleware.ledger.signing import derive_box_key
from middleware.pipeline.export import Exports
from middleware.pipeline.flow import Flow
from middleware.pipeline.write_forward import Recorder
from middleware.settings import Settings
from middleware.storage.exports_sqlite import SqliteExportBoard
from middleware.storage.sidecar import beside

__all__ = ["OWNER_PURPOSE", "build_exports"]

#: What the job owners' digest key is derived for (not the audit export's: separate boards).
OWNER_PURPOSE = "patient-exports"


def build_exports(
    settings: Settings,
    flow: Flow,
    record: Recorder,
    *,
    secret: bytes,
    wall_clock: Callable[[], float],
) -> Exports:
    """The ``$export`` half over ``flow``, recording each judged page through ``record``;
    ``secret`` is the ledger key file's data secret."""
    board = None
    if settings.store.startswith("sqlite:"):
        path = beside(settings.store.removeprefix("sqlite:"), ".patient-exports")
        board = SqliteExportBoard(path, derive_box_key(secret, OWNER_PURPOSE))
    jobs = ExportJobs(
        clock=wall_clock,
        max_running=settings.export_max_running,
        max_events=settings.export_max_resources,
        events_per_file=settings.export_resources_per_file,
        keep_seconds=settings.export_keep_seconds,
        board=board,
        limits=Limits(
            max_bytes=settings.export_max_bytes,
            bytes_per_file=settings.export_bytes_per_file,
            max_seconds=settings.export_max_seconds,
            max_per_owner=settings.export_max_running_per_owner,
            narrow="_since or _type",
        ),
    )
    return Exports(
        flow,
        record,
        jobs,
        page_count=settings.export_page_count,
        max_members=settings.export_max_group_members,
    )
