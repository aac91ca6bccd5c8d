"""The consent registry over a SQLite store reads the consent announcements word
(storage.consent_seq) before each decision and the ledger only when something was announced:
as exact as a position read before every decision, for changes any process makes."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.consent.records import canonical_consent
from middleware.consent.registry import ConsentRegistry
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsents, MemoryConsentStore
from middleware.storage.consent_seq import ConsentSeq
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import PSEUDONYMS, SIGN, entry
from tests.unit.consent.builders import consent

PATIENT = "Patient/p1"


class Counted(SqliteLogStore):
    """A SQLite log store counting the reads the registry may make before a decision."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.position_reads = 0
        self.size_reads = 0

    async def latest_consent(self) -> int | None:
        self.position_reads += 1
        return await super().latest_consent()

    async def size(self) -> int:
        self.size_reads += 1
        return await super().size()


class Process:
    """One process of the store: its own log store (and announcements mapping) over the shared
    file, its consent store over the shared consent data, its registry."""

    def __init__(self, log: Counted, consents: MemoryConsents) -> None:
        self.log = log
        self.store = MemoryConsentStore(consents)
        self.registry = ConsentRegistry(self.store, log)

    @classmethod
    async def open(cls, path: Path, consents: MemoryConsents) -> Process:
        log = await Counted.open(path)
        assert isinstance(log, Counted)
        return cls(log, consents)

    async def change(self, status: str = "active", *, stored: bool = True) -> int:
        """The consent API's change: append the entry, then (unless the process "dies"
        first) record it in the consent store."""
        revoke = status != "active"
        body = consent("R5", "permit", consent_id="a", status=status)
        data = canonical_consent(body)
        pseudonym = await self.store.pseudonym_for(PATIENT, PSEUDONYMS[0])
        kind = EntryKind.CONSENT_REVOKE if revoke else EntryKind.CONSENT
        new = NewEntry.create(kind, data, recorded_us=7, pseudonym=pseudonym)
        (result,) = await self.log.append([new], sign=SIGN)
        if stored:
            record = ConsentRecord(result.index, "a", PATIENT, status, revoke, 7, data)
            await self.store.record(record)
        return result.index

    async def statuses(self) -> list[str]:
        return [p.status for p in await self.registry.policies(PATIENT)]

    def reads(self) -> tuple[int, int]:
        return self.log.position_reads, self.log.size_reads


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Process, Process]]:
    consents = MemoryConsents()
    a = await Process.open(tmp_path / "c.db", consents)
    b = await Process.open(tmp_path / "c.db", consents)
    yield a, b
    await a.log.close()
    await b.log.close()


async def test_decisions_read_no_ledger_position_while_nothing_is_announced(
    pair: tuple[Process, Process],
) -> None:
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    before = b.reads()
    for n in range(5):
        await a.log.append([entry(n)], sign=SIGN)  # other entries announce nothing
        assert await b.statuses() == ["active"]
    assert b.reads() == before


async def test_a_change_another_process_appended_and_never_recorded_is_enforced_next(
    pair: tuple[Process, Process],
) -> None:
    """The attack the position read closes, through the word: a process appends a revocation
    and dies before its store write; the other's next decision enforces it."""
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    reads = b.reads()
    index = await a.change("inactive", stored=False)
    assert await b.statuses() == ["inactive"]
    assert b.registry.position == index
    assert b.registry.repaired == 1
    assert b.reads() == (reads[0] + 1, reads[1])  # one position read, no size read
    assert await b.statuses() == ["inactive"]
    assert b.reads() == (reads[0] + 1, reads[1])


async def test_an_announcement_never_committed_reads_the_ledger_until_the_log_passes_it(
    pair: tuple[Process, Process],
) -> None:
    """A writer that died between announcing and committing (or rolled back): decisions stay
    right and read the ledger (size, then position) until an entry takes the announced
    index; then the word is trusted again."""
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    size = await a.log.size()
    assert a.log.consent_seq is not None
    a.log.consent_seq.announce(size + 1)  # the mark of index ``size``, never committed
    for _ in range(2):
        positions, sizes = b.reads()
        assert await b.statuses() == ["active"]
        assert b.reads() == (positions + 2, sizes + 1)
    await a.log.append([entry(9)], sign=SIGN)  # index ``size``: not a consent
    assert await b.statuses() == ["active"]
    settled = b.reads()
    assert await b.statuses() == ["active"]
    assert b.reads() == settled


async def test_an_entry_committing_between_the_reads_of_an_announced_change_is_enforced_next(
    pair: tuple[Process, Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's revocation is announced and its COMMIT lands while B decides, just before B's size
    read. B's bound must come from a size read *before* a position read, else B takes the
    size (which covers the revocation) for caught up and its next decision trusts the word
    without reading the revocation. Red with the size read moved after the position read."""
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    announced, go = threading.Event(), threading.Event()
    seq = a.log.consent_seq
    assert seq is not None
    real = seq.announce

    def held(mark: int) -> None:  # on A's writer thread, inside its transaction
        real(mark)
        announced.set()
        go.wait(10)

    monkeypatch.setattr(seq, "announce", held)
    task = asyncio.ensure_future(a.change("inactive", stored=False))
    assert await asyncio.to_thread(announced.wait, 10)
    size = b.log.size

    async def size_after_commit() -> int:
        if not go.is_set():  # A's COMMIT lands just before B's size read
            go.set()
            await task
        return await size()

    monkeypatch.setattr(b.log, "size", size_after_commit)
    await b.statuses()  # the decision during the commit: either answer is right
    assert await b.statuses() == ["inactive"]  # the next decision sees the revocation


async def test_a_word_above_the_ledger_is_settled_when_a_writer_opens_the_store(
    pair: tuple[Process, Process], tmp_path: Path
) -> None:
    """A mark far above the log (a file restored beside an older database, an announcement
    never committed): decisions read the ledger each time, until a process opens the store
    for writing and sets the word to the ledger's size under the write lock; then the word
    is trusted again. Red before: the slow path lasted until the log grew past the mark."""
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    ghost = ConsentSeq(tmp_path / "c.db")
    ghost.announce(await a.log.size() + 1_000)
    ghost.close()
    for _ in range(2):
        before = b.reads()
        assert await b.statuses() == ["active"]
        assert b.reads() == (before[0] + 2, before[1] + 1)
    starting = await Counted.open(tmp_path / "c.db")
    await starting.close()
    assert await b.statuses() == ["active"]
    settled = b.reads()
    assert await b.statuses() == ["active"]
    assert b.reads() == settled


async def test_a_zeroed_word_is_set_again_by_a_starting_writer(
    pair: tuple[Process, Process], tmp_path: Path
) -> None:
    """The file emptied under running processes and grown back (zero) by a process starting:
    a revocation committed before must still reach the running ones' next decision. A writer
    opening the store sets the word to the ledger's size, above what they know. Red before:
    they read 0, took it for nothing new, and kept the revoked consent in force."""
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    await a.change("inactive", stored=False)
    (tmp_path / "c.db.consent-seq").write_bytes(bytes(8))  # same file, word zeroed
    starting = await Counted.open(tmp_path / "c.db")
    await starting.close()
    assert await b.statuses() == ["inactive"]


async def test_an_unusable_word_falls_back_to_a_position_read_before_every_decision(
    tmp_path: Path,
) -> None:
    """B cannot map the file (a directory at the path; A's file moved away under it): every
    decision of B reads the ledger's position, and sees A's change at once."""
    consents = MemoryConsents()
    a = await Process.open(tmp_path / "c.db", consents)
    await a.change()
    seq = tmp_path / "c.db.consent-seq"
    seq.rename(tmp_path / "moved")
    seq.mkdir()
    b = await Process.open(tmp_path / "c.db", consents)
    for _ in range(3):
        reads = b.reads()[0]
        assert await b.statuses() == ["active"]
        assert b.reads()[0] == reads + 1
    await a.change("inactive")  # announced in the moved file: B does not map it
    assert await b.statuses() == ["inactive"]
    await a.log.close()
    await b.log.close()


async def test_a_deleted_word_is_read_again_from_the_ledger(pair: tuple[Process, Process]) -> None:
    """The file removed under both processes, and a third (say the CLI) changing the consent
    through a new file: the next decision of B reads the ledger and enforces it."""
    a, b = pair
    await a.change()
    assert await b.statuses() == ["active"]
    (a.log.path.with_name("c.db.consent-seq")).unlink()
    other = await Process.open(a.log.path, MemoryConsents())
    await other.change("inactive", stored=False)
    assert await b.statuses() == ["inactive"]
    await other.log.close()


async def test_a_change_through_a_linked_store_path_is_enforced_by_a_process_of_the_target(
    tmp_path: Path,
) -> None:
    """The gateway opens the file, a command opens it through a symbolic link (SQLite follows
    it: one database) and appends a revocation, dying before its store write: the gateway's
    next decision enforces it. Red before: the command announced in ``link.db.consent-seq``,
    which the gateway never reads, and the revoked consent stayed in force."""
    consents = MemoryConsents()
    gateway = await Process.open(tmp_path / "c.db", consents)
    (tmp_path / "link.db").symlink_to(tmp_path / "c.db")
    command = await Process.open(tmp_path / "link.db", consents)
    try:
        await gateway.change()
        assert await gateway.statuses() == ["active"]
        await command.change("inactive", stored=False)
        assert await gateway.statuses() == ["inactive"]
        assert not (tmp_path / "link.db.consent-seq").exists()
    finally:
        await gateway.log.close()
        await command.log.close()


# Random interleavings: after every decision, the registry stands where a position read
# before it would have put it (the behaviour before the word existed).
OPS = st.lists(
    st.sampled_from(["consent", "revoke", "unrecorded", "entry", "ghost", "unlink", "decide"]),
    max_size=14,
)


@settings(deadline=None)  # two stores opened per example: 50-300 ms on a loaded machine
@given(OPS)
def test_any_interleaving_decides_as_a_position_read_before_every_decision(ops: list[str]) -> None:
    asyncio.run(_interleave(ops))


async def _interleave(ops: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.db"
        consents = MemoryConsents()
        writer, reader = await Process.open(path, consents), await Process.open(path, consents)
        try:
            for n, op in enumerate([*ops, "decide"]):
                if op == "consent":
                    await writer.change()
                elif op == "revoke":
                    await writer.change("inactive")
                elif op == "unrecorded":
                    await writer.change("entered-in-error", stored=False)
                elif op == "entry":
                    await writer.log.append([entry(n)], sign=SIGN)
                elif op == "ghost":  # announced, never committed
                    word = ConsentSeq(path)
                    word.announce(await writer.log.size() + 1)
                    word.close()
                elif op == "unlink":
                    path.with_name("c.db.consent-seq").unlink(missing_ok=True)
                else:
                    statuses = await reader.statuses()
                    latest = await reader.log.latest_consent()
                    assert reader.registry.position == (-1 if latest is None else latest)
                    fresh = ConsentRegistry(MemoryConsentStore(consents), writer.log)
                    assert [p.status for p in await fresh.policies(PATIENT)] == statuses
        finally:
            await writer.log.close()
            await reader.log.close()
