"""Open the log store a ``store`` setting names."""

from __future__ import annotations

from pathlib import Path

from middleware.errors import SettingsError
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore

__all__ = ["open_log_store"]


async def open_log_store(url: str, *, schema: str = "public", replay: bool = True) -> LogStore:
    """``memory:``, ``sqlite:PATH`` (relative to the working directory) or a PostgreSQL DSN
    (``postgresql://`` or ``postgres://``; tables in ``schema``). The store is replayed
    before it is returned (``rebuild_state``), so a forged log refuses to open; unless
    ``replay`` is false, which only ``consentry audit export`` asks (``SqliteLogStore.open``:
    the store then refuses every write, ``storage.ledger_unreplayed``; a memory store is
    always replayed)."""
    if url == "memory:":
        return await MemoryLogStore.open()
    if url.startswith("sqlite:"):
        return await SqliteLogStore.open(Path(url.removeprefix("sqlite:")), replay=replay)
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresLogStore.open(url, schema=schema, replay=replay)
    raise SettingsError(f"store: unsupported log store {url!r}")
