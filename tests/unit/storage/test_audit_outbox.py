"""The audit outbox's file: what it promises the recorder (middleware.audit.outbox)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from middleware.audit.outbox import OutboxRow
from middleware.storage.audit_outbox import SqliteOutbox, outbox_path


def row(n: int, *, patient: str | None = None) -> OutboxRow:
    return OutboxRow(
        request_id=f"rid-{n}",
        kind=3,
        recorded_us=1_700_000_000_000_000 + n,
        salt=bytes([n]) * 16,
        evidence=b'{"n":%d}' % n,
        pseudonym=None if patient else bytes([n + 1]) * 16,
        patient=patient,
        consent=None if n % 2 else n,
        flags=1,
        idempotency_key=f"outcome:{n}",
    )


async def test_rows_survive_the_process_and_come_back_oldest_first(tmp_path: Path) -> None:
    """A gateway that dies leaves its rows for the next one, byte for byte, in order."""
    path = str(tmp_path / "outbox.db")
    first = SqliteOutbox(path)
    await first.put([row(1), row(2, patient="Patient/p2")])
    await first.put([row(3)])
    first.close()

    second = SqliteOutbox(path)
    pending = await second.pending()
    written = [row(1), row(2, patient="Patient/p2"), row(3)]
    assert [_fields(r) for r in pending] == [
        {**_fields(w), "id": r.id} for w, r in zip(written, pending, strict=True)
    ]
    assert [r.id for r in pending] == sorted({r.id for r in pending})
    await second.remove(pending[1].id)
    assert await second.count() == 2
    assert [r.request_id for r in await second.pending(limit=1)] == ["rid-1"]
    second.close()
    second.close()  # idempotent


async def test_the_file_is_private(tmp_path: Path) -> None:
    """Rows carry evidence (who asked for which patient's record): mode 0600."""
    path = tmp_path / "outbox.db"
    outbox = SqliteOutbox(str(path))
    await outbox.put([row(1)])
    outbox.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_put_is_all_or_none(tmp_path: Path) -> None:
    """A batch that fails half way leaves nothing: a write's outcome entries wait together."""
    outbox = SqliteOutbox(str(tmp_path / "outbox.db"))
    bad = OutboxRow(**{**_fields(row(2)), "idempotency_key": None})  # type: ignore[arg-type]
    with pytest.raises(Exception, match="NOT NULL"):
        await outbox.put([row(1), bad])
    assert await outbox.count() == 0
    outbox.close()


async def test_an_intent_is_held_until_resolved_to_one_variant(tmp_path: Path) -> None:
    """An intent's rows are not pending (they are what *might* have happened); resolving it
    makes exactly the chosen variant's rows pending and drops the rest, and it survives the
    process that wrote it."""
    path = str(tmp_path / "outbox.db")
    first = SqliteOutbox(path)
    await first.hold("i1", '{"method":"DELETE"}', {"applied": [row(1)], "absent": [row(2)]})
    await first.hold("i2", '{"method":"POST"}', {"applied": [row(3)], "absent": [row(4)]})
    assert await first.pending() == []
    assert await first.count() == 0
    first.close()

    second = SqliteOutbox(path)
    assert await second.intents() == [("i1", '{"method":"DELETE"}'), ("i2", '{"method":"POST"}')]
    await second.resolve("i1", "absent")
    assert [r.request_id for r in await second.pending()] == ["rid-2"]
    assert await second.intents() == [("i2", '{"method":"POST"}')]
    await second.put([row(5)], settles="i2")  # the real outcome, recorded in its place
    assert [r.request_id for r in await second.pending()] == ["rid-2", "rid-5"]
    assert await second.intents() == []
    await second.hold("i3", "{}", {"applied": [row(6)]})
    await second.settle("i3")
    assert await second.intents() == []
    assert await second.count() == 2
    second.close()


@pytest.mark.parametrize(
    ("setting", "store", "expected"),
    [
        ("/srv/o.db", "sqlite:/srv/c.db", "/srv/o.db"),
        ("", "sqlite:/srv/c.db", "/srv/c.db.outbox"),
        ("", "postgresql://db/x", "consentry-outbox.db"),
        ("", "memory:", ":memory:"),
    ],
    ids=["configured", "beside-sqlite", "postgres", "memory"],
)
def test_where_the_outbox_lives(setting: str, store: str, expected: str) -> None:
    assert outbox_path(setting, store) == expected


def _fields(r: OutboxRow) -> dict[str, object]:
    return {name: getattr(r, name) for name in OutboxRow.__slots__}


async def test_a_file_from_before_owners_and_macs_is_upgraded_in_place(tmp_path: Path) -> None:
    """An outbox written by the previous version (no MAC column, intents without owner) must
    open, not fail the start: its rows come back with an empty MAC (the recorder then
    dead-letters them), its intents with no owner or lease, and a dead-lettered row leaves
    the queue for the dead-letter table in one step."""
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    with db:
        db.executescript(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,"
            " kind INTEGER NOT NULL, recorded_us INTEGER NOT NULL, salt BLOB NOT NULL,"
            " evidence BLOB NOT NULL, pseudonym BLOB, patient TEXT, consent INTEGER,"
            " flags INTEGER NOT NULL, idempotency_key TEXT NOT NULL, intent TEXT, variant TEXT);"
            " CREATE TABLE intent (intent TEXT PRIMARY KEY, probe TEXT NOT NULL);"
            " INSERT INTO outbox (request_id, kind, recorded_us, salt, evidence, flags,"
            " idempotency_key) VALUES ('rid-old', 4, 1, x'00', x'7b7d', 0, 'k');"
            " INSERT INTO intent VALUES ('i0', '{}');"
        )
    db.close()
    outbox = SqliteOutbox(path)
    (old,) = await outbox.pending()
    assert (old.request_id, old.mac) == ("rid-old", b"")
    (intent,) = await outbox.open_intents()
    assert (intent.intent, intent.owner, intent.lease, intent.attempts) == ("i0", None, None, 0)
    await outbox.dead_letter(old.id, "mac")
    assert (await outbox.count(), await outbox.dead_letters()) == (0, 1)
    outbox.close()
