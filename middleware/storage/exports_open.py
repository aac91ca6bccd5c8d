"""The bulk export board a ``store`` setting's gateway shares (:class:`~middleware.storage.
exports_base.ExportBoard`), one place for both kinds of export.

- ``sqlite:PATH``: a file beside the store (``PATH.exports`` for AuditEvent exports,
  ``PATH.patient-exports`` for patient data), shared by the worker processes of one machine
  (:mod:`~middleware.storage.exports_sqlite`);
- ``postgresql://...``: tables in the store's schema, shared by every replica
  (:mod:`~middleware.storage.exports_postgres`);
- ``memory:``: none; jobs stay in the one process.
"""

from __future__ import annotations

from typing import Final

from middleware.storage.exports_base import ExportBoard
from middleware.storage.exports_postgres import KINDS, PostgresExportBoard
from middleware.storage.exports_sqlite import SqliteExportBoard
from middleware.storage.sidecar import beside

__all__ = ["open_export_board"]

#: The SQLite file beside the store, by kind of export.
_SUFFIX: Final = {"audit": ".exports", "patient": ".patient-exports"}


def open_export_board(
    store: str, key: bytes, *, kind: str, schema: str = "public"
) -> ExportBoard | None:
    """The ``kind`` (:data:`~middleware.storage.exports_postgres.KINDS`) export board of the
    gateway whose ``store`` setting is ``store`` (module docstring), None when it has none.
    ``key``: 32 bytes, the owners' digest key (``derive_box_key(ledger data secret, the
    kind's owner purpose)``). ``schema``: where a PostgreSQL store's tables are (the log
    store's)."""
    if kind not in KINDS:
        raise ValueError(f"export kind {kind!r} is not one of {sorted(KINDS)}")
    if store.startswith(("postgresql://", "postgres://")):
        return PostgresExportBoard(store, key, kind=kind, schema=schema)
    if store.startswith("sqlite:"):
        return SqliteExportBoard(beside(store.removeprefix("sqlite:"), _SUFFIX[kind]), key)
    return None
