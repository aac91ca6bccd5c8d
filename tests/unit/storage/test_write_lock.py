"""The write turn of a SQLite file (storage.write_lock): one holder at a time across open
files (so across processes), handed on within a millisecond of its release, bounded waits."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

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
