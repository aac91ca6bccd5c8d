"""The guard of stores opened without their replay covers every write: each ``LogStore``
method is classified as a read or a write (a new one must be), and both SQL stores refuse
each write through the one guard (``storage.ledger_unreplayed``)."""

from __future__ import annotations

import inspect

import pytest

from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.storage.ledger_unreplayed import READS, WRITES


def _protocol_methods() -> set[str]:
    return {
        name
        for name, member in vars(LogStore).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }


def _public_coroutines(store: type) -> set[str]:
    """The public coroutine methods ``store`` and its base classes define (the index bases
    included); ``open``, a classmethod, makes the store rather than writing through one."""
    return {
        name
        for cls in store.__mro__
        if cls is not object
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }


def test_every_log_store_method_is_a_read_or_a_write() -> None:
    assert not READS & WRITES
    assert _protocol_methods() == READS | WRITES


@pytest.mark.parametrize("store", [SqliteLogStore, PostgresLogStore], ids=["sqlite", "postgres"])
def test_every_public_coroutine_of_a_sql_store_is_a_read_or_a_write(store: type) -> None:
    """A writer added to a concrete store (or its index base) but not to the protocol would
    escape the guard: it must be classified too."""
    assert _public_coroutines(store) <= READS | WRITES


@pytest.mark.parametrize("store", [SqliteLogStore, PostgresLogStore], ids=["sqlite", "postgres"])
def test_each_write_of_a_sql_store_goes_through_the_guard(store: type) -> None:
    for name in WRITES:
        method = getattr(store, name)
        assert method.__code__.co_qualname == "_guarded.<locals>.guarded", name
    for name in READS:
        assert getattr(store, name).__code__.co_qualname != "_guarded.<locals>.guarded", name
