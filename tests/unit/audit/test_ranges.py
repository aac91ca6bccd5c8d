"""``consentry audit reindex`` and ``retention`` read the ledger range by range
(``middleware.audit.ranges``), never the whole log and its evidence at once, and still see
every entry."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit import cli_admin, cli_retention
from middleware.audit.ranges import read_ranges
from middleware.ledger.entry import Evidence
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.unit.audit.test_retention import NEW, OLD, filled  # noqa: F401  (the fixture)

STEP = 7


class ListStore:
    """Leaves ``n`` with evidence on the even ones; remembers the ranges asked for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.asked: list[tuple[int, int]] = []

    async def leaves(self, start: int, end: int) -> list[bytes]:
        self.asked.append((start, end))
        return [str(n).encode() for n in range(start, end)]

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        return {n: Evidence(b"s", str(n).encode()) for n in range(start, end) if n % 2 == 0}


@given(size=st.integers(0, 60), step=st.integers(1, 20))
async def test_read_ranges_covers_the_log_in_order_in_bounded_ranges(size: int, step: int) -> None:
    store = ListStore(size)
    leaves: list[bytes] = []
    evidence: dict[int, Evidence] = {}
    async for start, got, found in read_ranges(store, size, step):
        assert start == len(leaves)
        leaves += got
        evidence |= found
    assert leaves == [str(n).encode() for n in range(size)]
    assert sorted(evidence) == list(range(0, size, 2))
    assert all(end - start <= step for start, end in store.asked)


class CountingStore(SqliteLogStore):
    """A SQLite log store noting the widest range read."""

    widest = 0

    async def leaves(self, start: int, end: int) -> list[bytes]:
        CountingStore.widest = max(CountingStore.widest, end - start)
        return await super().leaves(start, end)

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]:
        CountingStore.widest = max(CountingStore.widest, end - start)
        return await super().evidence_range(start, end)


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both commands open a :class:`CountingStore` with ranges of STEP, and reading the
    whole log at once fails the test."""

    @asynccontextmanager
    async def opened(args: argparse.Namespace) -> AsyncIterator[LogStore]:
        store = await CountingStore.open(Path(args.store.removeprefix("sqlite:")))
        try:
            yield store
        finally:
            await store.close()

    async def whole_log(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the whole log at once")

    CountingStore.widest = 0
    for module in (cli_admin, cli_retention):
        monkeypatch.setattr(module, "opened", opened)
        monkeypatch.setattr(module, "_CHUNK", STEP)
        monkeypatch.setattr(module, "dump_log", whole_log, raising=False)


def _args(d: Path, **extra: object) -> argparse.Namespace:
    return argparse.Namespace(
        store=f"sqlite:{d / 'audit.db'}", schema="public", key_file=d / "ledger.key", **extra
    )


@pytest.mark.usefixtures("bounded")
def test_reindex_reads_in_ranges_and_indexes_every_entry(filled: Path) -> None:  # noqa: F811
    out = io.StringIO()
    assert cli_admin.reindex(_args(filled, batch=5), out) == 0
    report = json.loads(out.getvalue())
    assert (report["entries"], report["rows"]) == (OLD + NEW, OLD + NEW)
    assert 0 < CountingStore.widest <= STEP


@pytest.mark.usefixtures("bounded")
def test_retention_reads_in_ranges_and_finds_every_expired_entry(filled: Path) -> None:  # noqa: F811
    out = io.StringIO()
    args = _args(filled, config=None, apply=False, operator="dpo")
    assert cli_retention.retention(args, out) == 0
    assert json.loads(out.getvalue())["total"] == OLD
    assert 0 < CountingStore.widest <= STEP
