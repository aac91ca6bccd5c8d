"""``dump_log`` (the verifier's input) and ``read_bulk`` (an export's) read through one
snapshot helper (``ledger_dump_read``): the same errors for a file that is missing or no
database, and the same bytes for a BLOB column a hand-typed UPDATE filled with text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from middleware.errors import ServiceUnavailable, SettingsError
from middleware.storage.ledger_bulk import read_bulk
from middleware.storage.ledger_dump import dump_log
from middleware.storage.ledger_dump_read import blob, blobs
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import SIGN
from tests.contract.test_audit_index import ROWS, audit_entry

READERS = [dump_log, read_bulk]
IDS = ["dump_log", "read_bulk"]


@pytest.mark.parametrize("read", READERS, ids=IDS)
async def test_a_missing_file_or_no_database_is_unavailable(read: object, tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="no log store at"):
        await read(f"sqlite:{tmp_path / 'none.db'}")  # type: ignore[operator]
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ServiceUnavailable, match="cannot read the log in"):
        await read(f"sqlite:{tmp_path / 'junk.db'}")  # type: ignore[operator]
    with pytest.raises(SettingsError, match="cannot read a log from"):
        await read("mysql://x")  # type: ignore[operator]


async def test_text_in_a_blob_column_reads_as_the_same_bytes_in_both(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    store = await SqliteLogStore.open(path)
    await store.append([audit_entry(r) for r in ROWS], sign=SIGN)
    await store.close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE consentry_ledger_evidence SET data = 'plain text' WHERE idx = 2")
    dumped, bulk = await dump_log(f"sqlite:{path}"), await read_bulk(f"sqlite:{path}")
    assert bulk.leaves == dumped.leaves
    assert {i: (e.salt, e.data) for i, e in dumped.evidence.items()} == {
        i: (salt, data) for i, (_, salt, data) in bulk.evidence.items()
    }
    assert bulk.evidence[2][2] == b"plain text"
    assert bulk.note == dumped.checkpoints[-1]


def test_the_blob_rule() -> None:
    assert [blob(b"a"), blob(bytearray(b"b")), blob(memoryview(b"c")), blob("d"), blob(7)] == [
        b"a", b"b", b"c", b"d", b"7",
    ]  # fmt: skip
    same = [b"x", b"y"]
    assert blobs(same) is same
    assert blobs([b"x", "y"]) == [b"x", b"y"]
