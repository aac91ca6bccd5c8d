"""Open the store a ``store`` setting names."""

from __future__ import annotations

from pathlib import Path

from middleware.errors import SettingsError
from middleware.storage.base import Store
from middleware.storage.memory import MemoryStore
from middleware.storage.sqlite import SqliteStore

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """``sqlite:PATH`` (relative to the working directory) or ``memory:``."""
    if url == "memory:":
        return MemoryStore()
    if url.startswith("sqlite:"):
        return SqliteStore(Path(url.removeprefix("sqlite:")))
    raise SettingsError(f"store: unsupported store {url!r}")
