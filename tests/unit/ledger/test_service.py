"""The app's ledger service: the key file, lazy opening, and failing closed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from middleware.errors import ServiceUnavailable, SettingsError
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import VerificationError
from middleware.ledger.keyfile import (
    generate_ledger_key,
    load_or_create_ledger_key,
    new_ledger_key,
    read_ledger_key,
    save_new_ledger_key,
)
from middleware.ledger.leaf import EntryKind
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore


def test_key_file_is_created_owner_only_with_its_origin_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    created = load_or_create_ledger_key(path, configured="", default="gw.example/ledger")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[1] == "origin: gw.example/ledger"
    again = load_or_create_ledger_key(path, configured="", default="127.0.0.1:9/fhir/ledger")
    assert again == created  # the stored origin, not the one derived now
    assert (again.origin, again.stated) == ("gw.example/ledger", True)


def test_a_new_key_file_takes_the_configured_origin(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    created = load_or_create_ledger_key(path, configured="gw.example/ledger", default="derived")
    assert read_ledger_key(path).origin == created.origin == "gw.example/ledger"


def test_a_configured_origin_other_than_the_key_files_stops_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    generate_ledger_key(path, "gw.example/ledger")
    with pytest.raises(SettingsError) as stopped:
        load_or_create_ledger_key(path, configured="other.example/ledger", default="derived")
    assert "'other.example/ledger'" in str(stopped.value)
    assert "'gw.example/ledger'" in str(stopped.value)


def test_a_one_line_key_file_of_an_earlier_version_is_for_its_key_name(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    key = SigningKey.generate("old.example/ledger")
    path.write_text(key.skey() + "\n")
    loaded = load_or_create_ledger_key(path, configured="", default="derived")
    assert (loaded.key, loaded.origin, loaded.stated) == (key, "old.example/ledger", False)
    # Its log may carry another origin: the setting names it.
    named = load_or_create_ledger_key(path, configured="host:8080/fhir/ledger", default="x")
    assert (named.key, named.origin) == (key, "host:8080/fhir/ledger")


@pytest.mark.parametrize(
    "text",
    ["not a key\n", "", "{skey}\nnot an origin line\n", "{skey}\norigin: \n"],
    ids=["not-a-key", "empty", "unknown-line", "empty-origin"],
)
def test_malformed_key_file_stops_the_gateway(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ledger.key"
    path.write_text(text.format(skey=SigningKey.generate("x").skey()))
    with pytest.raises(SettingsError, match="does not hold a signing key"):
        load_or_create_ledger_key(path, configured="", default="x")


def test_a_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    first = generate_ledger_key(path, "gw.example/ledger", name="gw-key")
    assert first.key.name == "gw-key"
    with pytest.raises(FileExistsError):
        generate_ledger_key(path, "gw.example/ledger")
    assert read_ledger_key(path) == first


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


def test_a_new_key_is_written_only_when_saved(tmp_path: Path) -> None:
    """The gateway asks for a key before its store is open and writes it only once the
    store accepted it: until then nothing is on disk."""
    path = tmp_path / "ledger.key"
    ledger_key, new = new_ledger_key(path, configured="", default="gw.example/ledger")
    assert new
    assert not path.exists()
    save_new_ledger_key(path, ledger_key)
    assert read_ledger_key(path) == ledger_key
    again, new = new_ledger_key(path, configured="", default="127.0.0.1:9/fhir/ledger")
    assert (again, new) == (ledger_key, False)


def test_a_key_file_another_process_wrote_first_wins(tmp_path: Path) -> None:
    """Two processes starting at once each make a new key; the one that writes second must
    not sign the log with a key the file does not hold (nor crash): it stops, saying so,
    unless the file holds its own key."""
    path = tmp_path / "ledger.key"
    mine, _ = new_ledger_key(path, configured="", default="gw.example/ledger")
    theirs, _ = new_ledger_key(path, configured="", default="gw.example/ledger")
    save_new_ledger_key(path, theirs)
    with pytest.raises(SettingsError, match="created by another process"):
        save_new_ledger_key(path, mine)
    save_new_ledger_key(path, theirs)  # the same key: nothing to do
    assert read_ledger_key(path) == theirs
