"""The break-the-glass session board a ``store`` setting's gateway shares
(:class:`~middleware.pipeline.breakglass.SessionBoard`).

- ``sqlite:PATH``: a file beside the store, shared by the worker processes of one machine
  (:mod:`~middleware.storage.breakglass_sqlite`);
- ``postgresql://...``: a table in the log store's schema, shared by every replica
  (:mod:`~middleware.storage.breakglass_postgres`);
- ``memory:``: none; sessions stay in the one process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from middleware.storage.breakglass_postgres import PostgresSessionBoard
from middleware.storage.breakglass_sqlite import SqliteSessionBoard, sessions_path
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore

__all__ = ["session_board", "store_schema"]


def store_schema(store: LogStore) -> str:
    """The schema ``store``'s tables live in: a PostgreSQL log store's own, else ``public``
    (the schema a gateway opens its ``store`` setting in)."""
    return store.schema if isinstance(store, PostgresLogStore) else "public"


def session_board(
    store: str, key: bytes, *, log_store: Callable[[], Awaitable[LogStore]] | None = None
) -> SqliteSessionBoard | PostgresSessionBoard | None:
    """The board of the gateway whose ``store`` setting is ``store`` (module docstring); None
    when it has none. ``key``: 32 bytes, ``derive_box_key(ledger data secret,
    BOARD_PURPOSE)``. ``log_store``: the gateway's log store (opened on first need), whose
    schema the PostgreSQL board's table joins; ``public`` without it."""
    if store.startswith(("postgresql://", "postgres://")):

        async def schema() -> str:
            return "public" if log_store is None else store_schema(await log_store())

        return PostgresSessionBoard(store, key, schema=schema)
    path = sessions_path(store)
    return None if path is None else SqliteSessionBoard(path, key)
