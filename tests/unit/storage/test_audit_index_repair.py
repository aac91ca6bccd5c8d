"""A row an earlier version left disagreeing with its leaf (an edited or foreign row), in the
earlier ``(pseudonym, recorded_us)`` index's file (``audit_index_upgrade``) or in the staging
table (``audit_index_staged``): a writer's open files it shredded, stating its leaf's
pseudonym, and warns with a reason code, the count and the ledger indexes (no PHI), telling
the operator to run ``consentry audit reindex``; the open does not fail (that repair opens the
log as a writer, ``open_log_store``), and the repair's rebuild (``audit.reindex.rebuild``)
brings the row back into its patient's accounting as the recorder wrote it.

The ledger is filled as the recorder fills it (sealed facts, real keys: ``audit_fill``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from middleware.audit.evidence import EVIDENCE_PURPOSE
from middleware.audit.paging import all_rows
from middleware.audit.progress import Progress
from middleware.audit.reindex import rebuild
from middleware.audit.row import AuditQuery, AuditRow
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.logging import ScrubPHI
from middleware.storage import audit_index_sqlite as lite
from middleware.storage.audit_index_staged import STAGED
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_open import open_log_store
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import fill_audit_log, pseudonym_of

ORIGIN = "gw.example/fhir/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes(range(32)))
PATIENTS = ["Patient/p0", "Patient/p1", "Patient/p2"]
COUNT = 12
#: Entries 4 and 7 are patient p1's; they are edited to state p2's pseudonym.
EDITED = (4, 7)


async def _index(store: LogStore) -> list[AuditRow]:
    return await all_rows(store, AuditQuery(include_shredded=True, limit=100))


async def _written(path: Path) -> list[AuditRow]:
    store = await SqliteLogStore.open(path)
    try:
        await fill_audit_log(
            store, KEY, ORIGIN, count=COUNT, patients=PATIENTS, start_us=1_767_225_600_000_000
        )
        return sorted(await _index(store), key=lambda r: r.index)
    finally:
        await store.close()


def _edit(c: sqlite3.Connection, table: str) -> None:
    marks = ", ".join("?" * len(EDITED))
    c.execute(
        f"UPDATE {table} SET pseudonym = ? WHERE idx IN ({marks})",
        (pseudonym_of(PATIENTS[2]), *EDITED),
    )


async def _rebuild(store: LogStore) -> None:
    with Progress("test", total=COUNT, show=False) as progress:
        await rebuild(
            store, await store.size(), wrap=derive_box_key(KEY, EVIDENCE_PURPOSE),
            lookup=derive_box_key(KEY, LOOKUP_PURPOSE), batch=5, progress=progress,
        )  # fmt: skip


async def _accounted(store: LogStore) -> list[int]:
    return [r.index for r in await store.audit_rows(AuditQuery(patient=PATIENTS[1]))]


def _warning(logs: Sequence[Mapping[str, Any]], reason: str) -> Mapping[str, Any]:
    (found,) = [e for e in logs if e.get("reason") == reason]
    assert found["log_level"] == "warning"
    assert "consentry audit reindex" in found["event"]
    fields = {k: v for k, v in found.items() if k != "log_level"}  # added by capture_logs
    assert ScrubPHI()(None, "warning", dict(fields)) == fields, "the log pipeline keeps all"
    return found


async def _check_repaired_then_restored(store: LogStore, written: list[AuditRow]) -> None:
    p1 = [r.index for r in written if r.patient == PATIENTS[1]]
    assert set(EDITED) <= set(p1)
    for index in EDITED:  # shredded, stating its leaf's pseudonym (p1's)
        assert await store.audit_row(index) == written[index].shred()
    assert await _accounted(store) == sorted(set(p1) - set(EDITED))
    await _rebuild(store)  # what `consentry audit reindex` runs
    assert sorted(await _index(store), key=lambda r: r.index) == written
    assert sorted(await _accounted(store)) == p1


async def test_upgrade_warns_of_rows_it_shreds_and_reindex_restores_them(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written = await _written(path)
    with sqlite3.connect(path) as c:  # as an earlier version left the file, two rows edited
        c.execute(f"CREATE INDEX {lite.DROPPED} ON consentry_audit_index (pseudonym, recorded_us)")
        _edit(c, "consentry_audit_index")
    with capture_logs() as logs:
        store = await open_log_store(f"sqlite:{path}")  # as `consentry audit reindex` opens
    try:
        found = _warning(logs, "upgrade-row-disagrees-with-leaf")
        assert (found["count"], found["ledger_indexes"]) == (2, "4,7")
        await _check_repaired_then_restored(store, written)
    finally:
        await store.close()


async def test_staged_rows_disagreeing_are_shredded_not_fatal_and_reindex_restores_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    written = await _written(path)
    cols = lite.COLUMNS
    with sqlite3.connect(path) as c:  # as an earlier version staged rows 4 to 8, two edited
        c.execute(f"CREATE TABLE {STAGED} ({lite.ROW_COLUMNS_DDL})")
        c.execute(f"INSERT INTO {STAGED} ({cols}) SELECT {cols} FROM consentry_audit_index "
                  "WHERE idx BETWEEN 4 AND 8")  # fmt: skip
        _edit(c, STAGED)
        c.execute("DELETE FROM consentry_audit_terms WHERE idx BETWEEN 4 AND 8")
        c.execute("DELETE FROM consentry_audit_index WHERE idx BETWEEN 4 AND 8")
    with capture_logs() as logs:
        store = await open_log_store(f"sqlite:{path}")  # as `consentry audit reindex` opens
    try:
        found = _warning(logs, "staged-row-disagrees-with-leaf")
        assert (found["count"], found["ledger_indexes"]) == (2, "4,7")
        for index in (5, 6, 8):  # the agreeing staged rows move as written
            assert await store.audit_row(index) == written[index]
        await _check_repaired_then_restored(store, written)
    finally:
        await store.close()
    with sqlite3.connect(path) as c:
        assert c.execute(f"SELECT count(*) FROM {STAGED}").fetchone()[0] == 0


async def test_an_open_with_nothing_to_repair_warns_of_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written = await _written(path)
    with sqlite3.connect(path) as c:
        c.execute(f"CREATE INDEX {lite.DROPPED} ON consentry_audit_index (pseudonym, recorded_us)")
    with capture_logs() as logs:
        store = await SqliteLogStore.open(path)
    try:
        assert [e for e in logs if e.get("log_level") == "warning"] == []
        assert sorted(await _index(store), key=lambda r: r.index) == written
    finally:
        await store.close()
