"""The app's ledger service: the key file, lazy opening, and failing closed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from middleware.errors import ServiceUnavailable, SettingsError
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import VerificationError
from middleware.ledger.keyfile import load_or_create_signing_key
from middleware.ledger.leaf import EntryKind
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore


def test_key_file_is_created_owner_only_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    created = load_or_create_signing_key(path, "gw.example/ledger")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_signing_key(path, "ignored").vkey() == created.vkey()


def test_malformed_key_file_stops_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    path.write_text("not a key\n")
    with pytest.raises(SettingsError, match="does not hold a signing key"):
        load_or_create_signing_key(path, "x")


async def test_store_that_cannot_open_fails_closed_then_recovers() -> None:
    attempts = 0
    store = await MemoryLogStore.open()

    async def flaky_open() -> LogStore:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise VerificationError("forged log", expected=b"a", computed=b"b")
        return store

    service = LedgerService(flaky_open, SigningKey.generate("t"), origin="t")
    entry = NewEntry.create(EntryKind.ADMIN, b"{}", recorded_us=1_700_000_000_000_000)
    with pytest.raises(ServiceUnavailable):
        await service.append(entry)
    assert await service.append(entry) == 0
    assert await store.size() == 1
    await service.aclose()
