"""The consent announcements file (storage.consent_seq): what a SQLite log store writes in it,
when, and what a process that cannot use it, or finds it replaced, does."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.refused import EntriesRefused
from middleware.ledger.writer import LedgerWriter
from middleware.storage.consent_seq import ConsentSeq
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import KEY, PSEUDONYMS, SIGN, entry


def consent_entry(n: int, *, revoke: bool = False, key: str | None = None) -> NewEntry:
    kind = EntryKind.CONSENT_REVOKE if revoke else EntryKind.CONSENT
    return entry(n, pseudonym=PSEUDONYMS[0], key=key, kind=kind)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteLogStore]:
    opened = await SqliteLogStore.open(tmp_path / "c.db")
    yield opened
    await opened.close()


def other_process(store: SqliteLogStore) -> ConsentSeq:
    """The word as another process maps it: its own file descriptor and mapping."""
    return ConsentSeq(store.path)


async def test_the_file_sits_beside_the_store_and_starts_with_nothing_announced(
    store: SqliteLogStore,
) -> None:
    seq = other_process(store)
    assert seq.path == store.path.with_name("c.db.consent-seq")
    assert seq.announced() == 0
    assert seq.path.stat().st_mode & 0o777 == 0o600
    seq.close()


@pytest.mark.parametrize("revoke", [False, True], ids=["consent", "consent-revoke"])
async def test_a_batch_with_consent_entries_announces_the_latest_ones_mark(
    store: SqliteLogStore, revoke: bool
) -> None:
    seq = other_process(store)
    results = await store.append(
        [entry(0), consent_entry(1, revoke=revoke), entry(2), consent_entry(3), entry(4)],
        sign=SIGN,
    )
    assert seq.announced() == results[3].index + 1 == 4
    seq.close()


async def test_batches_without_consent_entries_announce_nothing(store: SqliteLogStore) -> None:
    seq = other_process(store)
    await store.append([consent_entry(0)], sign=SIGN)
    await store.append([entry(1), entry(2)], sign=SIGN)
    assert seq.announced() == 1
    seq.close()


async def test_a_duplicate_consent_entry_announces_nothing_again(store: SqliteLogStore) -> None:
    seq = other_process(store)
    await store.append([consent_entry(0, key="k")], sign=SIGN)
    await store.append([entry(1)], sign=SIGN)
    seq.announce(99)  # a value nobody committed: a duplicate must not rewrite it
    (again,) = await store.append([consent_entry(0, key="k")], sign=SIGN)
    assert again.duplicate
    assert seq.announced() == 99
    seq.close()


async def test_the_mark_is_stored_before_the_entry_commits(store: SqliteLogStore) -> None:
    """What the registry's exactness rests on: a process that dies after its COMMIT has
    announced already. Here, at the moment of announcing, another connection does not see
    the entry yet."""
    seen: list[tuple[int, object]] = []
    seq = store.consent_seq
    assert seq is not None
    announce = seq.announce

    def spy(mark: int) -> None:
        with sqlite3.connect(store.path) as peer:
            (latest,) = peer.execute(
                "SELECT max(idx) FROM consentry_ledger_leaves "
                "WHERE substr(leaf, 6, 1) IN (x'01', x'02')"
            ).fetchone()
        seen.append((mark, latest))
        announce(mark)

    seq.announce = spy  # type: ignore[method-assign]
    await store.append([entry(0), consent_entry(1)], sign=SIGN)
    assert seen == [(2, None)]
    assert await store.latest_consent() == 1


async def test_a_replaced_file_is_noticed_by_readers_and_writers(store: SqliteLogStore) -> None:
    """Deleted under running processes: a reader's next read counts for nothing (None, the
    ledger is read) and maps the new file; a writer announces in the new file, which a
    process starting now maps."""
    reader = other_process(store)
    await store.append([consent_entry(0)], sign=SIGN)
    assert reader.announced() == 1
    reader.path.unlink()
    assert reader.announced() is None  # replaced since mapped: this read counts for nothing
    assert reader.announced() == 0  # the new file (created by the re-map)
    await store.append([consent_entry(1)], sign=SIGN)
    fresh = other_process(store)
    assert fresh.announced() == reader.announced() == 2
    reader.close()
    fresh.close()


async def test_an_unusable_file_fails_safe_for_readers_and_closed_for_consent_writes(
    tmp_path: Path,
) -> None:
    """A directory at the path: a reader answers None (the registry reads the ledger's
    position), warned once; a consent append is refused and commits nothing, because another
    process able to map the file would not learn of it; other appends go on."""
    (tmp_path / "c.db.consent-seq").mkdir()
    store = await SqliteLogStore.open(tmp_path / "c.db")
    seq = store.consent_seq
    assert seq is not None
    with structlog.testing.capture_logs() as logs:
        assert seq.announced() is None
        assert seq.announced() is None
        await store.append([entry(0)], sign=SIGN)
        with pytest.raises(ServiceUnavailable):
            await store.append([entry(1), consent_entry(2)], sign=SIGN)
    assert await store.size() == 1
    assert await store.latest_consent() is None
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1
    assert warned[0]["path"].endswith("c.db.consent-seq")
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "consent counter file unusable; consent changes refused"
    ]
    # Fixed (the directory removed): the next consent write creates and announces.
    (tmp_path / "c.db.consent-seq").rmdir()
    await store.append([consent_entry(1)], sign=SIGN)
    assert seq.announced() == 2
    await store.close()


async def test_a_refused_announcement_costs_only_the_consent_entries_of_a_writer_batch(
    tmp_path: Path,
) -> None:
    """Other requests' audit entries batched with a consent entry the store cannot announce
    commit all the same; only the consent's appender gets the 503. Red before: the refusal
    rolled back the whole batch, failing every appender in it."""
    (tmp_path / "c.db.consent-seq").mkdir()
    store = await SqliteLogStore.open(tmp_path / "c.db")
    with pytest.raises(EntriesRefused) as refused:
        await store.append([entry(0), consent_entry(1), entry(2), consent_entry(3)], sign=SIGN)
    assert refused.value.positions == frozenset({1, 3})
    writer = LedgerWriter(store, KEY, max_batch=16)
    await writer.start()
    outcomes = await asyncio.gather(
        writer.append(entry(4)),
        writer.append(consent_entry(5)),
        writer.append(entry(6)),
        return_exceptions=True,
    )
    await writer.stop()
    assert (writer.batches, writer.failed_batches) == (1, 1)  # one batch, then the rest
    assert outcomes[0] == 0
    assert outcomes[2] == 1
    assert isinstance(outcomes[1], ServiceUnavailable)
    assert await store.size() == 2
    assert await store.latest_consent() is None
    await store.close()


async def test_the_size_is_read_at_once_while_the_writer_thread_is_busy(
    store: SqliteLogStore,
) -> None:
    """The registry reads the size before decisions while an announcement is pending: it
    must not wait behind appends queued on the writer thread. Red before: it went through
    that thread."""
    await store.append([entry(0)], sign=SIGN)
    release = threading.Event()
    busy = asyncio.ensure_future(store._db.run(lambda c: release.wait(10)))
    try:
        assert await asyncio.wait_for(store.size(), 2) == 1
    finally:
        release.set()
        await busy


async def test_a_read_only_store_has_no_file(store: SqliteLogStore) -> None:
    reading = await SqliteLogStore.open(store.path, replay=False)
    assert reading.consent_seq is None
    await reading.close()


async def test_a_closed_word_reads_as_unusable(store: SqliteLogStore) -> None:
    seq = other_process(store)
    assert seq.announced() == 0
    seq.close()
    seq.close()
    assert seq.announced() is None
