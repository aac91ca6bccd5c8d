"""Open the consent store a ``store`` setting names (the same URL as the log store's)."""

from __future__ import annotations

from pathlib import Path

from middleware.errors import SettingsError
from middleware.storage.consent_base import ConsentStore
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.consent_sqlite import SqliteConsentStore

__all__ = ["open_consent_store"]


async def open_consent_store(
    url: str, *, lookup_key: bytes, schema: str = "public"
) -> ConsentStore:
    """``memory:`` (a fresh, private store), ``sqlite:PATH`` (relative to the working
    directory; normally the ledger's own file) or a PostgreSQL DSN (tables in ``schema``).
    ``lookup_key`` (32 bytes) is ``derive_box_key(ledger key, LOOKUP_PURPOSE)``: the pseudonym
    table's rows are found by a keyed digest of the patient reference under it."""
    if url == "memory:":
        return MemoryConsentStore(lookup_key=lookup_key)
    if url.startswith("sqlite:"):
        return await SqliteConsentStore.open(
            Path(url.removeprefix("sqlite:")), lookup_key=lookup_key
        )
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresConsentStore.open(url, lookup_key=lookup_key, schema=schema)
    raise SettingsError(f"store: unsupported consent store {url!r}")
