"""Wiring of the Bulk Data ``$export`` of patient data (:mod:`middleware.pipeline.export`, its
status and file endpoints :mod:`middleware.proxy.export_http`).

Jobs run on the audit export's job machine (:class:`~middleware.audit.bulk.ExportJobs`) with a
board of their own (:mod:`middleware.storage.exports_open`), owners as keyed digests under the
ledger key's ``patient-exports`` key: beside a SQLite store, ``<store>.patient-exports``
(shared by the worker processes, the files' lines overwritten when deleted); with a PostgreSQL
store, tables in its schema (shared by every replica: any replica answers status, download and
DELETE); with a memory store, in the process's memory.
"""

from __future__ import annotations

from collections.abc import Callable

from middleware.audit.bulk import ExportJobs, Limits
from middleware.ledger.signing import derive_box_key
from middleware.pipeline.export import Exports
from middleware.pipeline.flow import Flow
from middleware.pipeline.write_forward import Recorder
from middleware.settings import Settings
from middleware.storage.exports_open import open_export_board

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
    schema: str = "public",
) -> Exports:
    """The ``$export`` half over ``flow``, recording each judged page through ``record``;
    ``secret`` is the ledger key file's data secret; ``schema``: a PostgreSQL store's."""
    key = derive_box_key(secret, OWNER_PURPOSE)
    board = open_export_board(settings.store, key, kind="patient", schema=schema)
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
