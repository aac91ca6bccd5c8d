"""The write turn of a SQLite file (storage.write_lock): one holder at a time across open
files (so across processes), handed on within a millisecond of its release, bounded waits."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import structlog.testing

from middleware.storage.sqlite_worker import SqliteWorker
from middleware.storage.write_lock import WriteLock


def test_the_turn_is_held_by_one_at_a_time_and_handed_on_at_release(tmp_path: Path) -> None:
    first, second = WriteLock(tmp_path / "x.db"), WriteLock(tmp_path / "x.db")
    assert first.acquire(1.0)
    assert not second.acquire(0.01)  # each has its own open file, as two processes would
    got: list[float] = []

    def wait_for_it() -> None:
        assert second.acquire(5.0)
        got.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.05)
    released = time.monotonic()
    first.release()
    waiter.join(5.0)
    assert got, "the waiter never got the turn"
    # SQLite's busy handler would nap up to 100 ms at a time here; the turn polls every 1 ms.
    assert got[0] - released < 0.02
    assert not first.acquire(0.0)
    second.release()
    assert first.acquire(0.0)
    first.close()
    second.close()


def test_closing_gives_the_turn_up_and_the_file_is_private(tmp_path: Path) -> None:
    holder, other = WriteLock(tmp_path / "x.db"), WriteLock(tmp_path / "x.db")
    assert holder.acquire(1.0)
    holder.close()  # as when a process dies: the kernel drops its lock
    assert other.acquire(0.0)
    other.close()
    mode = stat.S_IMODE(os.stat(tmp_path / "x.db.write-lock").st_mode)
    assert mode & 0o077 == 0


def test_a_lock_file_it_cannot_open_leaves_the_turns_to_sqlite(tmp_path: Path) -> None:
    """A lock path it cannot open (here a directory; in the field a root-owned 0600 file left
    by a CLI run) gives no turns, logged once, instead of failing every write (red before:
    acquire raised the OSError, which a write answered as a 500)."""
    (tmp_path / "x.db.write-lock").mkdir()
    lock = WriteLock(tmp_path / "x.db")
    with structlog.testing.capture_logs() as logs:
        assert lock.acquire(1.0)
        lock.release()
        assert lock.acquire(1.0)
    assert isinstance(lock.unusable, OSError)
    assert [entry["event"] for entry in logs] == [
        "write lock file unusable; writers wait in SQLite's busy handler instead"
    ]
    lock.close()


async def test_writes_go_on_when_the_lock_file_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "x.db.write-lock").mkdir()
    worker = SqliteWorker(tmp_path / "x.db", what="ledger", schema="CREATE TABLE t (x);")
    await worker.connect()
    await worker.transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    assert await worker.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()) == (1,)
    await worker.close()
