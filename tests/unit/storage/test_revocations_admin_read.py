"""SQLite: listing the token revocation list and finding one row are reads
(``revocations_admin_sqlite.list_sqlite``, ``find_sqlite``): they take no write lock, so they
answer while another process holds the file's write lock, and they leave a list an earlier
version wrote as it is (its missing columns read as NULL). A lift's outcome is one rule
for every backend (``Lifted.of``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from middleware.auth.revocation import Lifted, Revocation, StoredRevocation
from middleware.storage.revocations_admin_sqlite import find_sqlite, lift_sqlite, list_sqlite
from middleware.storage.revocations_sqlite import record_sqlite_revocation

ROW = StoredRevocation(
    kind="jti", value="t-1", before=None, revoked_at=1.0, reason="r", admin_entry=3, expires=9.0
)


def test_a_list_and_a_find_answer_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """Red while they took ``BEGIN IMMEDIATE``: 'database is locked' after the 2 s timeout."""
    path = tmp_path / "store.revocations"
    record_sqlite_revocation(
        path, Revocation("jti", "t-1"), reason="r", at=1.0, entry=3, expires=9.0
    )
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM consentry_token_revocations")  # not committed
        assert list_sqlite(path) == [ROW]
        assert find_sqlite(path, "jti", "t-1") == ROW
        assert find_sqlite(path, "jti", "t-2") is None
        writer.execute("ROLLBACK")
    finally:
        writer.close()


def test_a_list_an_earlier_version_wrote_is_read_as_it_is(tmp_path: Path) -> None:
    """Red while they upgraded the columns first (an ALTER TABLE: a write)."""
    path = tmp_path / "store.revocations"
    with sqlite3.connect(path) as c:  # the table before admin_entry and expires
        c.execute(
            "CREATE TABLE consentry_token_revocations (kind TEXT NOT NULL, value TEXT NOT NULL, "
            "before REAL, revoked_at REAL NOT NULL, reason TEXT NOT NULL, "
            "PRIMARY KEY (kind, value)) WITHOUT ROWID"
        )
        c.execute("INSERT INTO consentry_token_revocations VALUES ('subject', 's', 5.0, 2.0, 'x')")
    old = StoredRevocation(
        kind="subject", value="s", before=5.0, revoked_at=2.0, reason="x", admin_entry=None,
        expires=None,
    )  # fmt: skip
    assert list_sqlite(path) == [old]
    assert find_sqlite(path, "subject", "s") == old
    with sqlite3.connect(path) as c:
        columns = [r[1] for r in c.execute("PRAGMA table_info(consentry_token_revocations)")]
    assert columns == ["kind", "value", "before", "revoked_at", "reason"], "not altered"
    assert lift_sqlite(path, "subject", "s", entry=4, at=3.0) == Lifted("removed")  # a write
    assert list_sqlite(path) == []


def test_a_lifts_outcome_is_one_rule() -> None:
    assert Lifted.of(None, 5) == Lifted("absent")
    assert Lifted.of(ROW, 2) == Lifted("kept", 3), "recorded by a later entry"
    assert Lifted.of(ROW, 3) == Lifted("removed")
    unknown = StoredRevocation("jti", "t", None, 1.0, "r", admin_entry=None, expires=None)
    assert Lifted.of(unknown, 0) == Lifted("removed"), "a row from before entries were kept"
